from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from model.data.galleries import (
    Item,
    class_name_from_folder,
    gallery_fingerprint,
    make_splits,
    scan_gallery,
    select_items,
)
from model.data.sampling import ClassBalancedBatchSampler, article_pairs


def test_class_names_come_from_folders() -> None:
    assert class_name_from_folder("n02085620-Chihuahua") == "Chihuahua"
    assert class_name_from_folder("n02111889-Samoyed") == "Samoyed"
    assert class_name_from_folder("golden_retriever") == "golden_retriever"


def test_scan_gallery_finds_images_per_class(synthetic_gallery: Path) -> None:
    (synthetic_gallery / "red_circles" / "notes.txt").write_text("not an image")
    g = scan_gallery(synthetic_gallery)
    assert g.classes == ["blue_triangles", "green_squares", "red_circles", "yellow_bars"]
    assert Counter(i.label for i in g.items) == dict.fromkeys(g.classes, 12)
    assert all(g.absolute(i).is_file() for i in g.items)


def test_scan_gallery_explains_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one folder per class"):
        scan_gallery(tmp_path)
    with pytest.raises(FileNotFoundError):
        scan_gallery(tmp_path / "missing")


def items(n_classes: int = 5, per_class: int = 10) -> list[Item]:
    return [Item(f"c{c}/{k}.jpg", f"c{c}") for c in range(n_classes) for k in range(per_class)]


def test_closed_set_split_holds_out_a_fraction_of_every_class() -> None:
    s = make_splits(items(), seed=3, val_fraction=0.2)
    assert Counter(i.label for i in s.val) == {f"c{c}": 2 for c in range(5)}
    assert not set(s.train) & set(s.val)
    assert len(s.train) + len(s.val) == 50


def test_open_set_split_holds_out_whole_classes_deterministically() -> None:
    a = make_splits(items(), seed=7, num_open_classes=2)
    b = make_splits(items(), seed=7, num_open_classes=2)
    assert a.to_dict() == b.to_dict()
    assert len(a.open_classes) == 2
    assert not set(a.open_classes) & set(a.train_classes)
    named = make_splits(items(), open_classes=["c1"])
    assert named.open_classes == ["c1"]


def test_splits_round_trip_through_plain_data() -> None:
    s = make_splits(items(), seed=1, num_open_classes=1)
    assert type(s).from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_bad_split_options_fail_clearly() -> None:
    with pytest.raises(ValueError, match="not in the gallery"):
        make_splits(items(), open_classes=["nope"])
    with pytest.raises(ValueError, match="val_fraction"):
        make_splits(items(), val_fraction=1.5)


def test_class_balanced_batches_have_m_images_of_p_classes() -> None:
    labels = [i.label for i in items(per_class=9)]
    sampler = ClassBalancedBatchSampler(labels, m_per_class=4, classes_per_batch=3, batches_per_epoch=10, seed=0)
    batches = list(sampler)
    assert len(batches) == 10
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}
        assert len(set(batch)) == 12  # without replacement inside a class
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_ddp_ranks_get_disjoint_shares_of_the_batches() -> None:
    labels = [i.label for i in items()]
    whole = list(ClassBalancedBatchSampler(labels, 2, 2, batches_per_epoch=8, seed=0))
    shares = [list(ClassBalancedBatchSampler(labels, 2, 2, 8, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]


def test_article_pairs_have_n_similar_and_n_dissimilar_per_class() -> None:
    labels = [i.label for i in items(n_classes=3)]
    pairs = article_pairs(labels, pairs_per_class=7, seed=0)
    assert len(pairs) == 3 * 14
    for i, j, y in pairs:
        assert y == int(labels[i] != labels[j])
        assert i != j
    assert Counter(y for _, _, y in pairs) == {0: 21, 1: 21}


def test_fingerprint_changes_when_a_file_changes(synthetic_gallery: Path) -> None:
    before = gallery_fingerprint(scan_gallery(synthetic_gallery))
    assert gallery_fingerprint(scan_gallery(synthetic_gallery)) == before
    next(synthetic_gallery.glob("red_circles/*.png")).unlink()
    assert gallery_fingerprint(scan_gallery(synthetic_gallery)) != before


def test_select_items_by_glob_or_by_a_listing_file(synthetic_gallery: Path, tmp_path: Path) -> None:
    g = scan_gallery(synthetic_gallery)
    paths = [i.path for i in g.items]
    by_name = select_items(g, "*_00[01].png")  # no slash: matched against the file name
    assert [paths[k] for k in by_name] == [p for p in paths if p.endswith(("_000.png", "_001.png"))]
    assert len(by_name) == 8
    assert [paths[k] for k in select_items(g, "red_circles/*")] == [p for p in paths if p.startswith("red_circles/")]
    listing = tmp_path / "queries.txt"
    listing.write_text(f"# clean queries\n{paths[5]}\n\n{synthetic_gallery / paths[30]}\n")
    assert select_items(g, str(listing)) == [5, 30]  # relative and absolute entries, in gallery order


def test_select_items_refuses_to_name_nothing_or_unknown_photos(synthetic_gallery: Path, tmp_path: Path) -> None:
    g = scan_gallery(synthetic_gallery)
    with pytest.raises(ValueError, match="names none of the 48 photos"):
        select_items(g, "*/ILSVRC2012_val_*")
    listing = tmp_path / "queries.txt"
    listing.write_text("red_circles/red_circles_000.png\nred_circles/missing.png\n")
    with pytest.raises(ValueError, match="1 of the 2 photos it lists are not in"):
        select_items(g, str(listing))
