"""On Milvus the API processes hold no gallery state: two services on one gallery (Milvus Lite here) see each
other's changes at once, with no refresh, and either may write."""

from __future__ import annotations

import numpy as np
import pytest

from app.settings import Settings
from tests.app.conftest import png_bytes, running
from tests.conftest import draw_shape


@pytest.mark.parametrize("gallery_backend", ["milvus-lite"], indirect=True)
def test_two_replicas_on_one_milvus_gallery_see_each_others_writes(settings: Settings) -> None:
    upload = png_bytes(draw_shape("red_circles", np.random.default_rng(5), size=120))
    with running(settings) as one, running(settings) as two:
        added = one.post("/v1/gallery", files={"image": ("a.png", upload)}, data={"label": "from_one"})
        assert added.status_code == 201, added.text
        item = added.json()
        seen = two.get(f"/v1/gallery/{item['id']}")
        assert seen.status_code == 200 and seen.json()["label"] == "from_one"
        hits = two.post("/v1/search", files={"image": ("q.png", upload)}, data={"k": "1"}).json()
        assert hits["results"][0]["id"] == item["id"] and hits["index_version"] == item["index_version"]
        assert two.get(item["image_url"]).status_code == 200  # the upload is in the shared media folder
        again = two.post("/v1/gallery", files={"image": ("b.png", upload)}, data={"label": "from_one"})
        assert (again.status_code, again.json()["id"]) == (200, item["id"])  # de-duplicated across replicas
        relabelled = two.patch(f"/v1/gallery/{item['id']}", json={"label": "from_two"})
        assert relabelled.status_code == 200, relabelled.text
        assert one.get(f"/v1/gallery/{item['id']}").json()["label"] == "from_two"
        gone = one.delete(f"/v1/gallery/{item['id']}")
        assert gone.json()["index_version"] == relabelled.json()["index_version"] + 1
        assert two.get(f"/v1/gallery/{item['id']}").status_code == 404
        assert one.get("/v1/gallery").json()["total"] == two.get("/v1/gallery").json()["total"] == 48
