"""The text-conditioned denoising UNet of Stable Diffusion 1.x/2.x (diffusers' UNet2DConditionModel).

conv_in -> down blocks (keeping skips) -> mid block -> up blocks (consuming skips) -> norm, SiLU, conv_out;
every resnet gets the timestep embedding, every spatial transformer cross-attends to the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jittor as jt
import numpy as np
from jittor import nn

from ..errors import ConfigError, InputError
from ..ops import silu
from .attention import AttentionHooksMixin
from .configuration import from_diffusers_config
from .conv import Conv2d
from .embeddings import TimestepEmbedding, get_timestep_embedding
from .normalization import GroupNorm
from .unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block, get_up_block

__all__ = ["UNet2DConditionModel"]

# Config keys that only have one supported value here (diffusers features SD 1.x/2.x do not use).
_FIXED = {
    "class_embed_type": None, "num_class_embeds": None, "addition_embed_type": None,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "time_cond_proj_dim": None,
    "timestep_post_act": None, "time_embedding_act_fn": None, "time_embedding_type": "positional",
    "attention_type": "default", "resnet_time_scale_shift": "default", "dual_cross_attention": False,
    "num_attention_heads": None, "reverse_transformer_layers_per_block": None,
}
_MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)


def _per_block(value: Any, n: int, key: str) -> list:
    """An int/bool/None for every block, or a list with one entry per block."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{key} has {len(value)} entries for {n} down blocks; give one per block")
        return list(value)
    return [value] * n


def _check_config(cfg: dict[str, Any]) -> None:
    """Raise ConfigError (one line) for anything this UNet cannot build."""
    for key, supported in _FIXED.items():
        if cfg.get(key, supported) != supported:
            raise ConfigError(f"{key}={cfg[key]!r} is not supported; only {supported!r} (SD 1.x/2.x UNets)")
    if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in _MID_BLOCKS:
        raise ConfigError(
            f"mid_block_type={cfg['mid_block_type']!r} is not supported; use one of {list(_MID_BLOCKS)}"
        )
    only_cross = cfg.get("only_cross_attention", False)
    only_cross = only_cross if isinstance(only_cross, (list, tuple)) else [only_cross]
    if any(only_cross) or cfg.get("mid_block_only_cross_attention"):
        raise ConfigError("only_cross_attention=true is not supported; only false (self-, then cross-attn)")
    if cfg.get("act_fn", "silu") not in ("silu", "swish"):
        raise ConfigError(f"act_fn={cfg['act_fn']!r} is not supported; use 'silu'")
    if cfg.get("norm_num_groups", 32) is None:
        raise ConfigError("norm_num_groups=null is not supported; use a group count such as 32")
    tlpb = cfg.get("transformer_layers_per_block", 1)
    if isinstance(tlpb, (list, tuple)) and any(isinstance(t, (list, tuple)) for t in tlpb):
        raise ConfigError("transformer_layers_per_block: nested lists are not supported; give ints per block")
    for key in ("conv_in_kernel", "conv_out_kernel"):
        if cfg.get(key, 3) % 2 != 1:
            raise ConfigError(f"{key}={cfg[key]} is not supported; use an odd kernel size such as 3")


class UNet2DConditionModel(nn.Module, AttentionHooksMixin):
    """eps/v-predicting UNet: (sample [B, C, H, W], timestep, text states [B, L, D]) -> [B, C_out, H, W]."""

    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = (
            "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: Sequence[str] = (
            "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int | Sequence[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | Sequence[int] = 1280,
        transformer_layers_per_block: int | Sequence[int] = 1,
        attention_head_dim: int | Sequence[int] = 8,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        time_embedding_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
    ):
        args = dict(locals())
        super().__init__()
        self.config = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        _check_config(self.config)
        n = len(down_block_types)
        if len(up_block_types) != n or len(block_out_channels) != n:
            raise ConfigError(
                f"down_block_types ({n}), up_block_types ({len(up_block_types)}) and block_out_channels "
                f"({len(block_out_channels)}) must have the same length"
            )
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ConfigError(
                f"block_out_channels {bad} must be multiples of norm_num_groups={norm_num_groups}"
            )
        # diffusers quirk: for these configs `attention_head_dim` holds the number of heads per block
        heads = _per_block(attention_head_dim, n, "attention_head_dim")
        cross_dims = _per_block(cross_attention_dim, n, "cross_attention_dim")
        layers = _per_block(layers_per_block, n, "layers_per_block")
        t_layers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")

        self.in_channels = in_channels
        self.center_input_sample = center_input_sample
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        self.time_proj_dim = block_out_channels[0]
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4

        self.conv_in = Conv2d(in_channels, block_out_channels[0], conv_in_kernel,
                                 padding=(conv_in_kernel - 1) // 2)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)

        common = dict(temb_channels=time_embed_dim, resnet_eps=norm_eps, resnet_groups=norm_num_groups,
                      dropout=dropout, use_linear_projection=use_linear_projection,
                      upcast_attention=upcast_attention)
        # created before mid_block so that module (and attn_processors) order matches diffusers
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, in_channels=in_ch, out_channels=out_ch, num_layers=layers[i],
                transformer_layers_per_block=t_layers[i], num_attention_heads=heads[i],
                cross_attention_dim=cross_dims[i], add_downsample=i < n - 1,
                downsample_padding=downsample_padding, **common,
            ))

        self.mid_block = None
        if mid_block_type is not None:
            self.mid_block = UNetMidBlock2DCrossAttn(
                block_out_channels[-1], transformer_layers_per_block=t_layers[-1],
                num_attention_heads=heads[-1], cross_attention_dim=cross_dims[-1],
                output_scale_factor=mid_block_scale_factor, **common,
            )

        rev_ch = list(reversed(block_out_channels))
        rev_heads, rev_cross, rev_layers, rev_t_layers = (
            list(reversed(x)) for x in (heads, cross_dims, layers, t_layers))
        self.num_upsamplers = n - 1
        out_ch = rev_ch[0]
        for i, block_type in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, rev_ch[i]
            self.up_blocks.append(get_up_block(
                block_type, in_channels=rev_ch[min(i + 1, n - 1)], prev_output_channel=prev_ch,
                out_channels=out_ch, num_layers=rev_layers[i] + 1,
                transformer_layers_per_block=rev_t_layers[i], num_attention_heads=rev_heads[i],
                cross_attention_dim=rev_cross[i], add_upsample=i < n - 1, **common,
            ))

        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps, affine=True)
        self.conv_act = silu
        self.conv_out = Conv2d(block_out_channels[0], out_channels, conv_out_kernel,
                                  padding=(conv_out_kernel - 1) // 2)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UNet2DConditionModel:
        """Build from a diffusers unet/config.json dict (bookkeeping keys starting with '_' are ignored)."""
        return from_diffusers_config(cls, config, _check_config)

    def _timesteps(self, timestep: int | float | jt.Var | np.ndarray, batch: int) -> jt.Var:
        """Any scalar or [1]/[B] timesteps -> float32 [B] (diffusers broadcasts one value to the batch)."""
        if isinstance(timestep, jt.Var):
            t = timestep.reshape(-1).float32()
        else:
            t = jt.array(np.asarray(timestep, dtype=np.float32).reshape(-1))
        if t.shape[0] == 1 and batch != 1:
            t = t.broadcast((batch,))
        elif t.shape[0] != batch:
            raise InputError(f"got {t.shape[0]} timesteps for a batch of {batch}; pass one or one per sample")
        return t

    @staticmethod
    def _mask_to_bias(mask: jt.Var | None, dtype: str) -> jt.Var | None:
        # [B, K] keep-mask (1 keep, 0 discard) -> additive bias [B, 1, 1, K] (0 keep, -10000 discard)
        if mask is None:
            return None
        return ((1.0 - mask.cast(dtype)) * -10000.0).reshape(mask.shape[0], 1, 1, mask.shape[-1])

    def execute(
        self,
        sample: jt.Var,
        timestep: int | float | jt.Var | np.ndarray,
        encoder_hidden_states: jt.Var,
        attention_mask: jt.Var | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        down_block_additional_residuals: Sequence[jt.Var] | None = None,
        mid_block_additional_residual: jt.Var | None = None,
        encoder_attention_mask: jt.Var | None = None,
    ) -> jt.Var:
        """Predict noise (or v) for `sample` at `timestep` given text states; returns [B, out_channels, H, W].

        attention_mask / encoder_attention_mask: [B, K] keep-masks (1 keep, 0 discard) for the self- /
        cross-attention keys, as in diffusers; they reach the processors as additive [B, 1, 1, K] biases.
        cross_attention_kwargs are passed to every attention processor as keyword arguments.
        down_block_additional_residuals + mid_block_additional_residual: ControlNet residuals (both or none).
        """
        if sample.ndim != 4 or sample.shape[1] != self.in_channels:
            raise InputError(f"sample must be [B, {self.in_channels}, H, W], got {tuple(sample.shape)}")
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            raise InputError(
                "pass both down_block_additional_residuals and mid_block_additional_residual, or neither"
            )
        batch, dtype = sample.shape[0], sample.dtype
        # sizes not divisible by 2**num_upsamplers: upsample to the skip's size instead of x2
        forward_upsample_size = any(s % 2**self.num_upsamplers for s in sample.shape[-2:])
        attention_mask = self._mask_to_bias(attention_mask, dtype)
        encoder_attention_mask = self._mask_to_bias(encoder_attention_mask, dtype)
        kwargs = cross_attention_kwargs or None

        # 0. center input
        if self.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time: sinusoidal embedding in float32, then cast to the model's dtype (as diffusers)
        t_emb = get_timestep_embedding(
            self._timesteps(timestep, batch), self.time_proj_dim,
            flip_sin_to_cos=self.flip_sin_to_cos, downscale_freq_shift=self.freq_shift,
        )
        emb = self.time_embedding(t_emb.cast(dtype))

        # 2. pre-process
        sample = self.conv_in(sample)

        # 3. down
        skips = (sample,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                sample, res = block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=attention_mask, cross_attention_kwargs=kwargs,
                                    encoder_attention_mask=encoder_attention_mask)
            else:
                sample, res = block(sample, emb)
            skips += res
        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise InputError(f"got {len(down_block_additional_residuals)} down-block residuals; "
                                 f"this UNet has {len(skips)} skip connections")
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals, strict=True))

        # 4. mid
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=attention_mask, cross_attention_kwargs=kwargs,
                                    encoder_attention_mask=encoder_attention_mask)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        # 5. up: each block takes its len(resnets) newest skips
        for i, block in enumerate(self.up_blocks):
            n_res = len(block.resnets)
            res, skips = skips[-n_res:], skips[:-n_res]
            is_final = i == len(self.up_blocks) - 1
            upsample_size = tuple(skips[-1].shape[2:]) if forward_upsample_size and not is_final else None
            if block.has_cross_attention:
                sample = block(sample, res, emb, encoder_hidden_states=encoder_hidden_states,
                               cross_attention_kwargs=kwargs, upsample_size=upsample_size,
                               attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask)
            else:
                sample = block(sample, res, emb, upsample_size=upsample_size)

        # 6. post-process
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))
