"""clip_iqa_score: torchmetrics ``CLIPImageQualityAssessment(prompts=("quality",))``.

CLIP RN50 as piq builds it (``piq.feature_extractors.clip.build_model``), image tower run with
``pos_embedding=False`` at the image's own resolution; anchors "Good photo." / "Bad photo.";
p = softmax(100 * cos(image, anchors))[good]. Mean per style, then over styles.

Official quirk: images were fed as ToTensor()*255 with data_range=1.0, i.e. [0, 255] values
normalised with CLIP's [0, 1] mean/std (``input_scale=255``). Fixed mode feeds [0, 1]
(``input_scale=1``). The original also returned hist_score under this key (not reproduced:
the leaderboard used the real value).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from checker.clip_r import CLIP_MEAN, CLIP_STD
from checker.data import StyleData
from checker.errors import CheckerError
from checker.images import to_unit_chw
from checker.metric import Backbones, Metric, Run, StyleScore
from checker.weights import load_state_dict_file, seeded

__all__ = [
    "METRIC",
    "ANCHOR_TOKENS",
    "CONTEXT_LENGTH",
    "anchor_token_ids",
    "quality_probability",
    "build_clip_rn50",
    "ClipIqa",
]

# CLIP BPE ids of "Good photo." and "Bad photo." with <|startoftext|> / <|endoftext|> (checked in tests)
ANCHOR_TOKENS = ((49406, 886, 1125, 269, 49407), (49406, 2103, 1125, 269, 49407))
CONTEXT_LENGTH = 77
_MAX_PIXELS_PER_BATCH = 16 * 512 * 512  # full-resolution input: bound the batch by pixels, not images


def anchor_token_ids() -> torch.Tensor:
    """(2, 77) long: the anchor tokens zero-padded as torchmetrics builds them."""
    ids = torch.zeros(len(ANCHOR_TOKENS), CONTEXT_LENGTH, dtype=torch.long)
    for i, toks in enumerate(ANCHOR_TOKENS):
        ids[i, : len(toks)] = torch.tensor(toks)
    return ids


def quality_probability(img_feats: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """p_good = softmax(100 * [cos(f, good), cos(f, bad)])[0] for unit-norm features/anchors."""
    logits = 100 * img_feats @ anchors.t()
    return logits.reshape(logits.shape[0], -1, 2).softmax(-1)[:, 0, 0]


def build_clip_rn50(path: Path | None, seed: int = 0) -> torch.nn.Module:
    """piq's CLIP RN50 from OpenAI's RN50.pt or its state dict (None: random RN50 architecture).

    Both paths go through ``piq...clip.build_model`` (fp16 weight rounding, then ``.float()``),
    exactly as ``piq.clip_iqa.clip.load()`` does after its download.
    """
    from piq.feature_extractors import clip as piq_clip

    if path is None:
        with seeded(seed):
            sd = piq_clip.CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12).state_dict()
    else:
        sd = load_state_dict_file(path, "CLIP RN50 weights")
        if "visual.attnpool.positional_embedding" not in sd or "visual.proj" in sd:
            raise CheckerError(f"{path}: not a CLIP RN50 checkpoint (expected OpenAI's RN50.pt)")
    try:
        model = piq_clip.build_model(sd)
    except (KeyError, RuntimeError, AssertionError) as exc:
        raise CheckerError(f"{path}: CLIP RN50 weights do not fit ({str(exc)[:200]})") from None
    return model.float().eval().requires_grad_(False)


class ClipIqa:
    """Anchors computed once; images grouped by size (full resolution) and batched."""

    def __init__(self, model: torch.nn.Module, device: torch.device, input_scale: float) -> None:
        # channels_last: ~25% faster convolutions at 512 px on CPU, same fp32 arithmetic up to summation order
        self.model = model.to(device=device, memory_format=torch.channels_last)
        self.device, self.input_scale = device, input_scale
        self.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        with torch.no_grad():
            anchors = model.encode_text(anchor_token_ids().to(device)).float()
        self.anchors = anchors / anchors.norm(p=2, dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, rgbs: list[np.ndarray]) -> torch.Tensor:
        """p_good per image, in input order."""
        probs = torch.zeros(len(rgbs))
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(rgbs):
            by_size.setdefault(r.shape, []).append(i)
        for shape, idx in by_size.items():
            step = max(1, _MAX_PIXELS_PER_BATCH // (shape[0] * shape[1]))
            for s in range(0, len(idx), step):
                chunk = idx[s : s + step]
                x = torch.from_numpy(np.stack([to_unit_chw(rgbs[i]) for i in chunk])).to(self.device)
                x = x * self.input_scale / 1.0  # official: ToTensor()*255, then / data_range (1.0)
                x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
                feats = self.model.encode_image(x, pos_embedding=False).float()
                feats = feats / feats.norm(p=2, dim=-1, keepdim=True)
                probs[chunk] = quality_probability(feats, self.anchors).cpu()
        return probs


def _build(paths: Mapping[str, Path | None], seed: int) -> dict[str, torch.nn.Module]:
    return {"clip_rn50": build_clip_rn50(paths["clip_rn50"], seed)}


def _start(bb: Backbones, run: Run) -> ClipIqa:
    return ClipIqa(bb.clip_rn50, run.device, run.cfg.clip_iqa_input_scale)


def score_style(iqa: ClipIqa, sd: StyleData, run: Run) -> StyleScore:
    """Style score = mean p_good of the generated images (no references needed)."""
    if not sd.gens:
        return StyleScore()
    p = iqa([g.rgb for g in sd.gens])
    return StyleScore(float(p.double().mean()), images={"clip_iqa": p.tolist()})


METRIC = Metric("clip_iqa", "clip_iqa_score", True, "CLIP-IQA RN50, 'Good photo.' vs 'Bad photo.'",
                score_style=score_style, weights=("clip_rn50",), build=_build, start=_start)
