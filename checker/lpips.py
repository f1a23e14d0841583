"""lpip_score: LPIPS v0.1 with the SqueezeNet1_1 backbone (torchmetrics ``net_type='squeeze'``).

Input: PIL bilinear resize to 256x256 (torchvision ``Resize((256, 256))``), ToTensor, x*2-1.
Distance of a pair = sum over the 7 layers of spatial_mean(lin_l((f0_hat - f1_hat)^2)),
f_hat = f / sqrt(1e-8 + sum_c f^2). Features are computed once per image; all (gen, ref)
pairs of a style are then formed from them (same numbers as calling torchmetrics per pair).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from checker.data import StyleData
from checker.errors import CheckerError
from checker.images import to_unit_chw
from checker.metric import Backbones, Metric, Run, StyleScore
from checker.weights import load_state_dict_file, package_file, seeded

__all__ = [
    "METRIC",
    "LPIPS_SIZE",
    "LpipsSqueeze",
    "lpips_input",
    "normalize_channels",
    "layer_features",
    "pair_distances",
    "build_lpips",
]

LPIPS_SIZE = 256
_CHANNELS = (64, 128, 256, 384, 384, 512, 512)
_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13))  # squeezenet1_1.features
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def lpips_input(rgb: np.ndarray) -> np.ndarray:
    """(3, 256, 256) float32 in [-1, 1]: PIL bilinear resize, ToTensor, x*2-1."""
    small = np.asarray(Image.fromarray(rgb).resize((LPIPS_SIZE, LPIPS_SIZE), Image.BILINEAR))
    return to_unit_chw(small) * 2 - 1


def normalize_channels(f: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """f / sqrt(eps + sum_c f^2) (torchmetrics' LPIPS normalisation)."""
    return f / torch.sqrt(eps + torch.sum(f**2, dim=1, keepdim=True))


class LpipsSqueeze(nn.Module):
    """SqueezeNet1_1 feature slices + LPIPS linear heads; ``features`` keeps torchvision's keys."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import squeezenet1_1

        self.features = squeezenet1_1(weights=None).features
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised outputs of the 7 slices for a batch in [-1, 1]."""
        x = (x - self.shift) / self.scale
        outs = []
        for start, stop in _SLICES:
            for i in range(start, stop):
                x = self.features[i](x)
            outs.append(normalize_channels(x))
        return outs

    @torch.no_grad()
    def distance(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS between broadcastable feature batches: sum_l mean_hw(lin_l((fa - fb)^2))."""
        total = 0
        for lin, a, b in zip(self.lins, fa, fb):
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))[:, 0]
        return total


def layer_features(net: LpipsSqueeze, rgbs: list[np.ndarray], device: torch.device,
                   batch_size: int) -> list[torch.Tensor]:
    """The 7 layer features of every image, each layer concatenated over batches."""
    chunks = [net.layer_features(torch.from_numpy(np.stack([lpips_input(x) for x in rgbs[i : i + batch_size]]))
                                 .to(device)) for i in range(0, len(rgbs), batch_size)]
    return [torch.cat(layer) for layer in zip(*chunks)]


def pair_distances(net: LpipsSqueeze, gen: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
    """(G, R) matrix of LPIPS distances from precomputed per-image layer features."""
    n_gen, n_ref = gen[0].shape[0], ref[0].shape[0]
    rows = []
    for i in range(n_gen):
        fa = [g[i : i + 1].expand(n_ref, -1, -1, -1) for g in gen]
        rows.append(net.distance(fa, ref))
    return torch.stack(rows) if rows else torch.zeros(0, n_ref)


def _default_heads() -> Path:
    for pkg, parts in (("torchmetrics", ("functional", "image", "lpips_models", "squeeze.pth")),
                       ("lpips", ("weights", "v0.1", "squeeze.pth"))):
        path = package_file(pkg, *parts)
        if path is not None:
            return path
    raise CheckerError(
        "LPIPS squeeze heads not found: install torchmetrics (it ships lpips_models/squeeze.pth) "
        "or pass --lpips-heads PATH"
    )


def build_lpips(backbone: Path | None, heads: Path | None, seed: int = 0) -> LpipsSqueeze:
    """LPIPS-squeeze from a torchvision squeezenet1_1 state dict (None: random backbone) and
    the v0.1 linear heads (None: the copy shipped in the torchmetrics / lpips wheel)."""
    with seeded(seed):
        net = LpipsSqueeze()
    if backbone is not None:
        sd = load_state_dict_file(backbone, "squeezenet1_1 weights")
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        try:
            net.features.load_state_dict(sd)
        except RuntimeError as exc:
            raise CheckerError(f"{backbone}: not a torchvision squeezenet1_1 state dict ({str(exc)[:200]})") from None
    heads = heads or _default_heads()
    hsd = load_state_dict_file(heads, "LPIPS heads")
    try:
        for i, lin in enumerate(net.lins):
            lin.weight.data.copy_(hsd[f"lin{i}.model.1.weight"])
    except (KeyError, RuntimeError) as exc:
        raise CheckerError(f"{heads}: not LPIPS v0.1 squeeze heads (lin0..lin6.model.1.weight): {exc}") from None
    return net.eval().requires_grad_(False)


def _build(paths: Mapping[str, Path | None], seed: int) -> dict[str, LpipsSqueeze]:
    return {"lpips": build_lpips(paths["squeezenet"], paths["lpips_heads"], seed)}


def _start(bb: Backbones, run: Run) -> LpipsSqueeze:
    return bb.lpips.to(run.device)


def score_style(net: LpipsSqueeze, sd: StyleData, run: Run) -> StyleScore:
    """Style score = mean over all (g, r) pairs; per image the mean over r."""
    if not sd.usable:
        return StyleScore()
    dev, bs = run.device, run.cfg.batch_size
    d = pair_distances(net, layer_features(net, [g.rgb for g in sd.gens], dev, bs),
                       layer_features(net, [r.rgb for r in sd.refs], dev, bs)).cpu()
    return StyleScore(float(d.double().mean()), images={"lpips": d.mean(1).tolist()})


METRIC = Metric("lpips", "lpip_score", False, "LPIPS v0.1 SqueezeNet, all (gen, ref) pairs",
                score_style=score_style, weights=("squeezenet", "lpips_heads"), build=_build, start=_start)
