"""fid_score: FID on 64-d Inception-v3 features (torchmetrics ``FrechetInceptionDistance(feature=64)``).

Feature 64 = global average of the output of the first max-pool, so only the stem of
torch-fidelity's Inception-v3 (Conv2d_1a/2a/2b + MaxPool_1) is built; its keys match the full
checkpoint. Input: uint8 RGB at any size, TF1-style bilinear resize to 299x299, (x - 128) / 128.
Statistics in float64, unbiased covariance; distance via eigenvalues as torchmetrics does.
Aggregation over styles (``--fid-mode``): ``pooled`` = the distributed ``fid_api.py``
``fid_score_api``: ONE FID with the references of every style as real and every generated image
as fake; ``last-style`` = the unused ``fid_api_old.py`` (its extends sit after the loop, so only
the last style counts); ``per-style-mean`` = the mean of per-style FIDs (jstyle's own rule).
The original stacks each list with ``torch.stack`` (same size only); jstyle resizes each image
to 299x299 on its own when sizes differ, which gives the features a stack of equal sizes would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from checker.data import Problem, StyleData
from checker.errors import CheckerError
from checker.metric import Aggregate, Backbones, Metric, Run, StyleScore
from checker.score import aggregate_fid
from checker.weights import load_state_dict_file, seeded

__all__ = [
    "METRIC",
    "INCEPTION_SIZE",
    "InceptionStem64",
    "resize_bilinear_tf1",
    "gaussian_stats",
    "frechet_distance",
    "uint8_batch",
    "build_inception",
    "inception_features",
    "fid_from_features",
    "pooled_fid",
    "mixed_size_problem",
]

INCEPTION_SIZE = 299


class _BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear(align_corners=False)``: src = dst * in/out, no half-pixel offset
    (torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``, 'slow' method)."""
    _, _, h, w = x.shape

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.float()

    y_lo, y_hi, dy = axis(h)
    x_lo, x_hi, dx = axis(w)
    top, bottom = x[:, :, y_lo, :], x[:, :, y_hi, :]
    t0, t1 = top[:, :, :, x_lo], top[:, :, :, x_hi]
    b0, b1 = bottom[:, :, :, x_lo], bottom[:, :, :, x_hi]
    dx, dy = dx.view(1, 1, 1, size), dy.view(1, 1, size, 1)
    upper, lower = t0 + (t1 - t0) * dx, b0 + (b1 - b0) * dx
    return upper + (lower - upper) * dy


class InceptionStem64(nn.Module):
    """torch-fidelity FeatureExtractorInceptionV3 up to feature '64' (same parameter names)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)

    @torch.no_grad()
    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, 64) float32."""
        x = resize_bilinear_tf1(x_uint8.float(), INCEPTION_SIZE)
        x = (x - 128) / 128
        x = self.MaxPool_1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        return x.mean(dim=(2, 3))


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) in float64; sigma = (sum x x^T - n mu mu^T) / (n - 1), as torchmetrics."""
    f = feats.double()
    n = f.shape[0]
    mu = f.sum(0) / n
    sigma = (f.t() @ f - n * torch.outer(mu, mu)) / (n - 1)
    return mu, sigma


def frechet_distance(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 * sum(sqrt(eigvals(s1 @ s2)))."""
    a = (mu1 - mu2).square().sum()
    b = s1.trace() + s2.trace()
    c = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    return float(a + b - 2 * c)


def uint8_batch(rgbs: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack same-size RGB uint8 arrays into (N, 3, H, W) uint8."""
    return torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).contiguous().to(device)


def build_inception(path: Path | None, seed: int = 0) -> InceptionStem64:
    """Inception stem from a torch-fidelity / pytorch-fid checkpoint (None: random weights)."""
    with seeded(seed):
        net = InceptionStem64()
    if path is not None:
        sd = load_state_dict_file(path, "Inception-v3 FID weights")
        own = net.state_dict()
        sub = {k: v for k, v in sd.items() if k in own}
        missing = sorted(k for k in own if k not in sub and not k.endswith("num_batches_tracked"))
        if missing:
            raise CheckerError(f"{path}: not an FID Inception-v3 state dict (missing {missing[:3]})")
        try:
            net.load_state_dict(sub, strict=False)
        except RuntimeError as exc:
            raise CheckerError(f"{path}: FID Inception-v3 weights do not fit ({str(exc)[:200]})") from None
    return net.eval().requires_grad_(False)


def inception_features(net: InceptionStem64, rgbs: list[np.ndarray], device: torch.device,
                       batch_size: int) -> torch.Tensor:
    """(N, 64) CPU features; a batch of mixed sizes goes one image at a time (same features)."""
    out = [torch.zeros(0, 64)]
    for i in range(0, len(rgbs), batch_size):
        chunk = rgbs[i : i + batch_size]
        if len({x.shape for x in chunk}) == 1:
            out.append(net(uint8_batch(chunk, device)).cpu())
        else:
            out += [net(uint8_batch([x], device)).cpu() for x in chunk]
    return torch.cat(out)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float | None:
    """FID of two feature sets; None when either has fewer than 2 rows (no covariance)."""
    if real.shape[0] < 2 or fake.shape[0] < 2:
        return None
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def pooled_fid(reals: list[torch.Tensor], fakes: list[torch.Tensor]) -> float | None:
    """fid_api.py's rule: every style's references as real, every generated image as fake."""
    cat = lambda xs: torch.cat([torch.zeros(0, 64), *xs])  # noqa: E731
    return fid_from_features(cat(reals), cat(fakes))


def mixed_size_problem(shapes: set[tuple[int, ...]]) -> list[Problem]:
    """fid_api.py torch.stacks the pooled images; a mix of sizes would crash it: say so."""
    if len(shapes) < 2:
        return []
    sizes = ", ".join(f"{s[1]}x{s[0]}" for s in sorted(shapes))
    return [Problem("fid_mixed_sizes", "fid", f"images of sizes {sizes}: the original's torch.stack would fail; "
                    "jstyle resizes each image to 299x299 on its own (the features a stack of equal sizes gives)")]


def _build(paths: Mapping[str, Path | None], seed: int) -> dict[str, InceptionStem64]:
    return {"inception": build_inception(paths["inception"], seed)}


def _start(bb: Backbones, run: Run) -> InceptionStem64:
    return bb.inception.to(run.device)


def score_style(net: InceptionStem64, sd: StyleData, run: Run) -> StyleScore:
    """Per-style FID; the features and image sizes are kept (``state``) for the pooled FID."""
    if not sd.usable:
        return StyleScore()
    dev, bs = run.device, run.cfg.batch_size
    real = inception_features(net, [r.rgb for r in sd.refs], dev, bs)
    fake = inception_features(net, [g.rgb for g in sd.gens], dev, bs)
    fid = fid_from_features(real, fake)
    problems = () if fid is not None else (
        Problem("fid_undefined", sd.name, "per-style FID needs >= 2 generated and >= 2 reference images"),)
    shapes = {x.rgb.shape for x in (*sd.refs, *sd.gens)}
    return StyleScore(fid, problems=problems, state=(real, fake, shapes))


def aggregate(scores: Sequence[StyleScore], run: Run) -> Aggregate:
    """--fid-mode: pooled (fid_api.py: one FID over every style's features), last-style or per-style-mean."""
    mode = run.cfg.effective_fid_mode
    if mode != "pooled":
        return aggregate_fid([s.value for s in scores], mode), ()
    kept = [s.state for s in scores if s.state is not None]
    shapes = set().union(*(shape for _, _, shape in kept))
    return pooled_fid([r for r, _, _ in kept], [f for _, f, _ in kept]), mixed_size_problem(shapes)


METRIC = Metric("fid", "fid_score", False, "FID on 64-d Inception pool features", score_style=score_style,
                weights=("inception",), build=_build, start=_start, aggregate=aggregate)
