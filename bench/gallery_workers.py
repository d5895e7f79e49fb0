"""The measurements of bench_gallery, each in its own process (clean memory figures, one gallery at a time).

    python -m bench.gallery_workers build|writes|reopen|baseline DIR N [options]   -> one JSON line

``baseline`` runs the snapshot-per-change design that the log replaced (its ``index/`` from git, first on
``PYTHONPATH``): it imports nothing of the new ``index`` package.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench import gallery_data as data

K = 10


def rss() -> dict[str, float]:
    """Resident memory now and at its peak, in MiB (RssAnon: heap; RssFile: mapped files)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def pct(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(samples)}


def items(start: int, n: int, salt: str = "") -> list[Any]:
    from index.records import NewItem  # the old and the new index package both have it

    return [NewItem(f"c/{i}.jpg", f"label{i % 50}", data.sha(i, salt), 640, 480) for i in range(start, start + n)]


# -- the new design -------------------------------------------------------------------------------------------
def build(index_dir: Path, n: int, factory: str, nlist_train: int, isotropic: bool, rerank: bool) -> dict[str, Any]:
    """A gallery of ``n`` vectors written straight to its first base (chunk by chunk)."""
    import faiss

    from index.bulk import create_gallery

    # One FAISS thread: on this shared 2-core machine two spinning OpenMP threads trained 2x slower.
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    train = data.vectors(nlist_train, seed=7, isotropic=isotropic) if nlist_train else None
    queries = data.vectors(200, seed=2, isotropic=isotropic)
    truth = _TopK(queries, K)  # the exact answers, from the chunks as they pass (recall needs no second pass)

    def chunks() -> Iterator[tuple[np.ndarray, list[Any]]]:
        for start, x in data.chunks(n, seed=1, isotropic=isotropic):
            truth.update(start, x)
            yield x, items(start, len(x))

    count = create_gallery(
        index_dir,
        chunks(),
        model_hash="b" * 64,
        backbone="bench",
        dim=data.DIM,
        factory=factory,
        train=train,
        rerank=rerank,
    )
    np.save(index_dir.parent / f"{index_dir.name}-truth.npy", truth.ids)
    return {"count": count, "build_s": time.perf_counter() - started, "rss": rss()}


class _TopK:
    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, start: int, x: np.ndarray) -> None:
        scores = self.queries @ x.T
        if scores.shape[1] > self.k:  # the chunk's own top k first: a sort of k + k, not of the chunk
            part = np.argpartition(-scores, self.k, axis=1)[:, : self.k]
        else:
            part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        s = np.concatenate([self.scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        i = np.concatenate([self.ids, part + start], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, : self.k]
        self.scores, self.ids = np.take_along_axis(s, top, axis=1), np.take_along_axis(i, top, axis=1)


def writes(index_dir: Path, n: int, quick: bool, pending: int) -> dict[str, Any]:
    """Durable add / remove latency (one writer), adds/s with 16 writers, search p50/p99 alone and during
    writes at 100 changes/s; then tops the log up to ``pending`` changes (10,000) for ``reopen``."""
    import faiss

    from index import CompactionPolicy, GalleryIndex

    faiss.omp_set_num_threads(1)
    gi = GalleryIndex.open(index_dir, writer=True, policy=CompactionPolicy(background=False))
    fresh = iter(range(10**9))
    pool = data.vectors(20_000, seed=3)

    def add_one() -> None:
        i = next(fresh)
        gi.add(pool[i % len(pool)][None, :], items(i, 1, salt="new"))

    out: dict[str, Any] = {}
    for _ in range(10):
        add_one()  # warm up
    out["add"] = pct([_timed(add_one) for _ in range(100 if quick else 300)])
    victims = iter(np.random.default_rng(0).permutation(n)[:50_000].tolist())
    out["remove"] = pct([_timed(lambda: gi.remove([next(victims)])) for _ in range(100 if quick else 300)])
    out["writers16"] = _concurrent_adds(gi, add_one, writers=16, per_writer=50 if quick else 200)
    queries = data.vectors(200, seed=2)
    out["search"] = _search_during_writes(gi, queries, add_one, victims)
    gi.compact()  # then exactly the log that reopen replays: ``pending`` changes since the base
    while gi.pending < pending:
        _concurrent_adds(gi, add_one, writers=16, per_writer=max(1, min(100, (pending - gi.pending) // 16 + 1)))
    out["pending"], out["version"], out["count"] = gi.pending, gi.version, gi.count
    out["rss"] = rss()
    gi.close()
    return out


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _concurrent_adds(gi: Any, add_one: Any, writers: int, per_writer: int) -> dict[str, float]:
    fsyncs = gi.fsyncs
    barrier = threading.Barrier(writers + 1)

    def run() -> None:
        barrier.wait()
        for _ in range(per_writer):
            add_one()

    threads = [threading.Thread(target=run) for _ in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    adds = writers * per_writer
    return {"adds_per_s": adds / seconds, "adds": adds, "fsyncs": gi.fsyncs - fsyncs}


def _search_during_writes(gi: Any, queries: np.ndarray, add_one: Any, victims: Any) -> dict[str, Any]:
    """The same queries alone and while a thread makes 100 changes/s (adds and removes in turn), in
    alternating rounds so that machine noise falls on both alike."""
    alone: list[float] = []
    during: list[float] = []
    total = {"changes": 0, "seconds": 0.0}
    for _ in range(3):
        alone += [_timed(lambda q=q: gi.search(q[None, :], K)) for q in queries]
        stop = threading.Event()
        thread = threading.Thread(target=_paced_writer, args=(gi, add_one, victims, stop, total))
        thread.start()
        during += [_timed(lambda q=q: gi.search(q[None, :], K)) for q in queries]
        stop.set()
        thread.join()
    return {"alone": pct(alone), "during": pct(during), "changes_per_s": total["changes"] / total["seconds"]}


def _paced_writer(gi: Any, add_one: Any, victims: Any, stop: threading.Event, total: dict[str, float]) -> None:
    started, done = time.perf_counter(), 0
    while not stop.is_set():
        wait = started + done / 100 - time.perf_counter()  # 100 changes/s: an add, then a remove
        if wait > 0:
            time.sleep(min(wait, 0.01))
            continue
        add_one() if done % 2 else gi.remove([next(victims)])
        done += 1
    total["changes"] += done
    total["seconds"] += time.perf_counter() - started


def reopen(index_dir: Path, n: int, recall: bool, isotropic: bool) -> dict[str, Any]:
    """Open + replay of the pending log, memory, recall@10 against exact (when asked), compaction time."""
    import faiss

    from index import CompactionPolicy, GalleryIndex

    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    gi = GalleryIndex.open(index_dir, policy=CompactionPolicy(background=False))
    out: dict[str, Any] = {"open_s": time.perf_counter() - started, "pending": gi.pending, "count": gi.count}
    queries = data.vectors(200, seed=2, isotropic=isotropic)
    out["search"] = pct([_timed(lambda q=q: gi.search(q[None, :], K)) for q in queries])
    out["rss_open"] = rss()
    if recall:  # of the base alone (no log yet): against the exact answers the build saved
        truth = np.load(index_dir.parent / f"{index_dir.name}-truth.npy")

        def measured() -> float:
            found = [[h.id for h in row] for row in gi.search(queries, K)]
            return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))

        out["recall"] = measured()
        out["sweep"] = []
        for nprobe in (16, 32, 64):  # the knobs, measured: search time against recall
            for factor in (1, 5, 10, 20):
                gi.view().settings["search_params"] = {"nprobe": nprobe, "rerank": factor}  # this process only
                times = pct([_timed(lambda q=q: gi.search(q[None, :], K)) for q in queries])
                out["sweep"].append({"nprobe": nprobe, "rerank": factor, "recall": measured(), **times})
        out["rss_sweep"] = rss()
    if gi.pending:
        started = time.perf_counter()
        gi.compact()
        out["compact_s"] = time.perf_counter() - started
    out["rss_end"] = rss()
    gi.close()
    return out


# -- the design it replaced -----------------------------------------------------------------------------------
def baseline(index_dir: Path, n: int) -> dict[str, Any]:
    """Snapshot per change: one add + save, one remove + save (median of 3), open (median of 3)."""
    import faiss

    from index.gallery import GalleryIndex  # the old package (PYTHONPATH)

    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    gi = GalleryIndex.create(index_dir, model_hash="b" * 64, backbone="bench", dim=data.DIM)
    for start, x in data.chunks(n, seed=1):
        gi.add(x, items(start, len(x)))
    gi.save()
    out: dict[str, Any] = {"build_s": time.perf_counter() - started}
    pool = data.vectors(10, seed=3)
    adds = []
    for i in range(3):
        t = time.perf_counter()
        gi.add(pool[i][None, :], items(i, 1, salt="new"))
        gi.save()
        adds.append(time.perf_counter() - t)
    removes = []
    for i in range(3):
        t = time.perf_counter()
        gi.remove([i * 7])
        gi.save()
        removes.append(time.perf_counter() - t)
    del gi
    opens = []
    for _ in range(3):
        t = time.perf_counter()
        GalleryIndex.open(index_dir)
        opens.append(time.perf_counter() - t)
    out.update(add_s=statistics.median(adds), remove_s=statistics.median(removes), open_s=statistics.median(opens))
    out["rss"] = rss()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["build", "writes", "reopen", "baseline"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--factory", default="IDMap2,Flat")
    parser.add_argument("--train", type=int, default=0, help="training sample size (approximate types)")
    parser.add_argument("--recall", action="store_true", help="recall@10 against the build's exact answers")
    parser.add_argument("--isotropic", action="store_true", help="bench_index's blobs instead")
    parser.add_argument("--rerank", action="store_true", help="keep an 8-bit copy on disk to re-rank with")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pending", type=int, default=10_000, help="changes left in the log for reopen")
    args = parser.parse_args()
    if args.kind == "build":
        result = build(args.dir, args.n, args.factory, args.train, args.isotropic, args.rerank)
    elif args.kind == "writes":
        result = writes(args.dir, args.n, args.quick, args.pending)
    elif args.kind == "reopen":
        result = reopen(args.dir, args.n, args.recall, args.isotropic)
    else:
        result = baseline(args.dir, args.n)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
