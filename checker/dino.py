"""dino_score: DINOv2 ViT-B/14 ``pooler_output`` (layer-normed CLS), cosine of generated vs references.

Preprocess = facebook/dinov2-base's BitImageProcessor (PIL path): shortest edge 256 bicubic,
centre crop 224, ImageNet mean/std. Per image: mean over references of cos(g, r); per style:
mean over generated images.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from checker.data import StyleData
from checker.errors import CheckerError
from checker.images import normalize_chw, resize_shortest_center_crop
from checker.metric import Backbones, Metric, Run, StyleScore
from checker.weights import seeded

__all__ = ["METRIC", "IMAGENET_MEAN", "IMAGENET_STD", "dino_input", "cosine_matrix", "build_dino", "DinoEmbedder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dino_input(rgb: np.ndarray) -> np.ndarray:
    """(3, 224, 224) float32, exactly BitImageProcessor(shortest_edge=256, crop 224) on PIL."""
    return normalize_chw(resize_shortest_center_crop(rgb, 256, 224), IMAGENET_MEAN, IMAGENET_STD)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """cos(a_i, b_j) = a_i . b_j / max(|a_i| |b_j|, eps), as F.cosine_similarity."""
    a, b = a.double(), b.double()
    norms = (a.norm(dim=1, keepdim=True) * b.norm(dim=1)[None, :]).clamp_min(eps)
    return (a @ b.t()) / norms


def build_dino(path: Path | None, seed: int = 0) -> torch.nn.Module:
    """transformers Dinov2Model from a local HF folder (None: random facebook/dinov2-base architecture)."""
    from transformers import Dinov2Config, Dinov2Model

    if path is None:
        with seeded(seed):
            return Dinov2Model(Dinov2Config()).eval().requires_grad_(False)
    if not (path / "config.json").is_file():
        raise CheckerError(f"{path}: expected the facebook/dinov2-base folder with config.json and model.safetensors")
    try:
        model = Dinov2Model.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckerError(f"{path}: cannot load DINOv2 ({type(exc).__name__}: {str(exc)[:200]})") from None
    if model.config.hidden_size != 768 or model.config.patch_size != 14:
        raise CheckerError(f"{path}: this is not DINOv2 ViT-B/14 (hidden {model.config.hidden_size}); use dinov2-base")
    return model.eval().requires_grad_(False)


class DinoEmbedder:
    """Batched ``pooler_output`` of a Dinov2Model on one device."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int) -> None:
        self.model, self.device, self.batch_size = model.to(device), device, batch_size

    @torch.no_grad()
    def __call__(self, rgbs: list[np.ndarray]) -> torch.Tensor:
        out = []
        for i in range(0, len(rgbs), self.batch_size):
            x = torch.from_numpy(np.stack([dino_input(r) for r in rgbs[i : i + self.batch_size]]))
            out.append(self.model(pixel_values=x.to(self.device)).pooler_output.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 768)


def _build(paths: Mapping[str, Path | None], seed: int) -> dict[str, torch.nn.Module]:
    return {"dino": build_dino(paths["dino"], seed)}


def _start(bb: Backbones, run: Run) -> DinoEmbedder:
    return DinoEmbedder(bb.dino, run.device, run.cfg.batch_size)


def score_style(embed: DinoEmbedder, sd: StyleData, run: Run) -> StyleScore:
    """Style score = mean over g of mean over r of cos(g, r); per image the mean over r."""
    if not sd.usable:
        return StyleScore()
    cos = cosine_matrix(embed([g.rgb for g in sd.gens]), embed([r.rgb for r in sd.refs]))
    return StyleScore(float(cos.mean()), images={"dino": cos.mean(1).tolist()})


METRIC = Metric("dino", "dino_score", True, "DINOv2 ViT-B/14 CLS cosine, generated vs references",
                score_style=score_style, weights=("dino",), build=_build, start=_start)
