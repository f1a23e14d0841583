"""Textual-inversion files with diffusers, the torch side (runs in the checker env, never jstyle's).

    python tests/reference/textual_inversion_ref.py make  BASE OUT      # a diffusers-made file + its outputs
    python tests/reference/textual_inversion_ref.py check BASE FILE OUT.npz   # diffusers loads a jstyle file

BASE is a tiny diffusers SD folder (tests/reference/make_tiny.py). make writes OUT/learned_embeds.safetensors
for a 2-vector token "<cat-toy>" the way diffusers' training example writes it, then loads it with
`pipe.load_textual_inversion` and saves OUT/outputs.npz: token ids and text-encoder states of PROMPTS (after
`maybe_convert_prompt`, as the pipeline does). check loads FILE the same way and saves the same outputs
for its token, plus the embedding rows diffusers put in the text encoder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

PROMPTS = ["a Circle in the style of {t}.", "{t}", "an image of a star, {t} and <unknown>"]


def load(base: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False,
                                                   dtype=torch.float32)


def outputs(pipe: StableDiffusionPipeline, token: str) -> dict[str, np.ndarray]:
    prompts = [pipe.maybe_convert_prompt(p.format(t=token), pipe.tokenizer) for p in PROMPTS]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids).last_hidden_state
    added = pipe.tokenizer.convert_tokens_to_ids(
        [t for t in pipe.tokenizer.get_added_vocab() if t == token or t.startswith(token + "_")])
    rows = pipe.text_encoder.get_input_embeddings().weight[sorted(added)].detach()
    return {"input_ids": ids.numpy(), "states": states.numpy(), "rows": rows.numpy()}


# diffusers @ v0.42.1, examples/textual_inversion/textual_inversion.py, save_progress: the learned rows
# weight[min(placeholder_token_ids) : max(placeholder_token_ids) + 1] under the placeholder token's name,
# written with safetensors.torch.save_file(..., metadata={"format": "pt"}).
def save_progress(text_encoder, placeholder_token_ids, placeholder_token: str, save_path: Path) -> None:
    learned_embeds = text_encoder.get_input_embeddings().weight[
        min(placeholder_token_ids) : max(placeholder_token_ids) + 1]
    learned_embeds_dict = {placeholder_token: learned_embeds.detach().cpu()}
    save_file(learned_embeds_dict, save_path, metadata={"format": "pt"})


def make(base: Path, out: Path) -> None:
    pipe = load(base)
    token, n = "<cat-toy>", 2
    # the example's set-up: the placeholder and its extra vectors added, the embedding resized, rows set
    tokens = [token] + [f"{token}_{i}" for i in range(1, n)]
    pipe.tokenizer.add_tokens(tokens)
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = pipe.text_encoder.get_input_embeddings().weight
        weight[ids] = torch.randn((n, weight.shape[1]), generator=gen)
    out.mkdir(parents=True, exist_ok=True)
    save_progress(pipe.text_encoder, ids, token, out / "learned_embeds.safetensors")
    fresh = load(base)
    fresh.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    np.savez(out / "outputs.npz", **outputs(fresh, token))


def check(base: Path, file: Path, out: Path) -> None:
    pipe = load(base)
    from safetensors.numpy import load_file

    token = next(iter(load_file(str(file))))
    pipe.load_textual_inversion(str(file))
    np.savez(out, **outputs(pipe, token))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"make": make, "check": check}[cmd](*map(Path, args))
