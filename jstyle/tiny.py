"""Write a tiny random Stable Diffusion pipeline in the diffusers folder format (no torch needed).

Used by the demo and the tests: the same code path as a real model (configs, safetensors,
tokenizer files), small enough to run on a 2-core CPU in seconds.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from .cli import run_cli
from .errors import ConfigError, JStyleError
from .io import atomic_path
from .tokenizer import END_OF_WORD, bytes_to_unicode, merge_pair, normalize, pre_tokenize

__all__ = ["TINY_CONFIGS", "write_tiny_pipeline", "write_toy_vocab"]

_SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
}
_VAE = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 32, "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
    "sample_size": 64, "scaling_factor": 0.18215,
}
_UNET = {
    "_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "sample_size": 8,
    "block_out_channels": [32, 64], "layers_per_block": 2, "norm_num_groups": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
# Two flavours, as the real families differ: SD1 (epsilon, conv projections, quick_gelu) and
# SD2 (v-prediction, linear projections, per-block head counts, gelu, "!" padding).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "sd1": {
        "unet": {**_UNET, "attention_head_dim": 8, "cross_attention_dim": 32, "use_linear_projection": False},
        "text": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                 "num_hidden_layers": 3, "hidden_act": "quick_gelu"},
        "prediction_type": "epsilon", "pad_token": "<|endoftext|>",
    },
    "sd2": {
        "unet": {**_UNET, "attention_head_dim": [2, 4], "cross_attention_dim": 48,
                 "use_linear_projection": True, "upcast_attention": True},
        "text": {"hidden_size": 48, "intermediate_size": 61, "num_attention_heads": 4,
                 "num_hidden_layers": 3, "hidden_act": "gelu"},
        "prediction_type": "v_prediction", "pad_token": "!",
    },
}
_TOY_WORDS = (
    "a an the of in on with and style image painting photo picture drawing art dolphin bread lion "
    "cat dog house tree flower car boat bird horse mountain river city portrait landscape colorful "
    "monet van gogh watercolor oil sketch ink cartoon anime pixel"
).split()



def write_toy_vocab(
    directory: str | Path, words: Iterable[str], num_merges: int = 86, pad_token: str = "<|endoftext|>"
) -> int:
    """Write a tiny CLIP-style tokenizer folder learned from `words`; returns the vocabulary size.

    Vocabulary: the 256 byte characters, the same with '</w>', `num_merges` BPE merges learned from
    the lower-cased words (most frequent pair first, ties broken by the pair itself), then
    `<|startoftext|>` and `<|endoftext|>` as the last two ids. transformers' CLIPTokenizer loads it.
    """
    d = Path(directory)
    table = bytes_to_unicode()
    base = list(table.values())
    vocab = base + [c + END_OF_WORD for c in base]
    counts = Counter(w for word in words for w in pre_tokenize(normalize(word)))
    segmented = {w: list(w[:-1]) + [w[-1] + END_OF_WORD] for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, symbols in segmented.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, symbols in segmented.items():
            segmented[w] = merge_pair(symbols, best)
        if "".join(best) not in vocab:
            vocab.append("".join(best))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if pad_token not in vocab:
        raise ConfigError(f"toy vocabulary: pad token {pad_token!r} is not a vocabulary token")
    d.mkdir(parents=True, exist_ok=True)
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    (d / "vocab.json").write_text(vocab_json, encoding="utf-8")
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (d / "merges.txt").write_text(merges_txt, encoding="utf-8")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": pad_token}
    (d / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **specials}
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return len(vocab)


def _random_state(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible random weights: fan-in scaled matrices, norms near 1, small biases."""
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            scale = 0.02 if "embedding" in name else 1.0 / np.sqrt(fan_in)
            arr = rng.standard_normal(shape) * scale
        elif "norm" in name and name.endswith("weight"):
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            arr = 0.02 * rng.standard_normal(shape)
        out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


def _write_component(cls, config: dict[str, Any], folder: Path, filename: str, rng) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model = cls.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    save_file(_random_state(shapes, rng), str(folder / filename))


def write_tiny_pipeline(path: str | Path, kind: str = "sd2", seed: int = 0) -> Path:
    """Write a random tiny `kind` ('sd1' or 'sd2') pipeline to `path` (atomically) and return it."""
    from .models.autoencoder_kl import AutoencoderKL
    from .models.clip_text import CLIPTextModel
    from .models.unet_2d_condition import UNet2DConditionModel

    if kind not in TINY_CONFIGS:
        raise JStyleError(f"unknown tiny model kind '{kind}'; use one of {', '.join(TINY_CONFIGS)}")
    cfg = TINY_CONFIGS[kind]
    path = Path(path)
    with atomic_path(path, directory=True) as tmp:
        rng = np.random.default_rng(seed)
        vocab_size = write_toy_vocab(tmp / "tokenizer", _TOY_WORDS, pad_token=cfg["pad_token"])
        text = {
            "_class_name": "CLIPTextModel", "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
            "vocab_size": vocab_size, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
            "bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": 1,
            "projection_dim": cfg["text"]["hidden_size"], **cfg["text"],
        }
        text.pop("_class_name")
        _write_component(CLIPTextModel, text, tmp / "text_encoder", "model.safetensors", rng)
        _write_component(UNet2DConditionModel, cfg["unet"], tmp / "unet", "diffusion_pytorch_model.safetensors", rng)
        _write_component(AutoencoderKL, _VAE, tmp / "vae", "diffusion_pytorch_model.safetensors", rng)
        (tmp / "scheduler").mkdir()
        scheduler = {**_SCHEDULER, "prediction_type": cfg["prediction_type"]}
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        index = {
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "requires_safety_checker": False, "feature_extractor": [None, None], "safety_checker": [None, None],
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jstyle.tiny", description="Write a tiny random Stable Diffusion folder (diffusers format)."
    )
    parser.add_argument("out", type=Path, help="folder to write (replaced if it exists)")
    parser.add_argument("--kind", choices=sorted(TINY_CONFIGS), default="sd2")
    parser.add_argument("--seed", type=int, default=0)
    return run_cli(parser, lambda args: print(write_tiny_pipeline(args.out, args.kind, args.seed)) or 0, argv)

if __name__ == "__main__":
    raise SystemExit(main())
