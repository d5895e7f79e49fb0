"""schemathesis against the app's own OpenAPI schema: generated requests to every operation, never a 5xx, and
every answer conforms to the schema: a documented status, a documented content type, and a body that validates
against the documented schema (the error bodies included: RFC 9457 problems)."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from app.main import create_app
from app.settings import Settings

EXAMPLES_PER_OPERATION = 6
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_server_errors_and_every_answer_matches_the_schema(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_upload_bytes": 200_000, "max_body_bytes": 500_000}))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    client = asgi.get_client(app)  # type: ignore[arg-type]
    with client:  # schemathesis runs the lifespan once, on its own loop; wait until the model is loaded
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.02)
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        assert len(operations) >= 10
        seen: dict[str, set[int]] = {}
        for operation in operations:

            @given(case=operation.as_strategy())
            @hypothesis_settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def call(case: schemathesis.Case) -> None:
                response = case.call(session=client)
                seen.setdefault(case.operation.label, set()).add(response.status_code)
                assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
                case.validate_response(response, checks=CHECKS)

            try:
                call()
            except Exception as exc:
                pytest.fail(f"{operation.label}: {exc}")
    assert all(seen.values()) and len(seen) == len(operations)
