"""``imgsim index ...`` and ``imgsim search`` (owned by index/): thin wrappers over the library functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from index.build import add_files, build_gallery_index, make_embedder, update_gallery_index
from index.errors import IndexMismatchError
from index.gallery import GalleryIndex


def register(subparsers: Any) -> None:
    index = subparsers.add_parser("index", help="build and change a gallery index")
    sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    p = sub.add_parser("build", help="embed a folder-per-class gallery into a new index")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--gallery", required=True)
    p.add_argument("--out", required=True, help="index folder to create")
    p.add_argument("--factory", default=None, help="FAISS factory string (default: chosen from the size)")
    _embedding_options(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("add", help="embed and add files, or folders")
    p.add_argument("--index", required=True)
    p.add_argument("--checkpoint", default=None, help="default: the one recorded in the index")
    p.add_argument("--label", default=None, help="label for every file (without it a folder is per-class)")
    p.add_argument("paths", nargs="+", metavar="FILES_OR_FOLDER")
    _embedding_options(p)
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("remove", help="remove items by id")
    p.add_argument("--index", required=True)
    p.add_argument("ids", nargs="+", type=int)
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("relabel", help="give an item a new label")
    p.add_argument("--index", required=True)
    p.add_argument("id", type=int)
    p.add_argument("label")
    p.set_defaults(func=cmd_relabel)

    p = sub.add_parser("compact", help="fold the log into a new base snapshot now")
    p.add_argument("--index", required=True)
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("update", help="embed new or changed gallery files, drop the ones gone")
    p.add_argument("--index", required=True)
    p.add_argument("--checkpoint", default=None, help="default: the one recorded in the index")
    p.add_argument("--gallery", default=None, help="default: the gallery the index was built from")
    _embedding_options(p)
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("info", help="print the manifest and label counts")
    p.add_argument("--index", required=True)
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser("search", help="find the gallery images most similar to IMAGE")
    p.add_argument("--index", required=True)
    p.add_argument("--checkpoint", default=None, help="default: the one recorded in the index")
    p.add_argument("image")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--label", default=None, help="search only this label")
    p.add_argument("--montage", default=None, help="save the query beside its neighbours to this image")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_search)


def _embedding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "int8", "fp16", "bf16"),
        help="auto: an existing gallery's own; for a new one int8 on the CPU (when the model quantises well), "
        "fp16 on CUDA",
    )


def _recorded_checkpoint(index_dir: str, given: str | None) -> str:
    if given:
        return given
    recorded = GalleryIndex.open(index_dir).checkpoint
    if not recorded:
        raise ValueError(f"{index_dir} records no checkpoint; pass --checkpoint.")
    return recorded


def cmd_build(args: argparse.Namespace) -> int:
    report = build_gallery_index(
        args.checkpoint,
        args.gallery,
        args.out,
        factory=args.factory,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
    )
    print(report.summary())
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    report = add_files(
        _recorded_checkpoint(args.index, args.checkpoint),
        args.index,
        args.paths,
        label=args.label,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
    )
    print(report.summary())
    print("ids:", " ".join(map(str, report.ids)))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with GalleryIndex.open(args.index) as gi:
        removed = gi.remove(args.ids)
        version = gi.version
    unknown = sorted(set(args.ids) - set(removed))
    print(
        f"removed {len(removed)} items from {args.index} (version {version})"
        + (f"; unknown ids ignored: {' '.join(map(str, unknown))}" if unknown else "")
    )
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    label = args.label.strip()
    if not label or not label.isprintable():
        raise ValueError("The label must be non-empty printable text.")
    with GalleryIndex.open(args.index) as gi:
        done = gi.relabel(args.id, label)
    if not done.ids:
        raise ValueError(f"No item with id {args.id} in {args.index}.")
    print(f"item {args.id} of {args.index} is labelled {label!r} (version {done.version})")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    with GalleryIndex.open(args.index) as gi:
        pending = gi.pending
        version = gi.compact()
    print(f"{args.index}: base version {version} ({pending} changes folded in from the log)")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    gallery = args.gallery or GalleryIndex.open(args.index).gallery_root
    if gallery is None:
        raise ValueError(f"{args.index} records no gallery folder; pass --gallery.")
    report = update_gallery_index(
        _recorded_checkpoint(args.index, args.checkpoint),
        gallery,
        args.index,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
    )
    print(report.summary())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(GalleryIndex.open(args.index).info(), indent=2))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    gi = GalleryIndex.open(args.index)
    checkpoint = args.checkpoint or _recorded_checkpoint(args.index, None)
    embedder = make_embedder(checkpoint, args.device, index_dir=args.index)  # the gallery's precision
    if embedder.checkpoint.hash != gi.model_hash or embedder.dim != gi.dim:
        raise IndexMismatchError(
            f"Index {args.index} was built by model {gi.model_hash[:12]}, not by this checkpoint "
            f"({embedder.checkpoint.hash[:12]}). Rebuild it with `imgsim index build`."
        )
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"{image} does not exist.")
    result = embedder.embed_files([image], num_workers=0, progress=False)
    if result.failures:
        raise ValueError(f"{image}: {result.failures[0]}")
    hits = gi.search(result.embeddings, args.k, label=args.label)[0]
    print(f"{'rank':>4}  {'id':>7}  {'distance':>8}  {'cosine':>7}  {'label':<20}  path")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>4}  {hit.id:>7}  {hit.distance:>8.4f}  {hit.similarity:>7.4f}  {hit.label:<20}  {hit.path}")
    if args.montage:
        from index.montage import save_montage

        out = save_montage(image, hits, [gi.image_path(h.id) for h in hits], args.montage)
        print(f"montage saved to {out}")
    return 0
