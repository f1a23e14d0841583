"""Sinusoidal timestep embedding and its MLP (diffusers' `get_timestep_embedding`, `TimestepEmbedding`)."""

from __future__ import annotations

import math

import jittor as jt
from jittor import nn

from ..errors import ConfigError
from ..ops import ACTIVATIONS
from .linear import Linear

__all__ = ["get_timestep_embedding", "TimestepEmbedding"]


def get_timestep_embedding(
    timesteps: jt.Var,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: int = 10000,
) -> jt.Var:
    """[N] timesteps (may be fractional) -> [N, embedding_dim] float32 sinusoidal embeddings (DDPM).

    Half the channels are sin, half cos (cos first when `flip_sin_to_cos`); an odd dim is zero-padded.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {tuple(timesteps.shape)}")
    half_dim = embedding_dim // 2
    # freq_i = exp(-ln(max_period) * i / (half_dim - shift)), i = 0..half_dim-1 (float32 as in diffusers)
    exponent = -math.log(max_period) * jt.arange(0, half_dim).float32()
    freqs = jt.exp(exponent / (half_dim - downscale_freq_shift))
    args = scale * (timesteps.float32()[:, None] * freqs[None, :])
    emb = jt.concat([jt.sin(args), jt.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = jt.concat([emb[:, half_dim:], emb[:, :half_dim]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = jt.concat([emb, jt.zeros((emb.shape[0], 1), dtype=emb.dtype)], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> act -> linear_2: lifts the sinusoidal embedding to the blocks' time-embedding width."""

    def __init__(
        self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int | None = None
    ):
        super().__init__()
        if act_fn not in ACTIVATIONS:
            raise ConfigError(f"act_fn={act_fn!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        self.linear_1 = Linear(in_channels, time_embed_dim)
        self.act = ACTIVATIONS[act_fn]
        self.linear_2 = Linear(time_embed_dim, out_dim or time_embed_dim)

    def execute(self, sample: jt.Var) -> jt.Var:
        return self.linear_2(self.act(self.linear_1(sample)))
