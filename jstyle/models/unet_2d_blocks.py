"""Down, mid and up blocks of the SD 1.x/2.x UNet (diffusers' unet_2d_blocks, the subset SD uses).

Down blocks return (hidden_states, skip_states); up blocks pop their skips from the end of the tuple
they are given, newest first, and concatenate each onto the channels before the resnet.
"""

from __future__ import annotations

from typing import Any

import jittor as jt
from jittor import nn

from ..errors import ConfigError
from .hooks import ForwardHooksMixin
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .transformer_2d import Transformer2DModel

__all__ = [
    "CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D", "UpBlock2D",
    "get_down_block", "get_up_block", "DOWN_BLOCKS", "UP_BLOCKS",
]


def _transformer(
    channels: int, heads: int, layers: int, cross_attention_dim: int, groups: int,
    use_linear_projection: bool, upcast_attention: bool, dropout: float,
) -> Transformer2DModel:
    # diffusers: head dim = channels // heads (the config's `attention_head_dim` is the head COUNT)
    return Transformer2DModel(
        heads, channels // heads, in_channels=channels, num_layers=layers, dropout=dropout,
        norm_num_groups=groups, cross_attention_dim=cross_attention_dim,
        use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
    )


def _attend(
    attn: Transformer2DModel, x: jt.Var, encoder_hidden_states: jt.Var | None, attention_mask: jt.Var | None,
    encoder_attention_mask: jt.Var | None, cross_attention_kwargs: dict[str, Any] | None,
) -> jt.Var:
    return attn(
        x, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
        encoder_attention_mask=encoder_attention_mask, cross_attention_kwargs=cross_attention_kwargs,
    )


class DownBlock2D(nn.Module):
    """num_layers resnets, then an optional stride-2 conv; every output is kept as a skip."""

    has_cross_attention = False

    def __init__(
        self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
        resnet_eps: float = 1e-6, resnet_groups: int = 32, dropout: float = 0.0,
        output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1,
    ):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels,
                          groups=resnet_groups, eps=resnet_eps, dropout=dropout,
                          output_scale_factor=output_scale_factor)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, out_channels, padding=downsample_padding)])
            if add_downsample else None
        )

    def execute(self, hidden_states: jt.Var, temb: jt.Var | None = None) -> tuple[jt.Var, tuple[jt.Var, ...]]:
        skips = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class CrossAttnDownBlock2D(nn.Module):
    """(resnet -> spatial transformer) x num_layers, then an optional stride-2 conv."""

    has_cross_attention = True

    def __init__(
        self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int = 1,
        transformer_layers_per_block: int = 1, resnet_eps: float = 1e-6, resnet_groups: int = 32,
        num_attention_heads: int = 1, cross_attention_dim: int = 1280, dropout: float = 0.0,
        output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1,
        use_linear_projection: bool = False, upcast_attention: bool = False,
    ):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels,
                          groups=resnet_groups, eps=resnet_eps, dropout=dropout,
                          output_scale_factor=output_scale_factor)
            for i in range(num_layers)
        ])
        self.attentions = nn.ModuleList([
            _transformer(out_channels, num_attention_heads, transformer_layers_per_block, cross_attention_dim,
                         resnet_groups, use_linear_projection, upcast_attention, dropout)
            for _ in range(num_layers)
        ])
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, out_channels, padding=downsample_padding)])
            if add_downsample else None
        )

    def execute(
        self, hidden_states: jt.Var, temb: jt.Var | None = None, encoder_hidden_states: jt.Var | None = None,
        attention_mask: jt.Var | None = None, cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: jt.Var | None = None,
    ) -> tuple[jt.Var, tuple[jt.Var, ...]]:
        skips = ()
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = _attend(attn, hidden_states, encoder_hidden_states, attention_mask,
                                    encoder_attention_mask, cross_attention_kwargs)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class UNetMidBlock2DCrossAttn(ForwardHooksMixin, nn.Module):
    """resnet, then (spatial transformer -> resnet) x num_layers, at the lowest resolution."""

    has_cross_attention = True

    def __init__(
        self, in_channels: int, temb_channels: int, num_layers: int = 1,
        transformer_layers_per_block: int = 1, resnet_eps: float = 1e-6, resnet_groups: int = 32,
        num_attention_heads: int = 1,
        output_scale_factor: float = 1.0, cross_attention_dim: int = 1280, dropout: float = 0.0,
        use_linear_projection: bool = False, upcast_attention: bool = False,
    ):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels, in_channels, temb_channels, groups=resnet_groups, eps=resnet_eps,
                          dropout=dropout, output_scale_factor=output_scale_factor)
            for _ in range(num_layers + 1)
        ])
        self.attentions = nn.ModuleList([
            _transformer(in_channels, num_attention_heads, transformer_layers_per_block, cross_attention_dim,
                         resnet_groups, use_linear_projection, upcast_attention, dropout)
            for _ in range(num_layers)
        ])

    def execute(
        self, hidden_states: jt.Var, temb: jt.Var | None = None, encoder_hidden_states: jt.Var | None = None,
        attention_mask: jt.Var | None = None, cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: jt.Var | None = None,
    ) -> jt.Var:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, list(self.resnets)[1:], strict=True):
            hidden_states = _attend(attn, hidden_states, encoder_hidden_states, attention_mask,
                                    encoder_attention_mask, cross_attention_kwargs)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


def _up_resnets(
    in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int, num_layers: int,
    resnet_eps: float, resnet_groups: int, dropout: float, output_scale_factor: float,
) -> nn.ModuleList:
    # resnet i sees [previous output | skip]; the last skip comes from the block below (in_channels)
    resnets = []
    for i in range(num_layers):
        skip_channels = in_channels if i == num_layers - 1 else out_channels
        resnet_in = prev_output_channel if i == 0 else out_channels
        resnets.append(ResnetBlock2D(
            resnet_in + skip_channels, out_channels, temb_channels, groups=resnet_groups, eps=resnet_eps,
            dropout=dropout, output_scale_factor=output_scale_factor,
        ))
    return nn.ModuleList(resnets)


class UpBlock2D(nn.Module):
    """num_layers resnets over [x | skip], then an optional nearest x2 (or to `upsample_size`) + conv."""

    has_cross_attention = False

    def __init__(
        self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
        num_layers: int = 1, resnet_eps: float = 1e-6, resnet_groups: int = 32, dropout: float = 0.0,
        output_scale_factor: float = 1.0, add_upsample: bool = True,
    ):
        super().__init__()
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers,
                                   resnet_eps, resnet_groups, dropout, output_scale_factor)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None

    def execute(
        self, hidden_states: jt.Var, res_hidden_states_tuple: tuple[jt.Var, ...], temb: jt.Var | None = None,
        upsample_size: tuple[int, int] | None = None,
    ) -> jt.Var:
        for resnet in self.resnets:
            hidden_states = jt.concat([hidden_states, res_hidden_states_tuple[-1]], dim=1)
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = resnet(hidden_states, temb)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlock2D(nn.Module):
    """(resnet over [x | skip] -> spatial transformer) x num_layers, then an optional upsampler."""

    has_cross_attention = True

    def __init__(
        self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
        num_layers: int = 1, transformer_layers_per_block: int = 1, resnet_eps: float = 1e-6,
        resnet_groups: int = 32, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
        dropout: float = 0.0, output_scale_factor: float = 1.0, add_upsample: bool = True,
        use_linear_projection: bool = False, upcast_attention: bool = False,
    ):
        super().__init__()
        self.resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers,
                                   resnet_eps, resnet_groups, dropout, output_scale_factor)
        self.attentions = nn.ModuleList([
            _transformer(out_channels, num_attention_heads, transformer_layers_per_block, cross_attention_dim,
                         resnet_groups, use_linear_projection, upcast_attention, dropout)
            for _ in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None

    def execute(
        self, hidden_states: jt.Var, res_hidden_states_tuple: tuple[jt.Var, ...], temb: jt.Var | None = None,
        encoder_hidden_states: jt.Var | None = None, cross_attention_kwargs: dict[str, Any] | None = None,
        upsample_size: tuple[int, int] | None = None, attention_mask: jt.Var | None = None,
        encoder_attention_mask: jt.Var | None = None,
    ) -> jt.Var:
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states = jt.concat([hidden_states, res_hidden_states_tuple[-1]], dim=1)
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = resnet(hidden_states, temb)
            hidden_states = _attend(attn, hidden_states, encoder_hidden_states, attention_mask,
                                    encoder_attention_mask, cross_attention_kwargs)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


DOWN_BLOCKS = {"DownBlock2D": DownBlock2D, "CrossAttnDownBlock2D": CrossAttnDownBlock2D}
UP_BLOCKS = {"UpBlock2D": UpBlock2D, "CrossAttnUpBlock2D": CrossAttnUpBlock2D}
_ATTN_ARGS = ("transformer_layers_per_block", "num_attention_heads", "cross_attention_dim",
              "use_linear_projection", "upcast_attention")


def _block_class(block_type: str, table: dict[str, type], key: str) -> type:
    name = block_type[len("UNetRes"):] if block_type.startswith("UNetRes") else block_type  # diffusers alias
    if name not in table:
        raise ConfigError(f"{key}: block type {block_type!r} is not supported; use one of {sorted(table)}")
    return table[name]


def get_down_block(down_block_type: str, **kwargs: Any) -> nn.Module:
    """Build a down block by its diffusers name; attention arguments are dropped for DownBlock2D."""
    cls = _block_class(down_block_type, DOWN_BLOCKS, "down_block_types")
    if not cls.has_cross_attention:
        kwargs = {k: v for k, v in kwargs.items() if k not in _ATTN_ARGS}
    return cls(**kwargs)


def get_up_block(up_block_type: str, **kwargs: Any) -> nn.Module:
    """Build an up block by its diffusers name; attention arguments are dropped for UpBlock2D."""
    cls = _block_class(up_block_type, UP_BLOCKS, "up_block_types")
    if not cls.has_cross_attention:
        kwargs = {k: v for k, v in kwargs.items() if k not in _ATTN_ARGS}
    return cls(**kwargs)
