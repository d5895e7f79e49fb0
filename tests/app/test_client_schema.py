"""The client's models (clients/python, a distribution of its own) field for field against the service's
OpenAPI schema, so the two cannot drift apart unnoticed."""

from __future__ import annotations

import imgsim_client
import pydantic
import pytest

from app.main import create_app
from app.settings import Settings

SHARED = [name for name in imgsim_client.__all__ if name.endswith(("Response", "Info", "Card", "Hit", "Item", "Page"))]


@pytest.mark.parametrize("name", SHARED)
def test_client_model_matches_the_schema(settings: Settings, name: str) -> None:
    schema = create_app(settings).openapi()["components"]["schemas"]
    model: type[pydantic.BaseModel] = getattr(imgsim_client, name)
    assert name in schema, f"{name} is not in the service's schema"
    server = schema[name]
    assert set(model.model_fields) == set(server["properties"]), name
    required = {f for f, info in model.model_fields.items() if info.is_required()}
    assert required == set(server.get("required", [])), name


def test_every_answer_model_of_the_service_is_in_the_client(settings: Settings) -> None:
    schema = create_app(settings).openapi()["components"]["schemas"]
    answers = {n for n in schema if n.endswith(("Response", "Info", "Card", "Hit", "Item", "Page"))}
    assert answers <= set(SHARED), answers - set(SHARED)
