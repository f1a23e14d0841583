"""LPIPS and FID against torchmetrics on the same random weights and images.

LPIPS: torchmetrics ``learned_perceptual_image_patch_similarity(net_type='squeeze')`` per pair,
its SqueezeNet loader patched to return our random backbone (the heads are the shipped ones).
FID: torchmetrics ``FrechetInceptionDistance(feature=64, antialias=False)`` (TF1 resize, as the
original) on a full random torch-fidelity Inception-v3 checkpoint. Tolerances are stated inline.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from checker.fid import frechet_distance, gaussian_stats, resize_bilinear_tf1, uint8_batch
from checker.lpips import lpips_input, pair_distances
from checker.synthetic import synthetic_image


def _images(rng: np.random.Generator, n: int, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    pal = rng.integers(0, 256, (4, 3)).astype(np.float32)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        img = synthetic_image(rng, pal, max(h, w))[:h, :w]
        out.append(np.ascontiguousarray(img))
    return out


def _our_lpips(net, gens, refs) -> torch.Tensor:
    def feats(xs):
        return net.layer_features(torch.from_numpy(np.stack([lpips_input(x) for x in xs])))

    return pair_distances(net, feats(gens), feats(refs))


def test_lpips_matches_torchmetrics(lpips_net, rng, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchmetrics.functional.image.lpips as tm_lpips

    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", lambda net, pretrained: copy.deepcopy(lpips_net.features))
    gens = _images(rng, 3, [(512, 512), (300, 200)])
    refs = _images(rng, 2, [(128, 160)])
    to_t = T.Compose([T.Resize((256, 256)), T.ToTensor()])  # the original's input pipeline

    def prep(x: np.ndarray) -> torch.Tensor:
        return (to_t(Image.fromarray(x))[:3] * 2 - 1)[None]

    ref = torch.tensor([[float(tm_lpips.learned_perceptual_image_patch_similarity(prep(g), prep(r), net_type="squeeze"))
                         for r in refs] for g in gens])
    ours = _our_lpips(lpips_net, gens, refs)
    assert ours.shape == (3, 2)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)  # float32 conv noise only
    assert ref.min() > 1e-3  # a real, non-trivial distance


def test_lpips_identical_image_is_zero(lpips_net, rng) -> None:
    img = _images(rng, 1, [(96, 96)])
    assert float(_our_lpips(lpips_net, img, img)[0, 0]) == pytest.approx(0.0, abs=1e-7)


def test_tf1_resize_matches_torch_fidelity(rng) -> None:
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.from_numpy(rng.integers(0, 256, (2, 3, 137, 211)).astype(np.float32))
    ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    torch.testing.assert_close(resize_bilinear_tf1(x, 299), ref, atol=0, rtol=0)


def _tm_fid(path, refs, gens) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=64, antialias=False, feature_extractor_weights_path=str(path))
    fid.update(torch.from_numpy(np.stack(refs)).permute(0, 3, 1, 2), real=True)
    fid.update(torch.from_numpy(np.stack(gens)).permute(0, 3, 1, 2), real=False)
    return float(fid.compute())


def _our_fid(net, refs, gens) -> float:
    feats = [net(uint8_batch(x, torch.device("cpu"))) for x in (refs, gens)]
    return frechet_distance(*gaussian_stats(feats[0]), *gaussian_stats(feats[1]))


def test_fid_matches_torchmetrics(inception, inception_file, rng) -> None:
    refs = _images(rng, 8, [(96, 96)])
    gens = _images(np.random.default_rng(99), 12, [(96, 96)])
    ref = _tm_fid(inception_file, refs, gens)
    ours = _our_fid(inception, refs, gens)
    assert ref > 1e-2
    assert ours == pytest.approx(ref, rel=1e-4)  # torchmetrics returns float32


def test_fid_features_match_torch_fidelity_extractor(inception, inception_file, rng) -> None:
    from torchmetrics.image.fid import NoTrainInceptionV3

    full = NoTrainInceptionV3("inception-v3-compat", ["64"], str(inception_file), antialias=False)
    x = uint8_batch(_images(rng, 3, [(512, 512)]), torch.device("cpu"))
    torch.testing.assert_close(inception(x), full(x), atol=1e-5, rtol=1e-5)


def test_fid_identical_sets_about_zero(inception, rng) -> None:
    imgs = _images(rng, 10, [(80, 80)])
    assert abs(_our_fid(inception, imgs, imgs)) < 1e-3
