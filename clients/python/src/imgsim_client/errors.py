"""The one exception of the client: an error answer of the service (an RFC 9457 problem) or no answer at all."""

from __future__ import annotations

import httpx


class ApiError(Exception):
    """``status`` and the service's stable ``code`` (branch on these), ``detail`` for people, and the
    ``request_id`` the service logged the request under (quote it when reporting a problem)."""

    def __init__(self, status: int, code: str, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.request_id = status, code, detail, request_id

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
            code, detail = str(body["code"]), str(body["detail"])
        except (ValueError, KeyError, TypeError):  # not the service's problem document (a proxy's page, say)
            code, detail = "http_error", response.text[:200]
        return cls(response.status_code, code, detail, response.headers.get("x-request-id"))
