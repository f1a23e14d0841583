"""The Stable Diffusion VAE (diffusers' AutoencoderKL with its Encoder, Decoder and mid block).

encode: image [B, 3, H, W] in [-1, 1] -> Encoder -> quant_conv -> DiagonalGaussianDistribution over
latents [B, 4, H/8, W/8]; decode: latents -> post_quant_conv -> Decoder -> image. The latent scaling
(`scaling_factor`, 0.18215 for SD 1.x/2.x) is applied by pipelines, not here, as in diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jittor as jt
import numpy as np
from jittor import nn

from ..errors import ConfigError, InputError
from ..ops import randn, silu
from .attention import Attention, AttentionHooksMixin
from .configuration import from_diffusers_config
from .conv import Conv2d
from .normalization import GroupNorm
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D

__all__ = [
    "AutoencoderKL", "Encoder", "Decoder", "DiagonalGaussianDistribution",
    "DownEncoderBlock2D", "UpDecoderBlock2D", "UNetMidBlock2D",
]

_EPS = 1e-6  # every norm of the VAE (resnets, mid-block attention, conv_norm_out) uses 1e-6
_ACT_FNS = ("silu", "swish")


class DownEncoderBlock2D(nn.Module):
    """num_layers resnets (no time embedding), then an optional stride-2 conv."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int = 1, resnet_eps: float = _EPS,
        resnet_groups: int = 32, dropout: float = 0.0, output_scale_factor: float = 1.0,
        add_downsample: bool = True, downsample_padding: int = 1,
    ):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None,
                          groups=resnet_groups, eps=resnet_eps, dropout=dropout,
                          output_scale_factor=output_scale_factor)
            for i in range(num_layers)
        ])
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, out_channels, padding=downsample_padding)])
            if add_downsample else None
        )

    def execute(self, hidden_states: jt.Var) -> jt.Var:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    """num_layers resnets (no time embedding), then an optional nearest x2 upsample + conv."""

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int = 1, resnet_eps: float = _EPS,
        resnet_groups: int = 32, dropout: float = 0.0, output_scale_factor: float = 1.0,
        add_upsample: bool = True,
    ):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None,
                          groups=resnet_groups, eps=resnet_eps, dropout=dropout,
                          output_scale_factor=output_scale_factor)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None

    def execute(self, hidden_states: jt.Var) -> jt.Var:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class UNetMidBlock2D(nn.Module):
    """resnet, then (self-attention -> resnet) x num_layers; no time embedding in the VAE.

    The attention is diffusers' former `AttentionBlock`: group-normed, biased q/k/v, softmax in float32,
    residual added inside, `heads = channels // attention_head_dim` (the VAE passes the channel count,
    so one head of width `channels`).
    """

    def __init__(
        self, in_channels: int, num_layers: int = 1, resnet_eps: float = _EPS, resnet_groups: int = 32,
        dropout: float = 0.0, add_attention: bool = True, attention_head_dim: int | None = None,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        head_dim = attention_head_dim or in_channels
        resnet = lambda: ResnetBlock2D(  # noqa: E731
            in_channels, in_channels, temb_channels=None, groups=resnet_groups, eps=resnet_eps,
            dropout=dropout, output_scale_factor=output_scale_factor,
        )
        self.add_attention = add_attention
        self.resnets = nn.ModuleList([resnet() for _ in range(num_layers + 1)])
        # diffusers keeps None placeholders when add_attention is false; they hold no weights
        self.attentions = nn.ModuleList([
            Attention(in_channels, heads=in_channels // head_dim, dim_head=head_dim, bias=True,
                      upcast_softmax=True, residual_connection=True,
                      rescale_output_factor=output_scale_factor, norm_num_groups=resnet_groups,
                      eps=resnet_eps)
            for _ in range(num_layers if add_attention else 0)
        ])

    def execute(self, hidden_states: jt.Var) -> jt.Var:
        hidden_states = self.resnets[0](hidden_states)
        for i, resnet in enumerate(self.resnets[1:]):
            if self.add_attention:
                hidden_states = self.attentions[i](hidden_states)
            hidden_states = resnet(hidden_states)
        return hidden_states


class Encoder(nn.Module):
    """conv_in -> DownEncoderBlock2D x n (stride 2 except the last) -> mid block -> norm, SiLU, conv_out."""

    def __init__(
        self, in_channels: int = 3, out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",), block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2, norm_num_groups: int = 32, double_z: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            _check_block_type(block_type, "DownEncoderBlock2D", "down_block_types")
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(DownEncoderBlock2D(
                in_ch, out_ch, num_layers=layers_per_block, resnet_groups=norm_num_groups,
                add_downsample=i < len(block_out_channels) - 1, downsample_padding=0,
            ))
        self.mid_block = UNetMidBlock2D(
            block_out_channels[-1], resnet_groups=norm_num_groups, add_attention=mid_block_add_attention,
            attention_head_dim=block_out_channels[-1],
        )
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[-1], eps=_EPS, affine=True)
        self.conv_out = Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3,
                                  padding=1)

    def execute(self, sample: jt.Var) -> jt.Var:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = block(sample)
        sample = self.mid_block(sample)
        return self.conv_out(silu(self.conv_norm_out(sample)))


class Decoder(nn.Module):
    """conv_in -> mid block -> UpDecoderBlock2D x n (layers_per_block + 1 resnets, x2 except the last)
    -> norm, SiLU, conv_out."""

    def __init__(
        self, in_channels: int = 3, out_channels: int = 3,
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",), block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2, norm_num_groups: int = 32, mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], 3, stride=1, padding=1)
        self.mid_block = UNetMidBlock2D(
            block_out_channels[-1], resnet_groups=norm_num_groups, add_attention=mid_block_add_attention,
            attention_head_dim=block_out_channels[-1],
        )
        self.up_blocks = nn.ModuleList()
        rev_ch = list(reversed(block_out_channels))
        out_ch = rev_ch[0]
        for i, block_type in enumerate(up_block_types):
            _check_block_type(block_type, "UpDecoderBlock2D", "up_block_types")
            in_ch, out_ch = out_ch, rev_ch[i]
            self.up_blocks.append(UpDecoderBlock2D(
                in_ch, out_ch, num_layers=layers_per_block + 1, resnet_groups=norm_num_groups,
                add_upsample=i < len(block_out_channels) - 1,
            ))
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=_EPS, affine=True)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def execute(self, sample: jt.Var) -> jt.Var:
        sample = self.mid_block(self.conv_in(sample))
        # Older diffusers cast here to the up blocks' dtype, so that a VAE whose up blocks were upcast to
        # float32 (fp16 decoding of large images) runs them in float32; a no-op when all dtypes agree.
        sample = sample.cast(self.up_blocks[0].resnets[0].conv1.weight.dtype)
        for block in self.up_blocks:
            sample = block(sample)
        return self.conv_out(silu(self.conv_norm_out(sample)))


class DiagonalGaussianDistribution:
    """The encoder's posterior N(mean, exp(logvar)) per latent element; `parameters` = [mean, logvar] on dim 1."""

    def __init__(self, parameters: jt.Var):
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=1)
        self.logvar = jt.clamp(logvar, -30.0, 20.0)
        # sigma = exp(logvar / 2), var = exp(logvar); jt.exp returns float32 for half inputs: cast back
        self.std = jt.exp(0.5 * self.logvar).cast(logvar.dtype)
        self.var = jt.exp(self.logvar).cast(logvar.dtype)

    def sample(self, generator: np.random.Generator) -> jt.Var:
        """z = mean + std * eps, eps ~ N(0, I) drawn from `generator` (never a global RNG)."""
        if not isinstance(generator, np.random.Generator):
            raise InputError("DiagonalGaussianDistribution.sample needs a numpy Generator "
                             "(np.random.default_rng(seed)); use mode() for a deterministic latent")
        eps = randn(self.mean.shape, generator, dtype=str(self.mean.dtype))
        return self.mean + self.std * eps

    def mode(self) -> jt.Var:
        """The most likely latent: the mean."""
        return self.mean


# Attention keys of diffusers' former AttentionBlock, still found in many hub VAE checkpoints
# (e.g. SD 1.5, sd-vae-ft-mse); diffusers renames them on load (_fix_state_dict_keys_on_load).
_LEGACY_ATTENTION_KEYS = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class AutoencoderKL(nn.Module, AttentionHooksMixin):
    """KL-regularised VAE: `encode(image) -> DiagonalGaussianDistribution`, `decode(latents) -> image`."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        args = dict(locals())
        super().__init__()
        self.config = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        _check_config(self.config)
        self.scaling_factor = scaling_factor  # z_diffusion = z_vae * scaling_factor (applied by pipelines)
        self.shift_factor = shift_factor  # None for SD 1.x/2.x; kept for configs that carry one
        self.encoder = Encoder(
            in_channels, latent_channels, down_block_types, block_out_channels, layers_per_block,
            norm_num_groups, double_z=True, mid_block_add_attention=mid_block_add_attention,
        )
        self.decoder = Decoder(
            latent_channels, out_channels, up_block_types, block_out_channels, layers_per_block,
            norm_num_groups, mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AutoencoderKL:
        """Build from a diffusers vae/config.json dict (bookkeeping keys starting with '_' are ignored)."""
        return from_diffusers_config(cls, config, _check_config)

    @staticmethod
    def convert_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rename legacy mid-block attention keys (query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0)."""
        out = {}
        for name, value in state.items():
            prefix, _, leaf = name.rpartition(".")
            block, _, old = prefix.rpartition(".")
            if ".mid_block.attentions." in name and old in _LEGACY_ATTENTION_KEYS:
                name = f"{block}.{_LEGACY_ATTENTION_KEYS[old]}.{leaf}"
            out[name] = value
        return out

    def encode(self, x: jt.Var) -> DiagonalGaussianDistribution:
        """Images [B, C, H, W] in [-1, 1] -> the posterior over latents [B, latent_channels, H/f, W/f]."""
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise InputError(f"images must be [B, {self.config['in_channels']}, H, W], got {tuple(x.shape)}")
        # Tiled encoding (diffusers' _tiled_encode: overlapping tiles, blended) would wrap this call.
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: jt.Var) -> jt.Var:
        """Unscaled latents [B, latent_channels, h, w] -> images [B, C, h*f, w*f] (roughly in [-1, 1])."""
        if z.ndim != 4 or z.shape[1] != self.config["latent_channels"]:
            raise InputError(
                f"latents must be [B, {self.config['latent_channels']}, h, w], got {tuple(z.shape)}"
            )
        # Memory: at 512x512 the last up block holds [B, 128, 512, 512] maps. Sliced decoding (one sample
        # at a time, then concat) or tiled decoding (diffusers' tiled_decode: overlapping latent tiles
        # decoded separately, blended with blend_v/blend_h) would plug in here, around the two calls below.
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def execute(
        self, sample: jt.Var, sample_posterior: bool = False, generator: np.random.Generator | None = None
    ) -> jt.Var:
        """Reconstruct `sample`: decode(posterior.sample(generator) if sample_posterior else posterior.mode())."""
        posterior = self.encode(sample)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z)


def _check_block_type(block_type: str, supported: str, key: str) -> None:
    name = block_type[len("UNetRes"):] if block_type.startswith("UNetRes") else block_type  # diffusers alias
    if name != supported:
        raise ConfigError(f"{key}: block type {block_type!r} is not supported; use {supported!r}")


def _check_config(cfg: dict[str, Any]) -> None:
    """Raise ConfigError (one line) for anything this VAE cannot build."""
    if cfg.get("act_fn", "silu") not in _ACT_FNS:
        raise ConfigError(f"act_fn={cfg['act_fn']!r} is not supported; use 'silu'")
    for key, supported in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        for block_type in cfg.get(key, (supported,)):
            _check_block_type(block_type, supported, key)
    channels = list(cfg.get("block_out_channels", (64,)))
    for key in ("down_block_types", "up_block_types"):
        n = len(cfg.get(key, ("",)))
        if n != len(channels):
            raise ConfigError(f"{key} has {n} entries but block_out_channels has {len(channels)}; give one per block")
    groups = cfg.get("norm_num_groups", 32)
    if not isinstance(groups, int) or groups <= 0 or any(c % groups for c in channels):
        raise ConfigError(f"block_out_channels {channels} must be multiples of norm_num_groups={groups}")
