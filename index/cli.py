"""``imgsim index ...`` and ``imgsim search`` (owned by index/): thin wrappers over the library functions."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from index.backend import open_gallery, parse_location
from index.build import BuildReport, UpdateReport, add_files, build_gallery_index, make_embedder, update_gallery_index
from index.errors import IndexMismatchError
from index.gallery import GalleryIndex
from index.rebuild import rebuild_gallery_index

if TYPE_CHECKING:
    from index.ray_embed import RayOptions

INDEX_HELP = (
    "gallery: a folder, milvus://HOST:PORT/COLLECTION or a Milvus Lite *.db (IMGSIM_INDEX; default indexes/default)"
)
CHECKPOINT_HELP = "trained checkpoint (IMGSIM_CHECKPOINT; default: the one the index records)"
DEVICE_HELP = "auto, cpu, cuda or cuda:N (IMGSIM_DEVICE; default auto)"
JSON_HELP = "print the result as one JSON object"
# What `app.cli` fills from the settings when the option is left out (dest -> setting).
FROM_SETTINGS = {"index": "index", "checkpoint": "checkpoint", "device": "device"}


def register(subparsers: Any) -> None:
    index = subparsers.add_parser("index", help="build and change a gallery index")
    sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    p = sub.add_parser("build", help="embed a folder-per-class gallery into a new index")
    p.add_argument(
        "--checkpoint", help="trained checkpoint (IMGSIM_CHECKPOINT; default IMGSIM_RUN_DIR/best.pt, runs/default)"
    )
    p.add_argument(
        "--data",
        "--gallery",
        help="folder-per-class photos (IMGSIM_DATA_DIR; default ../shared/data/dogs; --gallery: old)",
    )
    p.add_argument(
        "--index", "--out", help="index folder to create (IMGSIM_INDEX; default indexes/default; --out: old)"
    )
    p.add_argument("--factory", default=None, help="FAISS factory string (default: chosen from the size)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="the index exists: build a new one beside it (uploads carried over, new ids), then swap it in",
    )
    _embedding_options(p)
    p.set_defaults(
        func=cmd_build,
        from_settings={"index": "index", "checkpoint": "trained_checkpoint", "data": "photos", "device": "device"},
        input_files=("checkpoint", "data"),
    )

    p = sub.add_parser("add", help="embed and add files, or folders")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--label", default=None, help="label for every file (without it a folder is per-class)")
    p.add_argument("paths", nargs="+", metavar="FILES_OR_FOLDER", help="images, or folder-per-class folders")
    _embedding_options(p)
    p.set_defaults(func=cmd_add, from_settings=FROM_SETTINGS, input_files=("index", "paths", "checkpoint"))

    p = sub.add_parser("remove", help="remove items by id")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("ids", nargs="+", type=int, help="ids of the items to remove")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_remove, from_settings={"index": "index"}, input_files=("index",))

    p = sub.add_parser("relabel", help="give an item a new label")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("id", type=int, help="the item's id")
    p.add_argument("label", help="its new label")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_relabel, from_settings={"index": "index"}, input_files=("index",))

    p = sub.add_parser("compact", help="fold the log into a new base snapshot now")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_compact, from_settings={"index": "index"}, input_files=("index",))

    p = sub.add_parser("update", help="embed new or changed gallery files, drop the ones gone")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--data", "--gallery", help="folder-per-class photos (default: the folder the index was built from)")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="embed everything again (needed when --checkpoint is another model than the index's): a new index "
        "is built beside the old one, uploads carried over, then swapped in",
    )
    _embedding_options(p)
    p.set_defaults(func=cmd_update, from_settings=FROM_SETTINGS, input_files=("index", "data", "checkpoint"))

    p = sub.add_parser("info", help="print the manifest and label counts")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_info, from_settings={"index": "index"}, input_files=("index",))

    p = sub.add_parser("export", help="write the gallery to a portable folder (streamed, a chunk at a time)")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("out", help="a new folder for the export")
    p.add_argument("--chunk", type=int, default=10_000, help="items per chunk file (%(default)s)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_export, from_settings={"index": "index"}, input_files=("index",))

    p = sub.add_parser("import", help="add an export to a gallery (created if missing); resumable")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("src", help="a folder written by `imgsim index export`")
    p.add_argument("--media-dir", help="uploads of a Milvus gallery (IMGSIM_MEDIA_DIR; default beside the .db)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_import, from_settings={"index": "index", "media_dir": "media_dir"}, input_files=("src",))

    p = subparsers.add_parser("search", help="find the gallery images most similar to IMAGE")
    p.add_argument("--index", help=INDEX_HELP)
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("image", help="the query photo")
    p.add_argument("-k", "--k", type=int, default=5, help="number of results (%(default)s)")
    p.add_argument("--label", default=None, help="search only this label")
    p.add_argument("--montage", default=None, help="save the query beside its neighbours to this image")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_search, from_settings=FROM_SETTINGS, input_files=("index", "image", "checkpoint"))


def _embedding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (%(default)s)")
    p.add_argument("--workers", type=int, default=2, help="processes decoding images (%(default)s)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "int8", "fp16", "bf16"),
        help="auto: an existing gallery's own; for a new one int8 on the CPU (when the model quantises well), "
        "fp16 on CUDA",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="embed on a Ray cluster (ray://HOST:10001 or HOST:6379; without ADDRESS a local Ray on this machine); "
        "needs imgsim[scale]. A build that stops resumes when run again (docs/scale.md)",
    )


def _ray_options(args: argparse.Namespace) -> RayOptions | None:
    if args.ray is None:
        return None
    if getattr(args, "replace", False) or getattr(args, "rebuild", False):
        raise ValueError("--ray does not combine with --replace or --rebuild: build into a new --index with --ray.")
    from index.ray_embed import RayOptions

    return RayOptions(address=args.ray or None, batch_size=min(args.batch_size, 64))


def _print_report(report: BuildReport | UpdateReport, as_json: bool) -> None:
    print(json.dumps(asdict(report), default=str) if as_json else report.summary())


def _recorded_checkpoint(index_dir: str, given: str | None) -> str:
    if given:
        return given
    with open_gallery(index_dir) as gallery:
        recorded = gallery.checkpoint
    if not recorded:
        raise ValueError(f"{index_dir} records no checkpoint; pass --checkpoint.")
    return recorded


def _faiss_only(index: str, action: str, instead: str) -> None:
    if parse_location(index).kind != "faiss":
        raise ValueError(f"`imgsim index {action}` works on a gallery folder, not on {index}: {instead}.")


IMPORT_INSTEAD = "build a folder, then `imgsim index export` it and `imgsim index import` the export"


def cmd_build(args: argparse.Namespace) -> int:
    _faiss_only(args.index, "build", IMPORT_INSTEAD)
    if args.data is None:
        raise ValueError("Which photos? Pass --data (or set IMGSIM_DATA_DIR): one subfolder of images per class.")
    options = {
        "factory": args.factory,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "device": args.device,
        "precision": args.precision,
    }
    ray = _ray_options(args)
    if args.replace:
        report = rebuild_gallery_index(args.checkpoint, args.data, args.index, **options)
    else:
        report = build_gallery_index(args.checkpoint, args.data, args.index, ray=ray, **options)
    _print_report(report, args.json)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    _faiss_only(args.index, "add", "add photos through the service (POST /v1/gallery), or " + IMPORT_INSTEAD)
    report = add_files(
        _recorded_checkpoint(args.index, args.checkpoint),
        args.index,
        args.paths,
        label=args.label,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
        ray=_ray_options(args),
    )
    _print_report(report, args.json)
    if not args.json:
        print("ids:", " ".join(map(str, report.ids)))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with open_gallery(args.index) as gi:
        removed = gi.remove(args.ids)
        version = gi.version
    unknown = sorted(set(args.ids) - set(removed))
    if args.json:
        print(json.dumps({"removed": removed, "unknown": unknown, "version": version}))
        return 0
    print(
        f"removed {len(removed)} items from {args.index} (version {version})"
        + (f"; unknown ids ignored: {' '.join(map(str, unknown))}" if unknown else "")
    )
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    label = args.label.strip()
    if not label or not label.isprintable():
        raise ValueError("The label must be non-empty printable text.")
    with open_gallery(args.index) as gi:
        done = gi.relabel(args.id, label)
    if not done.ids:
        raise ValueError(f"No item with id {args.id} in {args.index}.")
    if args.json:
        print(json.dumps({"id": args.id, "label": label, "version": done.version}))
    else:
        print(f"item {args.id} of {args.index} is labelled {label!r} (version {done.version})")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    _faiss_only(args.index, "compact", "Milvus compacts its segments itself")
    with GalleryIndex.open(args.index) as gi:
        pending = gi.pending
        version = gi.compact()
    if args.json:
        print(json.dumps({"base_version": version, "folded": pending}))
    else:
        print(f"{args.index}: base version {version} ({pending} changes folded in from the log)")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    _faiss_only(args.index, "update", IMPORT_INSTEAD)
    gallery = args.data or GalleryIndex.open(args.index).gallery_root
    if gallery is None:
        raise ValueError(f"{args.index} records no gallery folder; pass --data.")
    checkpoint = _recorded_checkpoint(args.index, args.checkpoint)
    ray = _ray_options(args)
    options = {"batch_size": args.batch_size, "num_workers": args.workers, "device": args.device}
    if args.rebuild:
        report: BuildReport | UpdateReport = rebuild_gallery_index(
            checkpoint, gallery, args.index, precision=args.precision, **options
        )
    else:
        try:
            report = update_gallery_index(checkpoint, gallery, args.index, precision=args.precision, **options, ray=ray)
        except IndexMismatchError as exc:
            raise IndexMismatchError(
                f"{args.index} holds vectors that cannot be mixed with {checkpoint}'s ({exc}). "
                "Add --rebuild to embed everything again with it."
            ) from exc
    _print_report(report, args.json)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = open_gallery(args.index).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for key, value in info.items():
        shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value
        print(f"{key:<{width}}  {shown}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    image = Path(args.image)
    gi = open_gallery(args.index)
    checkpoint = args.checkpoint or _recorded_checkpoint(args.index, None)
    embedder = make_embedder(checkpoint, args.device, index_dir=args.index)  # the gallery's precision
    if embedder.checkpoint.hash != gi.model_hash or embedder.dim != gi.dim:
        raise IndexMismatchError(
            f"Index {args.index} was built by model {gi.model_hash[:12]}, not by this checkpoint "
            f"({embedder.checkpoint.hash[:12]}). Rebuild it with `imgsim index build`."
        )
    result = embedder.embed_files([image], num_workers=0, progress=False)
    if result.failures:
        raise ValueError(f"{image}: {result.failures[0]}")
    hits = gi.search(result.embeddings, args.k, label=args.label)[0]
    montage = None
    if args.montage:
        from index.montage import save_montage

        montage = save_montage(image, hits, [gi.image_path(h.id) for h in hits], args.montage)
    if args.json:
        rows = [
            {
                "rank": r,
                "id": h.id,
                "distance": h.distance,
                "similarity": h.similarity,
                "label": h.label,
                "path": h.path,
            }
            for r, h in enumerate(hits, 1)
        ]
        print(json.dumps({"results": rows, "montage": str(montage) if montage else None}))
        return 0
    print(f"{'rank':>4}  {'id':>7}  {'distance':>8}  {'cosine':>7}  {'label':<20}  path")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>4}  {hit.id:>7}  {hit.distance:>8.4f}  {hit.similarity:>7.4f}  {hit.label:<20}  {hit.path}")
    if montage:
        print(f"montage saved to {montage}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from index.transfer import export_gallery

    gallery = open_gallery(args.index)
    try:
        report = export_gallery(gallery, args.out, chunk_items=args.chunk)
    finally:
        gallery.close()
    if args.json:
        print(json.dumps(asdict(report), default=str))
    else:
        print(f"exported {report.items} items ({report.media} uploaded images) of {args.index} to {report.out}")
        if report.missing_media:
            print(f"uploaded images missing (items kept): {' '.join(map(str, report.missing_media))}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from index.transfer import import_gallery

    def progress(done: int, total: int) -> None:
        if not args.json:
            print(f"chunk {done}/{total} added", flush=True)

    report = import_gallery(args.src, args.index, media_dir=args.media_dir, on_chunk=progress)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print(
            f"imported {report.added} items into {report.index} ({report.already_there} already there); "
            f"version {report.version}"
        )
    return 0
