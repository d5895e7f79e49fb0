"""Embedding a gallery on a local Ray against the built-in workers: the same photos, the same model, one run.

    .venv/bin/python -m bench.bench_ray [--photos 550] [--repeats 3]

Both paths build a whole gallery (list, hash, decode, embed, durable adds, the final compaction) from a
folder-per-breed gallery of symbolic links to photos of ../shared/data/dogs, with efficientnet-lite0 at
224 px (``bench.bench_embedding``'s checkpoint), of ``photos`` and of 3 x ``photos`` photos. Ray is started
once (``ray.init`` measured apart). Paths and sizes are interleaved, so a change of the shared machine's load
hits them alike.

Wall-clock rates swing 2-3x between repeats on a shared machine, so the CPU time each path spends is measured
too: this process's, and for Ray every process of its session (raylet, GCS, the listing workers and the
actors, sampled at each committed chunk, since the actors exit with the build). The CPU seconds per extra
photo of the larger build against the smaller, (cpu2 - cpu1) / (n2 - n1), exclude the fixed costs (Ray's
listing and actor start-up, each actor importing torch and loading the model); ``cores x 1000 / CPU ms`` is the
rate a node with its cores to itself would reach: what docs/scale.md's sizing uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import index.ray_build
from bench.bench_embedding import DOGS, bench_checkpoint, machine_line
from index import build_gallery_index
from index.ray_embed import RayOptions, connect
from model.core.device import cpu_count
from model.inference.embedder import Embedder
from model.inference.workers import default_workers


def link_gallery(root: Path, n: int) -> int:
    """``n`` photos spread over every breed, linked (not copied) into ``root/<breed>/``."""
    breeds = sorted(p for p in DOGS.iterdir() if p.is_dir())
    per = max(1, n // len(breeds))
    count = 0
    for breed in breeds:
        (root / breed.name).mkdir(parents=True)
        for photo in sorted(breed.glob("*.jpg"))[:per]:
            (root / breed.name / photo.name).symlink_to(photo)
            count += 1
    return count


def process_tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``root`` and of every process below it, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    inside = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in inside and pid not in inside:
                inside.add(pid)
                changed = True
    return {pid: cpu[pid] for pid in inside if pid in cpu}


class CpuMeter:
    """CPU seconds of this process and its descendants during a build: each process's last sample (taken at
    every committed chunk, and at the end) minus what it had used at the start."""

    def __init__(self) -> None:
        self._real = index.ray_build.commit_chunk
        self.start: dict[int, float] = {}
        self.seen: dict[int, float] = {}

    def sample(self) -> None:
        for pid, seconds in process_tree_cpu(os.getpid()).items():
            self.seen[pid] = max(self.seen.get(pid, 0.0), seconds)

    def __enter__(self) -> CpuMeter:
        self.start = process_tree_cpu(os.getpid())

        def sampled(gi: Any, chunk: Any, tally: Any) -> None:
            self._real(gi, chunk, tally)
            self.sample()

        index.ray_build.commit_chunk = sampled  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        index.ray_build.commit_chunk = self._real  # type: ignore[assignment]

    @property
    def seconds(self) -> float:
        return sum(max(0.0, s - self.start.get(pid, 0.0)) for pid, s in self.seen.items())


def run(photos: int, repeats: int) -> dict[str, Any]:
    ckpt = bench_checkpoint()
    Embedder(ckpt, device="cpu")  # the ONNX export cached beside the checkpoint before anything is timed
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        sizes = {"small": link_gallery(work / "small", photos), "large": link_gallery(work / "large", 3 * photos)}
        load_before = os.getloadavg()[0]
        t = time.perf_counter()
        connect(RayOptions(num_cpus=cpu_count()))
        ray_init_s = time.perf_counter() - t
        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for k in range(repeats):
            for gallery in ("small", "large"):
                for path in ("built-in", "ray"):
                    out = work / f"{path}-{gallery}-{k}"
                    with CpuMeter() as meter:
                        t = time.perf_counter()
                        if path == "built-in":
                            workers = default_workers()
                            build_gallery_index(ckpt, work / gallery, out, progress=False, num_workers=workers)
                        else:
                            options = RayOptions(batch_size=32, chunk=64)
                            build_gallery_index(ckpt, work / gallery, out, progress=False, ray=options)
                        wall.setdefault(f"{path} {gallery}", []).append(time.perf_counter() - t)
                    cpu.setdefault(f"{path} {gallery}", []).append(meter.seconds)
                    shutil.rmtree(out)
        extra = sizes["large"] - sizes["small"]
        med = {name: statistics.median(v) for name, v in cpu.items()}
        return {
            "photos": [sizes["small"], sizes["large"]],
            "repeats": repeats,
            "ray_init_s": ray_init_s,
            "images_per_s": {name: sizes[name.split()[1]] / statistics.median(v) for name, v in wall.items()},
            "cpu_ms_per_image": {name: 1000 * v / sizes[name.split()[1]] for name, v in med.items()},
            "marginal_cpu_ms": {p: 1000 * (med[f"{p} large"] - med[f"{p} small"]) / extra for p in ("built-in", "ray")},
            "ray_fixed_cpu_s": med["ray small"] - sizes["small"] * (med["ray large"] - med["ray small"]) / extra,
            "wall_s": wall,
            "cpu_s": cpu,
            "load": (load_before, os.getloadavg()[0]),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> str:
    ips, cms, marginal = result["images_per_s"], result["cpu_ms_per_image"], result["marginal_cpu_ms"]
    small, large = result["photos"]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cores = cpu_count()
    node = {p: cores * 1000 / marginal[p] for p in marginal}
    return "\n".join(
        [
            "### Embedding on Ray (bench/bench_ray.py)",
            "",
            machine_line() + f", ray {_ray_version()}.",
            f"Command: `python -m bench.bench_ray --photos {small} --repeats {result['repeats']}`. Date: {when}. "
            f"Load average {result['load'][0]:.1f} before, {result['load'][1]:.1f} after (shared cores).",
            "",
            f"Whole builds of {small} and {large} dog photos (efficientnet-lite0, 224 px), medians of "
            f"{result['repeats']} interleaved repeats. `ray.init` (local, {cores} CPUs): "
            f"{result['ray_init_s']:.1f} s, not counted. Built-in: {default_workers()} threads, a 1-thread model "
            "each; Ray: an actor per CPU, a 1-thread model each. CPU: every process of the path (module docstring).",
            "",
            f"| path | {small} photos, images/s | CPU ms/img | {large} photos, images/s | CPU ms/img "
            "| CPU ms per extra photo | a node's rate, images/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {name} | {ips[p + ' small']:.1f} | {cms[p + ' small']:.1f} | {ips[p + ' large']:.1f} "
                f"| {cms[p + ' large']:.1f} | {marginal[p]:.1f} | {node[p]:.0f} |"
                for name, p in (("built-in workers", "built-in"), ("local Ray", "ray"))
            ),
            "",
            f"- Ray / built-in, images/s end to end: **{ips['ray small'] / ips['built-in small']:.2f}** at {small} "
            f"photos, **{ips['ray large'] / ips['built-in large']:.2f}** at {large} (target >= 0.8).",
            f"- Ray / built-in, a node's rate once started (CPU per extra photo): "
            f"**{marginal['built-in'] / marginal['ray']:.2f}**; Ray's fixed cost: "
            f"{result['ray_fixed_cpu_s']:.0f} CPU s (listing, starting {cores} actors).",
        ]
    )


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=550)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.photos, args.repeats)
    print(report(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
