"""bench_gallery's quick path end to end on a tiny gallery: every worker runs and the report has its rows."""

from __future__ import annotations

from pathlib import Path

from bench import bench_gallery


def test_bench_gallery_smoke(tmp_path: Path) -> None:
    report = bench_gallery.run(quick=True, sizes=[3000], ten_million=False, keep=tmp_path, pending=300)
    rows = [line for line in report.splitlines() if line.startswith("| 3,000 |")]
    assert len(rows) == 2, report
    writes, storage = (row.split("|") for row in rows)
    assert "`IDMap2,Flat`" in writes[2] and "adds/s" in writes[7]
    assert "(300 changes)" in storage[3] or "changes)" in storage[3]
    assert all(cell.strip() for cell in writes[1:-1]) and all(cell.strip() for cell in storage[1:-1])
    assert list(tmp_path.iterdir()) == []  # the work folder is gone
