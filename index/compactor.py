"""When and how a gallery compacts: seal the delta, build the next base aside, swap it in, drop the log.

The next base itself is made by index/compaction.py; this module runs it against a gallery's state
(index/store.py): in a background thread when the policy says so, or now (``compact``). Searches and
writes are held only for the seal and the swap, two short critical sections.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from index import wal
from index.compaction import build_base, due
from index.errors import StorageError

if TYPE_CHECKING:
    from index.store import Store

log = logging.getLogger(__name__)


def compact(store: Store) -> None:
    """Fold every change so far into a new base now (after a compaction already under way)."""
    store.ensure_writer()
    with store.compacting:
        _compact(store)


def maybe_compact(store: Store) -> None:
    """Start a background compaction if the changes since the base pass the policy's thresholds."""
    deltas = store.working.deltas  # sealed ones too: a failed compaction's changes still count
    oldest = min((d.first_change for d in deltas if d.first_change is not None), default=None)
    if (
        store.policy.background
        and not store.compacting.locked()
        and time.monotonic() >= store.retry_at
        and due(sum(d.changes for d in deltas), oldest, store.policy)
    ):
        store.start(_background, store)


def _background(store: Store) -> None:
    if not store.compacting.acquire(blocking=False):
        return
    try:
        _compact(store)
        store.last_compaction_error = None
    except Exception as exc:  # the gallery keeps serving from base + log; try again later
        retry = store.policy.retry_after_s
        if isinstance(exc, StorageError | ValueError):  # a full disk, too few vectors to train: expected
            log.warning("compaction of %s failed (%s); retrying in %.0f s", store.dir, exc, retry)
        else:
            log.exception("compaction of %s failed; retrying in %.0f s", store.dir, retry)
        store.last_compaction_error = f"{type(exc).__name__}: {exc}"
        store.retry_at = time.monotonic() + retry
        return
    finally:
        store.compacting.release()
    store.sweep_media(time.time() - store.policy.media_grace_s)


def _compact(store: Store) -> None:
    """Seal, build the next base aside, swap it in, delete the log it covers. Caller holds compacting."""
    with store.mutex:
        if store.log is None:
            raise RuntimeError(f"The gallery {store.dir} is not open for writing (closed?).")
        w = store.working
        if w.version != w.fresh_since:  # changes since the last seal: seal them (a failed compaction's stay)
            if store.log.first_seq <= w.version:  # new writes go to a new segment, which the base won't cover
                fresh_log = wal.LogWriter.create(store.dir, w.version + 1)
                store.log.close()
                store.log = fresh_log
            w.seal()
            store.publish()
        if w.version == w.base.version:
            return  # nothing to fold in
        sealed = w.view()  # the fresh delta is empty: this is the version now, without it
        sealed.deltas = sealed.deltas[:-1]
    base = build_base(store.dir, sealed)
    with store.mutex:
        w.base = base
        w.deltas = w.deltas[len(sealed.deltas) :]
        store.publish()
        keep_from = store.log.first_seq if store.log is not None else base.version + 1
    for first, path in wal.segments(store.dir):
        if first < keep_from:  # every record in it is in the base now
            path.unlink(missing_ok=True)
