"""Spatial transformer of the SD UNet (diffusers' Transformer2DModel with continuous input).

GroupNorm -> proj_in (1x1 conv or Linear) -> BasicTransformerBlock x N -> proj_out -> + residual.
Each block: self-attention (attn1), cross-attention on the text (attn2), GEGLU feed-forward (ff).
"""

from __future__ import annotations

from typing import Any

import jittor as jt
from jittor import nn

from .. import kernels
from ..errors import ConfigError, InputError
from ..ops import gelu
from .attention import Attention
from .conv import Conv2d
from .hooks import ForwardHooksMixin
from .linear import Linear
from .normalization import GroupNorm, LayerNorm

__all__ = ["GEGLU", "FeedForward", "BasicTransformerBlock", "Transformer2DModel"]


class GEGLU(nn.Module):
    """Gated GELU: proj to 2*dim_out, then h * gelu(gate) (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2, bias=bias)

    def execute(self, x: jt.Var) -> jt.Var:
        p = self.proj(x)
        if kernels.enabled(p):
            return kernels.geglu(p)
        h, gate = jt.chunk(p, 2, dim=-1)
        return h * gelu(gate)


class FeedForward(nn.Module):
    """net.0 = GEGLU(dim -> mult*dim), net.1 = dropout, net.2 = Linear(mult*dim -> dim_out)."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: int = 4,
        dropout: float = 0.0,
        activation_fn: str = "geglu",
        bias: bool = True,
    ):
        super().__init__()
        if activation_fn != "geglu":
            raise ConfigError(f"activation_fn={activation_fn!r} is not supported; use 'geglu'")
        inner_dim = int(dim * mult)
        self.net = nn.ModuleList([
            GEGLU(dim, inner_dim, bias=bias),
            nn.Dropout(dropout),
            Linear(inner_dim, dim_out or dim, bias=bias),
        ])

    def execute(self, x: jt.Var) -> jt.Var:
        for module in self.net:
            x = module(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: x += attn1(norm1 x); x += attn2(norm2 x, context); x += ff(norm3 x)."""

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        activation_fn: str = "geglu",
        attention_bias: bool = False,
        upcast_attention: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=norm_eps)
        self.attn1 = Attention(
            dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
            bias=attention_bias, upcast_attention=upcast_attention,
        )
        if cross_attention_dim is not None:
            self.norm2 = LayerNorm(dim, eps=norm_eps)
            self.attn2 = Attention(
                dim, cross_attention_dim=cross_attention_dim, heads=num_attention_heads,
                dim_head=attention_head_dim, dropout=dropout, bias=attention_bias,
                upcast_attention=upcast_attention,
            )
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn)

    def execute(
        self,
        hidden_states: jt.Var,
        attention_mask: jt.Var | None = None,
        encoder_hidden_states: jt.Var | None = None,
        encoder_attention_mask: jt.Var | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> jt.Var:
        kwargs = cross_attention_kwargs or {}
        hidden_states = hidden_states + self.attn1(
            self.norm1(hidden_states), encoder_hidden_states=None, attention_mask=attention_mask, **kwargs
        )
        if self.attn2 is not None:
            hidden_states = hidden_states + self.attn2(
                self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask, **kwargs,
            )
        return hidden_states + self.ff(self.norm3(hidden_states))


class Transformer2DModel(ForwardHooksMixin, nn.Module):
    """Continuous-input spatial transformer: [B, C, H, W] -> [B, C, H, W] (adds its input back)."""

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int = 320,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner_dim)
        else:
            self.proj_in = Conv2d(in_channels, inner_dim, 1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                cross_attention_dim=cross_attention_dim, attention_bias=attention_bias,
                upcast_attention=upcast_attention,
            )
            for _ in range(num_layers)
        ])
        if use_linear_projection:
            self.proj_out = Linear(inner_dim, in_channels)
        else:
            self.proj_out = Conv2d(inner_dim, in_channels, 1, stride=1, padding=0)

    def execute(
        self,
        hidden_states: jt.Var,
        encoder_hidden_states: jt.Var | None = None,
        attention_mask: jt.Var | None = None,
        encoder_attention_mask: jt.Var | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> jt.Var:
        """Masks are additive biases broadcastable to the scores [B, heads, queries, keys]."""
        b, _, h, w = hidden_states.shape
        if attention_mask is not None and attention_mask.shape[-1] != h * w:
            raise InputError(
                f"attention_mask covers {attention_mask.shape[-1]} keys but this self-attention layer has "
                f"{h * w} ({h}x{w}) tokens; pass a mask of that length or none"
            )
        residual = hidden_states
        x = self.norm(hidden_states)
        if self.use_linear_projection:
            x = self.proj_in(x.transpose(0, 2, 3, 1).reshape(b, h * w, -1))
        else:
            x = self.proj_in(x)
            x = x.transpose(0, 2, 3, 1).reshape(b, h * w, -1)
        for block in self.transformer_blocks:
            x = block(
                x, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, cross_attention_kwargs=cross_attention_kwargs,
            )
        if self.use_linear_projection:
            x = self.proj_out(x).reshape(b, h, w, -1).transpose(0, 3, 1, 2)
        else:
            x = self.proj_out(x.reshape(b, h, w, -1).transpose(0, 3, 1, 2))
        return x + residual
