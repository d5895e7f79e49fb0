"""A memory budget for decoding uploads: each decode reserves its estimated peak before it starts, and a decode
that does not fit is refused at once (the request gets 503 ``overloaded`` with ``Retry-After``), so concurrent
decodes never hold more than the budget however many requests arrive (issue 15, item 4)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class OverBudgetError(RuntimeError):
    """Decoding this upload now would take the decodes in flight past the memory budget."""


class MemoryBudget:
    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("The memory budget must be at least 1 byte.")
        self.limit = limit_bytes
        self.used = 0
        self._lock = threading.Lock()  # decodes reserve from worker and model-instance threads

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` for the duration of the block, or raise :class:`OverBudgetError` at once.

        A decode estimated above the whole budget counts as the whole budget: it runs when nothing else does,
        rather than never.
        """
        nbytes = min(max(nbytes, 0), self.limit)
        with self._lock:
            if self.used + nbytes > self.limit:
                raise OverBudgetError(
                    f"Decoding this image needs about {nbytes / 2**20:.0f} MiB; "
                    f"{self.used / 2**20:.0f} of the {self.limit / 2**20:.0f} MiB decoding budget are in use."
                )
            self.used += nbytes
        try:
            yield
        finally:
            with self._lock:
                self.used -= nbytes
