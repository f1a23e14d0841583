"""GroupNorm computed in float32 with a two-pass variance (safe for float16 activations on GPU)."""

from __future__ import annotations

import jittor as jt
from jittor import nn

__all__ = ["GroupNorm"]


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm semantics (`weight`, `bias` keys); statistics in float32, var = E[(x - mean)^2]."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = jt.ones(num_channels) if affine else None
        self.bias = jt.zeros(num_channels) if affine else None

    def execute(self, x: jt.Var) -> jt.Var:
        dtype, shape = x.dtype, x.shape
        g = x.float32().reshape(shape[0], self.num_groups, -1)
        mean = g.mean(dims=(2,), keepdims=True)
        centred = g - mean
        var = (centred * centred).mean(dims=(2,), keepdims=True)
        out = (centred / jt.sqrt(var + self.eps)).reshape(shape)
        if self.affine:
            extra = (1,) * (len(shape) - 2)
            out = out * self.weight.float32().reshape(1, -1, *extra) + self.bias.float32().reshape(1, -1, *extra)
        return out.cast(dtype)
