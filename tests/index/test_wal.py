"""The write-ahead log: records round-trip, a torn or bit-flipped tail is dropped with a warning (and cut off
by the next writer), damage before later segments is refused, a failed append leaves nothing behind."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from index import GalleryIndex, IndexCorruptError, StorageFullError, StorageUnavailableError
from index.wal import LogWriter, read_segment, segments
from tests.index.conftest import MANUAL, clustered, new_items


def test_records_round_trip_and_a_torn_tail_is_reported(tmp_path: Path) -> None:
    log = LogWriter.create(tmp_path, 5)
    batches = [[b"a" * 10], [b""], [b"b" * 3, b"c" * 7000]]
    for batch in batches:
        log.append(batch)
    log.close()
    [(first, path)] = segments(tmp_path)
    seg = read_segment(path)
    assert first == 5 and [p for _, p in seg.records] == [p for b in batches for p in b]
    assert seg.bad is None and seg.end == seg.size == path.stat().st_size
    ends = [end for end, _ in seg.records]
    whole = path.read_bytes()
    for cut in (ends[-2] + 3, ends[-2] + 9, ends[-1] - 1):  # inside the header, inside the payload, 1 short
        path.write_bytes(whole[:cut])
        torn = read_segment(path)
        assert len(torn.records) == len(ends) - 1 and torn.end == ends[-2] and "torn" in str(torn.bad)
    path.write_bytes(whole)
    again = read_segment(path, start=ends[0])  # a reader continuing from where it stopped
    assert [p for _, p in again.records] == [b"", b"b" * 3, b"c" * 7000]
    assert [p for _, p in read_segment(path, stop=ends[-2]).records] == [b"a" * 10, b"", b"b" * 3]


def _logged_gallery(tmp_path: Path, batches: int = 5) -> tuple[GalleryIndex, Path]:
    gi = GalleryIndex.create(tmp_path / "idx", model_hash="h" * 64, backbone="b", dim=16, policy=MANUAL)
    gi.add(clustered(20, 16), new_items(20))
    gi.compact()
    for b in range(batches):  # one record (version) each
        gi.add(clustered(3, 16, seed=b + 1), new_items(3, start=100 + 3 * b))
    gi.close()
    [(_, path)] = segments(gi.index_dir)
    return gi, path


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_last_record_dropped_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    gi, path = _logged_gallery(tmp_path)
    size = path.stat().st_size
    record = read_segment(path).records
    last_start = record[-2][0]
    data = bytearray(path.read_bytes())
    if damage == "truncate":  # a power cut in the middle of the last append
        path.write_bytes(bytes(data[: size - 5]))
    else:  # a bit flipped inside the last record's vectors
        data[last_start + 40] ^= 0x10
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        reader = GalleryIndex.open(gi.index_dir, policy=MANUAL)
    assert reader.version == 6 and reader.count == 32  # the four batches before it, all of them
    assert any("ends in a bad record" in r.message for r in caplog.records)
    assert path.stat().st_size == len(data) - (5 if damage == "truncate" else 0)  # a reader cuts nothing
    reader.ensure_writer()  # the writer cuts the bad tail off before appending
    assert path.stat().st_size == last_start
    assert reader.add(clustered(1, 16, seed=50), new_items(1, start=900)) == [32]
    assert reader.version == 7
    reader.close()
    reopened = GalleryIndex.open(gi.index_dir)
    assert reopened.version == 7 and reopened.count == 33
    assert reopened.id_for_sha(new_items(1, start=111)[0].sha256) == 31  # the batch before is all there
    assert reopened.id_for_sha(new_items(1, start=112)[0].sha256) is None  # the dropped batch is gone whole


def test_bad_record_followed_by_good_ones_in_the_last_segment(tmp_path: Path) -> None:
    """A power cut can persist the pages of one batch out of order: a bad record, then good-looking ones
    of the same unacknowledged batch. Everything from the first bad record on is dropped."""
    gi, path = _logged_gallery(tmp_path)
    records = read_segment(path).records
    data = bytearray(path.read_bytes())
    data[records[1][0] + 12] ^= 0x01  # inside the third record
    path.write_bytes(bytes(data))
    reader = GalleryIndex.open(gi.index_dir)
    assert reader.version == 4 and reader.count == 26


def test_damage_before_a_later_segment_is_refused(tmp_path: Path) -> None:
    gi, _ = _logged_gallery(tmp_path)
    writer = GalleryIndex.open(gi.index_dir, policy=MANUAL)
    writer.add(clustered(1, 16, seed=70), new_items(1, start=700))
    writer.compact()  # a new base; then two segments: seal, fail the build, seal again
    for i in range(2):
        writer.add(clustered(1, 16, seed=80 + i), new_items(1, start=800 + i))
        writer._store.working.seal()  # as a compaction that fails after sealing leaves it
        writer._store.log = LogWriter.create(gi.index_dir, writer.version + 1)
    writer.close()
    first = segments(gi.index_dir)[0][1]
    data = bytearray(first.read_bytes())
    data[-3] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match=rf"{first.name} is damaged .* later log files follow it"):
        GalleryIndex.open(gi.index_dir)


def test_missing_segment_is_a_gap(tmp_path: Path) -> None:
    gi, path = _logged_gallery(tmp_path)
    writer = GalleryIndex.open(gi.index_dir, policy=MANUAL)
    writer._store.log = LogWriter.create(gi.index_dir, writer.version + 1)  # a second segment
    writer.add(clustered(1, 16, seed=70), new_items(1, start=700))
    writer.close()
    path.unlink()
    with pytest.raises(IndexCorruptError, match="follows version 2: changes are missing"):
        GalleryIndex.open(gi.index_dir)


def _fail(code: int, after: int = 0):  # type: ignore[no-untyped-def]
    """A replacement for os.pwrite / os.fdatasync: the real call for ``after`` bytes, then the error."""
    real_pwrite = os.pwrite

    def failing(fd: int, *args: object) -> int:
        if args and after:  # pwrite: write a part first, as a full disk does
            data, offset = args
            return real_pwrite(fd, bytes(data)[:after], offset)  # type: ignore[call-overload,no-any-return]
        raise OSError(code, os.strerror(code))

    return failing


@pytest.mark.parametrize(
    ("call", "code", "error"),
    [
        ("pwrite", errno.ENOSPC, StorageFullError),
        ("pwrite", errno.EDQUOT, StorageFullError),
        ("pwrite", errno.EROFS, StorageUnavailableError),
        ("fdatasync", errno.EIO, StorageUnavailableError),
        ("fdatasync", errno.ENOSPC, StorageFullError),
    ],
)
def test_failed_append_is_cut_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, code: int, error: type[Exception]
) -> None:
    log = LogWriter.create(tmp_path, 1)
    log.append([b"kept"])
    size = log.size
    calls = {"n": 0}
    real = getattr(os, call)

    def flaky(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2 and call == "pwrite":  # the second pwrite: after a short first one
            raise OSError(code, os.strerror(code))
        if calls["n"] == 1 and call == "pwrite":
            fd, data, offset = args
            return real(fd, bytes(data)[:5], offset)  # type: ignore[arg-type]
        if call == "fdatasync" and calls["n"] == 1:
            raise OSError(code, os.strerror(code))
        return real(*args)

    monkeypatch.setattr(os, call, flaky)
    with pytest.raises(error):
        log.append([b"x" * 100, b"y" * 100])
    monkeypatch.undo()
    assert log.size == size == log.path.stat().st_size  # nothing of the batch is left
    log.append([b"after"])
    assert [p for _, p in read_segment(log.path).records] == [b"kept", b"after"]
    log.close()


def test_log_that_cannot_be_cut_back_appends_nothing_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = LogWriter.create(tmp_path, 1)
    log.append([b"kept"])
    size = log.size
    monkeypatch.setattr(os, "fdatasync", _fail(errno.EIO))
    monkeypatch.setattr(os, "ftruncate", _fail(errno.EIO))
    with pytest.raises(StorageUnavailableError):
        log.append([b"x" * 50])  # written, not synced, and it cannot be cut off: the file still holds it
    assert log.path.stat().st_size > size
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)
    with pytest.raises(StorageUnavailableError):
        log.append([b"y"])  # syncing works again, truncating does not: still nothing is appended
    assert log.path.stat().st_size > size and b"y" not in log.path.read_bytes()
    monkeypatch.undo()
    log.append([b"z"])  # the pending cut goes first, then the batch
    assert [p for _, p in read_segment(log.path).records] == [b"kept", b"z"]
    log.close()


def test_vectors_and_metadata_survive_the_log(tmp_path: Path) -> None:
    gi, _ = _logged_gallery(tmp_path, batches=2)
    reopened = GalleryIndex.open(gi.index_dir)
    assert np.allclose(reopened.vector(21), clustered(3, 16, seed=1)[1], atol=1e-7)
    assert reopened.get(23).path == "cls1/img103.png" and reopened.get(23).label == "cls1"
