"""Textual inversion (Gal et al. 2022): new tokens whose input embeddings carry a concept, in diffusers' files.

A file is diffusers' `learned_embeds.safetensors`: one tensor under its token's name, [D] or [n, D] (n vectors:
the tokens "<t>", "<t>_1", ..., "<t>_{n-1}", and a prompt's "<t>" stands for all of them, as diffusers'
`load_textual_inversion` / `maybe_convert_prompt`). The A1111 safetensors layout ("emb_params") loads with `token=`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jittor as jt
import numpy as np

from .errors import ConfigError, InputError

__all__ = ["WEIGHT_NAME", "add_tokens", "token_embeddings", "save_learned_embeds", "read_learned_embeds",
           "load_textual_inversion", "vector_tokens"]

WEIGHT_NAME = "learned_embeds.safetensors"


def vector_tokens(token: str, n: int) -> list[str]:
    """The tokens of an n-vector embedding: "<t>", "<t>_1", ..., "<t>_{n-1}" (diffusers' names)."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def add_tokens(tokenizer: Any, text_encoder: Any, embeddings: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """Teach `tokenizer` each token and set its input-embedding rows in `text_encoder` ([D] or [n, D] each);
    returns the ids per token. Tokens added before get their rows replaced; vocabulary words are refused."""
    weight = text_encoder.embeddings.token_embedding.weight
    dim = weight.shape[1]
    out: dict[str, list[int]] = {}
    rows: dict[int, np.ndarray] = {}
    for token, emb in embeddings.items():
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim not in (1, 2) or emb.shape[-1] != dim:
            raise ConfigError(f"embedding of '{token}' has shape {emb.shape}; this text encoder needs [{dim}] "
                              f"or [n, {dim}]")
        emb = emb.reshape(-1, dim)
        names = vector_tokens(token, emb.shape[0])
        taken = [t for t in names if t in tokenizer.vocab]
        if taken:
            raise ConfigError(f"token '{taken[0]}' is a word of the tokenizer's vocabulary; pick another "
                              "placeholder (e.g. '<my-style>')")
        tokenizer.add_tokens(names)
        ids = tokenizer.convert_tokens_to_ids(names)
        if len(names) > 1:
            tokenizer.multi_vector[token] = names
        rows.update(zip(ids, emb))
        out[token] = ids
    text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.embeddings.token_embedding.weight
    with jt.no_grad():
        for i, row in rows.items():
            weight[i] = jt.array(row).cast(weight.dtype)
    weight.sync()
    return out


def token_embeddings(tokenizer: Any, text_encoder: Any, token: str) -> np.ndarray:
    """The [n, D] float32 input embedding of an added token (all its vectors)."""
    names = tokenizer.multi_vector.get(token, [token])
    if any(t not in tokenizer.added_tokens for t in names):
        raise InputError(f"'{token}' is not an added token of this tokenizer")
    weight = text_encoder.embeddings.token_embedding.weight
    return np.stack([weight[i].float32().numpy() for i in tokenizer.convert_tokens_to_ids(names)])


def save_learned_embeds(path: str | Path, token: str, embedding: np.ndarray) -> Path:
    """Write diffusers' learned_embeds.safetensors ({token: [n, D] float32}) atomically; returns its path."""
    from safetensors.numpy import save_file

    from .io import atomic_path

    path = Path(path)
    emb = np.ascontiguousarray(np.asarray(embedding, dtype=np.float32).reshape(-1, np.shape(embedding)[-1]))
    with atomic_path(path) as tmp:
        save_file({token: emb}, str(tmp), metadata={"format": "pt"})  # the metadata diffusers' script writes
    return path


def read_learned_embeds(path: str | Path, token: str | None = None) -> dict[str, np.ndarray]:
    """{token: [n, D]} from a textual-inversion safetensors file (or a folder holding learned_embeds.safetensors):
    diffusers' one-tensor layout, or A1111's "emb_params" (which needs `token`); `token` renames."""
    from .loading import load_safetensors

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise InputError(f"{path}: textual-inversion file not found (a .safetensors file or a folder with "
                         f"{WEIGHT_NAME})")
    state = load_safetensors(path)
    if len(state) == 1:
        name, emb = next(iter(state.items()))
        if name == "emb_params" and token is None:
            raise InputError(f"{path}: an A1111 embedding names no token; pass token='<name>'")
        return {token or name: emb}
    if "emb_params" in state:
        if token is None:
            raise InputError(f"{path}: an A1111 embedding names no token; pass token='<name>'")
        return {token: state["emb_params"]}
    raise InputError(f"{path}: {len(state)} tensors ({', '.join(sorted(state)[:3])}...); a textual-inversion file "
                     "holds one (diffusers' learned_embeds.safetensors)")


def load_textual_inversion(pipe: Any, path: str | Path, token: str | None = None) -> dict[str, list[int]]:
    """diffusers' `pipe.load_textual_inversion(path, token=None)`: the file's token(s) into the pipeline's
    tokenizer and text encoder; returns the ids per token."""
    return add_tokens(pipe.tokenizer, pipe.text_encoder, read_learned_embeds(path, token))
