"""GroupNorm computed in float32 with a two-pass variance (safe for float16 activations on GPU), and LayerNorm.

On CPU in float32 both run as jstyle.kernels' multi-threaded kernels; elsewhere as the Jittor expressions below.
"""

from __future__ import annotations

import jittor as jt
from jittor import nn

from .. import kernels
from ..ops import silu as _silu

__all__ = ["GroupNorm", "LayerNorm", "group_norm"]


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm semantics (`weight`, `bias` keys); statistics in float32, var = E[(x - mean)^2]."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.weight = jt.ones(num_channels) if affine else None
        self.bias = jt.zeros(num_channels) if affine else None

    def execute(self, x: jt.Var, silu: bool = False) -> jt.Var:
        """GroupNorm(x); `silu`: silu(GroupNorm(x)), fused into the kernel on CPU (the ResNet's norm + act)."""
        if self.affine and kernels.enabled(x) and self.weight.dtype == "float32":
            return kernels.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, silu)
        out = group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return _silu(out) if silu else out


def group_norm(x: jt.Var, groups: int, weight: jt.Var | None, bias: jt.Var | None, eps: float) -> jt.Var:
    """(x - mean) / sqrt(var + eps) * weight + bias per (sample, group), var = E[(x - mean)^2], in float32."""
    dtype, shape = x.dtype, x.shape
    g = x.float32().reshape(shape[0], groups, -1)
    mean = g.mean(dims=(2,), keepdims=True)
    centred = g - mean
    var = (centred * centred).mean(dims=(2,), keepdims=True)
    out = (centred / jt.sqrt(var + eps)).reshape(shape)
    if weight is not None:
        extra = (1,) * (len(shape) - 2)
        out = out * weight.float32().reshape(1, -1, *extra) + bias.float32().reshape(1, -1, *extra)
    return out.cast(dtype)


class LayerNorm(nn.LayerNorm):
    """jittor.nn.LayerNorm (`weight`, `bias` keys; var = E[x^2] - E[x]^2); on CPU in float32 over one axis the
    multi-threaded kernel (var = E[(x - mean)^2])."""

    def execute(self, x: jt.Var) -> jt.Var:
        if (len(self.normalized_shape) == 1 and self.elementwise_affine and kernels.enabled(x)
                and self.weight.dtype == "float32"):
            return kernels.layer_norm(x, self.weight, self.bias, self.eps)
        return super().execute(x)
