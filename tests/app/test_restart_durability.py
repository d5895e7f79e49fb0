"""Acknowledged gallery changes survive a restart: a new app on the same index folder sees them."""

from __future__ import annotations

import numpy as np

from app.settings import Settings
from index import GalleryIndex
from tests.app.conftest import on_both_backends, png_bytes, running
from tests.conftest import draw_shape


@on_both_backends
def test_changes_survive_restart(settings: Settings) -> None:
    upload = png_bytes(draw_shape("red_circles", np.random.default_rng(42), size=120))
    with running(settings) as client:
        added = client.post("/v1/gallery", files={"image": ("a.png", upload)}, data={"label": "kept"}).json()
        victim = client.get("/v1/gallery", params={"limit": 1}).json()["items"][0]
        deleted = client.delete(f"/v1/gallery/{victim['id']}")
        assert deleted.status_code == 200, deleted.text
        version = deleted.json()["index_version"]
    with running(settings) as client:  # a fresh process-equivalent: new app, model and index loaded again
        item = client.get(f"/v1/gallery/{added['id']}")
        assert item.status_code == 200, item.text
        assert {k: item.json()[k] for k in ("label", "sha256")} == {"label": "kept", "sha256": added["sha256"]}
        assert client.get(f"/v1/gallery/{victim['id']}").status_code == 404
        assert client.get("/v1/gallery").json()["total"] == 48
        hits = client.post("/v1/search", files={"image": ("q", upload)}, data={"k": "1"}).json()
        assert hits["results"][0]["id"] == added["id"] and hits["index_version"] == version
        assert client.get(added["image_url"]).status_code == 200


def test_clean_shutdown_folds_the_log_into_a_new_base(settings: Settings) -> None:
    upload = png_bytes(draw_shape("blue_triangles", np.random.default_rng(7), size=120))
    with running(settings) as client:
        added = client.post("/v1/gallery", files={"image": ("a.png", upload)}, data={"label": "late"})
        assert added.status_code == 201, added.text
        version = added.json()["index_version"]
    gallery = GalleryIndex.open(settings.index)
    try:
        # The lifespan's shutdown compacted: the change is in the base, nothing is left to replay.
        assert (gallery.version, gallery.base_version, gallery.pending) == (version, version, 0)
        assert gallery.get(added.json()["id"]) is not None
    finally:
        gallery.close()
