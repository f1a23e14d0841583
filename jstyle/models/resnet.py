"""ResnetBlock2D, Downsample2D and Upsample2D as in diffusers (shared by the UNet and the VAE)."""

from __future__ import annotations

import jittor as jt
from jittor import nn

from ..ops import silu
from .conv import Conv2d
from .hooks import ForwardHooksMixin
from .linear import Linear
from .normalization import GroupNorm

__all__ = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]


class ResnetBlock2D(ForwardHooksMixin, nn.Module):
    """GroupNorm-SiLU-conv twice, plus an optional time-embedding shift and a 1x1 shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        temb_channels: int | None = 512,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.output_scale_factor = output_scale_factor
        self.norm1 = GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def execute(self, x: jt.Var, temb: jt.Var | None = None) -> jt.Var:
        h = self.conv1(self.norm1(x, silu=True))
        if temb is not None and self.time_emb_proj is not None:
            h = h + self.time_emb_proj(silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self.norm2(h, silu=True)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; padding=0 pads right/bottom by one first (the VAE encoder's variant)."""

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def execute(self, x: jt.Var) -> jt.Var:
        if self.padding == 0:
            x = nn.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 (or to `output_size`) followed by a 3x3 conv."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = Conv2d(channels, out_channels or channels, 3, padding=1)

    def execute(self, x: jt.Var, output_size: tuple[int, int] | None = None) -> jt.Var:
        if output_size is None:
            x = nn.interpolate(x, scale_factor=2, mode="nearest")
        else:
            x = nn.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x)
