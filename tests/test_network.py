from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from model.core.backbones import build_backbone
from model.core.network import EmbeddingHead, ModelConfig, SiameseNetwork
from model.core.presets import EvalPreset


def test_embed_gives_unit_vectors_and_forward_embeds_pairs(tiny_model: SiameseNetwork) -> None:
    x1, x2 = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    e = tiny_model.embed(x1)
    assert e.shape == (3, 16)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    a, b = tiny_model(x1, x2)
    assert torch.allclose(a, e, atol=1e-6) and torch.allclose(b, tiny_model.embed(x2), atol=1e-6)


def test_the_encoder_is_shared_so_an_image_embeds_alike_on_either_side(tiny_model: SiameseNetwork) -> None:
    x = torch.randn(2, 3, 64, 64)
    a, b = tiny_model(x, x.clone())
    assert torch.equal(a, b)


def test_residual_head_starts_as_the_pca_projection() -> None:
    torch.manual_seed(0)
    features = torch.randn(200, 12) @ torch.randn(12, 12)
    head = EmbeddingHead(12, 4, ModelConfig(head="residual", embedding_dim=4, hidden_dim=8))
    head.fit_pca(features)
    centred = (features - features.mean(0)).numpy()
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:4].T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = head(features).detach().numpy()
    # Principal directions are defined up to sign: compare each coordinate's absolute value.
    assert np.allclose(np.abs(got), np.abs(expected), atol=1e-4)


def test_anchored_head_keeps_the_frozen_anchor_and_bounds_the_learnt_half() -> None:
    torch.manual_seed(0)
    features = torch.randn(100, 12)
    classifier = torch.nn.Linear(12, 20)
    config = ModelConfig(embedding_dim=8, learned_dim=3, hidden_dim=16, learned_weight=0.3, class_weight=0.5)
    head = EmbeddingHead(12, 8, config, classifier=classifier)
    head.fit_pca(features)
    learnt = head(features)  # training mode: the learnt half alone, which the loss trains
    assert learnt.shape == (100, 3) and torch.allclose(learnt.norm(dim=1), torch.ones(100), atol=1e-5)
    e = head.eval()(features)
    assert e.shape == (100, 8) and torch.allclose(e.norm(dim=1), torch.ones(100), atol=1e-5)
    # The anchor, computed by hand: unit centred features beside sqrt class probabilities, projected on the
    # principal directions of one prototype per class (its unit weight row beside its one-hot probabilities).
    unit = F.normalize(features - features.mean(0), dim=-1)
    probs = F.normalize(classifier(features).softmax(-1).sqrt(), dim=-1)
    raw = torch.cat([unit * 0.5**0.5, probs * 0.5**0.5], dim=1)
    prototypes = torch.cat([F.normalize(classifier.weight, dim=-1) * 0.5**0.5, torch.eye(20) * 0.5**0.5], dim=1)
    mean = prototypes.mean(0)
    _, _, vt = torch.linalg.svd(prototypes - mean, full_matrices=False)
    expected = F.normalize((raw - mean) @ vt[:5].T, dim=-1)
    assert torch.allclose(e[:, :5].abs(), (expected * 0.7**0.5).abs(), atol=1e-4)  # PCA signs are arbitrary
    assert not head.project.weight.requires_grad and not classifier.weight.requires_grad
    # Whatever the learnt half does, a cosine similarity moves by at most learned_weight from the anchor's.
    anchor = e[:, :5] / 0.7**0.5
    assert torch.all((e @ e.T - 0.7 * anchor @ anchor.T).abs() <= 0.3 + 1e-5)


def test_bad_model_options_fail_clearly() -> None:
    with pytest.raises(ValueError, match="Only anchored, residual, mlp"):
        ModelConfig(head="transformer")
    with pytest.raises(ValueError, match="learned_dim"):
        ModelConfig(embedding_dim=16, learned_dim=16)
    with pytest.raises(ValueError, match="Only efficientnet-lite0"):
        build_backbone("vgg99")


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_pretrained_efficientnet_weights_are_really_loaded(name: str) -> None:
    """The ImageNet head of each shipped Lite model must recognise a real cat photo (scikit-image's chelsea) at
    its native size, and it is surer of it with the [-1, 1] input its weights were trained on."""
    skimage_data = pytest.importorskip("skimage.data")
    size = ModelConfig(backbone=name).image_size
    assert size == {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}[name]
    x = EvalPreset(size)(Image.fromarray(skimage_data.chelsea()))[None]
    cats = list(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
    cat_share = {}
    for norm in ("native", "imagenet"):
        backbone = build_backbone(name, pretrained=True, input_norm=norm).eval()
        with torch.no_grad():
            probs = backbone.classify(backbone(x)).softmax(-1)[0]
        assert set(cats) & set(probs.topk(5).indices.tolist()), (norm, probs.topk(5))
        cat_share[norm] = float(probs[cats].sum())
    assert cat_share["native"] > cat_share["imagenet"], cat_share
    random = build_backbone(name, pretrained=False).eval()
    with torch.no_grad():
        assert not torch.allclose(random(x), backbone(x))


def test_native_input_norm_is_the_minus_one_to_one_scaling() -> None:
    """``native`` on ImageNet-normalised input equals the unmodified network on pixels scaled to [-1, 1]."""
    native = build_backbone("efficientnet-lite0", pretrained=False, input_norm="native").eval()
    plain = build_backbone("efficientnet-lite0", pretrained=False, input_norm="imagenet").eval()
    plain.load_state_dict(native.state_dict())
    pixels = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        got = native((pixels - mean) / std)
        expected = plain((pixels - 0.5) / 0.5)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert native.state_dict().keys() == plain.state_dict().keys()  # the scaling is not a weight
    with pytest.raises(ValueError, match="Only native, imagenet"):
        ModelConfig(input_norm="caffe")


def test_resnet_weights_fail_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import models

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(models.ResNet18_Weights.IMAGENET1K_V1, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="--backbone efficientnet-lite0"):
        build_backbone("resnet18", pretrained=True)
    random = build_backbone("resnet18", pretrained=False)  # random init needs no download
    assert random(torch.randn(1, 3, 64, 64)).shape == (1, 512)
