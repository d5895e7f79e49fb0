"""Recovery: bring a :class:`Working` state up to date from the log (at open, on refresh, before writing).

Records are read in order across the segments; those already in the state (seq <= its version) are
skipped, the rest applied. The last segment may end in a torn or damaged record (a power cut during an
append that was never acknowledged): reading stops there with a warning, and only the writer cuts it off.
A damaged record in an earlier segment, or a gap in the versions, is a corrupt index. Readers in other
processes stop where the writer says its records are durable (``wal.read_durable``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from index import wal
from index.changes import decode
from index.working import Working

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogPosition:
    segment: int  # the first seq of the segment read last (its name)
    offset: int  # just after the last good record read from it


def replay(index_dir: Path, working: Working, since: LogPosition | None, *, durable_only: bool) -> LogPosition | None:
    """Apply the records after ``since`` (None: from the start); returns where reading stopped."""
    limit = wal.read_durable(index_dir) if durable_only else None
    found: list[tuple[int, wal.Segment]] = []
    stopped = False  # the last segment read was read up to the durable mark
    for first, path in wal.segments(index_dir):
        if since is not None and first < since.segment:
            continue
        if limit is not None and first > limit[0]:
            break
        start = since.offset if since is not None and first == since.segment else 0
        stop = limit[1] if limit is not None and first == limit[0] else None
        found.append((first, wal.read_segment(path, start, stop)))
        stopped = stop is not None
    wal.check_segment_chain([s for _, s in found])
    for _, segment in found:
        for _, payload in segment.records:
            seq, change = decode(payload)
            if seq > working.version:
                working.apply(seq, change)
    if not found:
        return since
    first, last = found[-1]
    # Past the durable mark a bad record is an append under way; before it (or with no writer) it is damage.
    if last.bad is not None and (stopped or not durable_only):
        log.warning("log %s ends in a bad record (%s): it and what follows are ignored", last.path, last.bad)
    return LogPosition(first, last.end)
