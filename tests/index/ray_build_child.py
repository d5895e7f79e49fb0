"""The ``--ray`` build that tests/index/test_ray_embed.py kills part-way:

    python tests/index/ray_build_child.py CHECKPOINT GALLERY INDEX_DIR CHUNKS

It builds with a local Ray (2 CPUs, chunks of 8 photos) and, once CHUNKS chunks are durably in the gallery,
says ``COMMITTED <items>`` on stdout and waits for the SIGKILL. Stopping is done by wrapping
``index.ray_build.commit_chunk`` here, in the child, so the library carries no test hooks.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import index.ray_build
from index import build_gallery_index
from index.ray_embed import RayOptions


def main(checkpoint: str, gallery: str, index_dir: str, chunks: int) -> None:
    real = index.ray_build.commit_chunk
    done = {"chunks": 0}

    def commit_then_maybe_stop(gi: Any, chunk: Any, tally: Any) -> None:
        real(gi, chunk, tally)
        done["chunks"] += 1
        if done["chunks"] == chunks:
            os.write(1, f"COMMITTED {gi.count}\n".encode())
            time.sleep(3600)

    index.ray_build.commit_chunk = commit_then_maybe_stop  # type: ignore[assignment]
    options = RayOptions(num_cpus=2, batch_size=8, chunk=8)
    build_gallery_index(checkpoint, gallery, index_dir, progress=False, ray=options)
    os.write(1, b"FINISHED\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
