"""When to try a request again, and after how long.

Retried: a connection that could not be made (the request never reached the service), and the answers that say
"nothing was done, try later": ``503`` (loading, draining, overloaded) and ``429``. The wait is the answer's
``Retry-After`` (seconds or an HTTP date) when it has one, else an exponential backoff with jitter, and never
more than ``max_wait``. A request that timed out after it was sent is not retried: the service may have acted.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


@dataclass(frozen=True)
class Retry:
    attempts: int = 4  # in all, the first one included; 1 turns retrying off
    backoff: float = 0.5  # seconds before the second attempt without Retry-After, doubling after
    max_wait: float = 30.0  # never wait longer than this between attempts

    def wait(self, attempt: int, outcome: httpx.Response | Exception) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after ``outcome`` of attempt ``attempt`` (1-based),
        or None when it is final."""
        if attempt >= self.attempts:
            return None
        if isinstance(outcome, Exception):
            return self._backoff(attempt) if isinstance(outcome, RETRY_ERRORS) else None
        if outcome.status_code not in RETRY_STATUSES:
            return None
        after = retry_after(outcome.headers.get("retry-after"))
        return min(self.max_wait, after if after is not None else self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        return min(self.max_wait, self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
