"""clip_r_score: CLIP ViT-L/14 R-precision@5 of each generated image against the prompt words.

score_api.py ``get_clip_r_score``: for an image with file stem ``Own``: own = "own"
(lower-cased), candidates = ``list(set(prompts + [own]))`` as raw words (no template), prompts =
the distributed clip_r_prompts.txt (checker/data.py ``candidate_prompts``),
``CLIPProcessor(padding=True)``. Hit if own is among the 5 largest ``logits_per_image``.
Score = hits / images (micro average over styles); a missing prompt image counts as a miss.
Ties (identical logits) resolve in the image's favour.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from checker.data import StyleData, candidate_prompts, list_images
from checker.errors import CheckerError
from checker.images import normalize_chw, resize_shortest_center_crop
from checker.metric import Aggregate, Backbones, Metric, Run, StyleScore
from checker.weights import package_file, seeded

if TYPE_CHECKING:
    from checker.config import CheckerConfig

__all__ = [
    "METRIC",
    "CLIP_MEAN",
    "CLIP_STD",
    "TOP_K",
    "clip_input",
    "clip_vit_l14_config",
    "build_clip",
    "build_tokenizer",
    "rank_of",
    "ClipR",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOP_K = 5


def clip_input(rgb: np.ndarray) -> np.ndarray:
    """(3, 224, 224) float32, exactly CLIPImageProcessor (PIL): shortest edge 224 bicubic, crop 224."""
    return normalize_chw(resize_shortest_center_crop(rgb, 224, 224), CLIP_MEAN, CLIP_STD)


def clip_vit_l14_config():  # -> transformers.CLIPConfig
    """The openai/clip-vit-large-patch14 architecture (quick_gelu, 768-d projection)."""
    from transformers import CLIPConfig

    text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")
    vision = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                  patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)


def build_clip(path: Path | None, seed: int = 0) -> torch.nn.Module:
    """transformers CLIPModel from a local HF folder (None: random ViT-L/14 architecture)."""
    from transformers import CLIPModel

    if path is None:
        with seeded(seed):
            return CLIPModel(clip_vit_l14_config()).eval().requires_grad_(False)
    if not (path / "config.json").is_file():
        raise CheckerError(f"{path}: expected the openai/clip-vit-large-patch14 folder with config.json")
    try:
        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckerError(f"{path}: cannot load CLIP ({type(exc).__name__}: {str(exc)[:200]})") from None
    vc = model.config.vision_config
    if (vc.hidden_size, vc.patch_size, vc.num_hidden_layers) != (1024, 14, 24):
        raise CheckerError(f"{path}: this is not CLIP ViT-L/14; use openai/clip-vit-large-patch14")
    return model.eval().requires_grad_(False)


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's / GPT-2's reversible byte -> printable-character table
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _vocab_folder_from_bpe(gz: Path, out: Path) -> Path:
    """Write vocab.json + merges.txt (the HF CLIP files) from OpenAI's bpe_simple_vocab_16e6.txt.gz."""
    merges = gzip.open(gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    base = list(_bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out


def build_tokenizer(clip_folder: Path | None):  # -> transformers.CLIPTokenizer
    """CLIP tokenizer from the model folder, else from the BPE file in the clip-anytorch /
    open_clip wheel (random-weights runs)."""
    from transformers import CLIPTokenizer

    if clip_folder is not None:
        try:
            return CLIPTokenizer.from_pretrained(str(clip_folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckerError(f"{clip_folder}: no CLIP tokenizer files (vocab.json, merges.txt): {exc}") from None
    gz = package_file("clip", "bpe_simple_vocab_16e6.txt.gz") or package_file(
        "open_clip", "bpe_simple_vocab_16e6.txt.gz"
    )
    if gz is None:
        raise CheckerError(
            "no CLIP BPE vocabulary: pass --clip-weights (its vocab.json/merges.txt) or "
            "pip install --no-deps clip-anytorch==2.6.0 (ships bpe_simple_vocab_16e6.txt.gz)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(str(_vocab_folder_from_bpe(gz, Path(tmp))), model_max_length=77)


def rank_of(logits: torch.Tensor, own: int, candidates: torch.Tensor) -> int:
    """Number of candidates whose logit is strictly above the own word's (0 = best)."""
    return int((logits[candidates] > logits[own]).sum())


class ClipR:
    """Text embeddings of all words computed once; images embedded in batches."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, batch_size: int) -> None:
        self.model, self.tokenizer, self.device, self.batch_size = model.to(device), tokenizer, device, batch_size
        self.words: list[str] = []
        self.text: torch.Tensor | None = None

    @torch.no_grad()
    def set_words(self, words: list[str]) -> None:
        """Embed (normalised) every word that can be a candidate or an own word."""
        self.words = sorted(set(words))
        feats = []
        for i in range(0, len(self.words), 64):
            tok = self.tokenizer(self.words[i : i + 64], padding=True, return_tensors="pt")
            out = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                        attention_mask=tok["attention_mask"].to(self.device))
            feats.append(self.model.text_projection(out.pooler_output).float())
        text = torch.cat(feats)
        self.text = text / text.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def image_logits(self, rgbs: list[np.ndarray]) -> torch.Tensor:
        """(N, len(words)) logits_per_image = exp(logit_scale) * cos(image, word)."""
        out = []
        for i in range(0, len(rgbs), self.batch_size):
            x = torch.from_numpy(np.stack([clip_input(r) for r in rgbs[i : i + self.batch_size]])).to(self.device)
            img = self.model.visual_projection(self.model.vision_model(pixel_values=x).pooler_output).float()
            img = img / img.norm(dim=-1, keepdim=True)
            out.append((self.model.logit_scale.exp().float() * img @ self.text.t()).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.words))

    def ranks_from_logits(self, logits: torch.Tensor, owns: list[str], prompts: list[str]) -> list[int]:
        """Rank of each row's own word among set(prompts + [own])."""
        index = {w: i for i, w in enumerate(self.words)}
        base = {index[p] for p in prompts}
        return [rank_of(row, index[own], torch.tensor(sorted(base | {index[own]}))) for row, own in zip(logits, owns)]

    def ranks(self, rgbs: list[np.ndarray], owns: list[str], prompts: list[str]) -> list[int]:
        """Rank (0 = best) of each image's own word among set(prompts + [own])."""
        return self.ranks_from_logits(self.image_logits(rgbs), owns, prompts)


def _build(paths: Mapping[str, Path | None], seed: int) -> dict[str, object]:
    return {"clip": build_clip(paths["clip"], seed), "clip_tokenizer": build_tokenizer(paths["clip"])}


def _check(cfg: CheckerConfig) -> None:
    candidate_prompts(cfg.data, cfg.clip_r_prompts)


def _submission_stems(submission: Path, styles: Sequence[str]) -> set[str]:
    stems: set[str] = set()
    for s in styles:
        if (submission / s).is_dir():
            stems |= {p.stem.lower() for p in list_images(submission / s)[0]}
    return stems


def _start(bb: Backbones, run: Run) -> tuple[ClipR, list[str]]:
    """The candidate words, and the text embeddings of every candidate and own word, once per run."""
    prompts = candidate_prompts(run.cfg.data, run.cfg.clip_r_prompts)
    clip_r = ClipR(bb.clip, bb.clip_tokenizer, run.device, run.cfg.batch_size)
    clip_r.set_words(prompts + sorted(_submission_stems(run.cfg.submission, run.styles)))
    return clip_r, prompts


def score_style(state: tuple[ClipR, list[str]], sd: StyleData, run: Run) -> StyleScore:
    """Hits / (images + missing prompts) of the style; per image the own word's rank and hit."""
    clip_r, prompts = state
    gens = [g.rgb for g in sd.gens]
    ranks = clip_r.ranks(gens, [g.path.stem.lower() for g in sd.gens], prompts) if gens else []
    hits, total = sum(r < TOP_K for r in ranks), len(ranks) + len(sd.missing)
    return StyleScore(hits / total if total else None,
                      images={"clip_r_rank": ranks, "clip_r_hit": [r < TOP_K for r in ranks]},
                      extra={"clip_r_hits": hits, "clip_r_total": total})


def aggregate(scores: Sequence[StyleScore], run: Run) -> Aggregate:
    """Micro average: all hits / all images (a missing prompt counts as a miss)."""
    total = sum(s.extra["clip_r_total"] for s in scores)
    return (sum(s.extra["clip_r_hits"] for s in scores) / total if total else None), ()


METRIC = Metric("clip_r", "clip_r_score", True, "CLIP ViT-L/14 R-precision, own prompt in the top 5",
                score_style=score_style, weights=("clip",), build=_build, start=_start, aggregate=aggregate,
                check=_check)
