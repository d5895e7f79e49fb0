"""Ids for a gallery that several processes write at once, without asking anyone: time-ordered, 53 bits.

Milvus does not make a row's id unique (an insert of an existing primary key adds a second row) and has no
compare-and-set to share a counter, and its own ``auto_id`` values (about 2**58) do not survive a round trip
through JavaScript numbers (the page, browsers' JSON). So each process makes its ids like a Snowflake id that
fits in a double: 41 bits of milliseconds since 2024 (69 years), 6 bits of process (random at start), 6 bits
of sequence. Ids grow in every process; a process that runs out of sequence in one millisecond borrows the
next one, so its ids never repeat or go back even when the clock does. Two processes collide only with the
same random process bits (1 in 64 per pair of writers) *and* the same millisecond *and* the same sequence.
"""

from __future__ import annotations

import secrets
import threading
import time

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NODE_BITS = SEQ_BITS = 6


class IdAllocator:
    def __init__(self, node: int | None = None) -> None:
        self.node = secrets.randbelow(1 << NODE_BITS) if node is None else node
        self._last_ms = 0
        self._seq = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> list[int]:
        with self._lock:
            return [self._next() for _ in range(n)]

    def _next(self) -> int:
        now = int(time.time() * 1000) - EPOCH_MS
        if now > self._last_ms:
            self._last_ms, self._seq = now, 0
        else:  # same millisecond, or the clock went back: continue from the last id
            self._seq += 1
            if self._seq >> SEQ_BITS:
                self._last_ms, self._seq = self._last_ms + 1, 0
        return (self._last_ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | self._seq
