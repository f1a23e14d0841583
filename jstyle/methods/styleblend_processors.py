"""StyleBlend's attention processors (Jittor): two branches in one batch share self-attention features.

Rows of every UNet call under classifier-free guidance, the official order: [coarse uncond, fine uncond, coarse,
fine]. In each attention layer (zichongc/jittor-L6810K2-StyleTransfer modules.py `styleblend_self_attention`,
`styleblend_cross_attention`) the coarse rows project Q, K, V with the UNet LoRA at `coarse_lora_scale`, the fine
rows at full scale (`to_out` at full scale for all rows); then, in the listed self-attention layers and while the
step index is below the layer's step count, one of the official injectors runs:
  "c2f"  structure_injector('c2f'):   Q of both fine rows <- Q of the conditional coarse row (row 2)
  "f2c"  appearance_injector('f2c'):  K, V of both coarse rows <- K, V of the conditional fine row (row 3)
  "both" feature_blender:             the two at once (for the c2f step count: the official code's choice)
Kept apart from jstyle.methods.styleblend so that its settings import without Jittor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import jittor as jt

from ..errors import ConfigError, InputError
from ..models.attention import Attention, AttnProcessor

__all__ = ["StyleBlendProcessor", "StepCounter", "blend_rows", "self_attention_layers", "styleblend_processors",
           "MODES"]

MODES = (None, "c2f", "f2c", "both")
COARSE, FINE = (0, 2), (1, 3)  # rows of [coarse uncond, fine uncond, coarse, fine]
Q_C2F = (0, 2, 2, 2)  # query[[1, 3]] = query[[2, 2]]
KV_F2C = (3, 1, 3, 3)  # key[[0, 2]] = key[[3, 3]], value likewise


class StepCounter:
    """The denoising step index the processors read (the official `Handler.cur_step`), set by the loop's callback."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, i: int, t: float, latents: jt.Var) -> None:
        self.step = i


def take_rows(x: jt.Var, rows: Sequence[int]) -> jt.Var:
    """x[rows] along the batch axis."""
    return jt.concat([x[r : r + 1] for r in rows])


def blend_rows(q: jt.Var, k: jt.Var, v: jt.Var, mode: str | None) -> tuple[jt.Var, jt.Var, jt.Var]:
    """The official injectors on [4, N, C] rows: c2f moves the coarse Q to the fine rows, f2c the fine K, V to the
    coarse rows, both does the two."""
    if mode in ("c2f", "both"):
        q = take_rows(q, Q_C2F)
    if mode in ("f2c", "both"):
        k, v = take_rows(k, KV_F2C), take_rows(v, KV_F2C)
    return q, k, v


@contextmanager
def _lora_scale(attn: Attention, scale: float) -> Iterator[None]:
    """to_q, to_k, to_v's LoRA (where they carry one) at `scale` times its current scale, inside the block."""
    layers = [m for m in (attn.to_q, attn.to_k, attn.to_v) if hasattr(m, "lora_A")]
    saved = [m.scale for m in layers]
    for m in layers:
        m.scale = m.scale * scale
    try:
        yield
    finally:
        for m, s in zip(layers, saved, strict=True):
            m.scale = s


class StyleBlendProcessor(AttnProcessor):
    """One layer's StyleBlend attention: per-branch LoRA scale, then `mode`'s injector while step < `steps`."""

    def __init__(self, coarse_lora_scale: float, counter: StepCounter, mode: str | None = None, steps: int = 0,
                 kernel: str | None = None):
        super().__init__(kernel)
        if mode not in MODES:
            raise ConfigError(f"StyleBlend mode {mode!r}: use one of {', '.join(map(str, MODES))}")
        self.coarse_lora_scale, self.counter, self.mode, self.steps = coarse_lora_scale, counter, mode, steps

    def project(self, attn: Attention, hidden_states: jt.Var,
                encoder_hidden_states: jt.Var | None) -> tuple[jt.Var, jt.Var, jt.Var]:
        if hidden_states.shape[0] != 4:
            raise InputError(f"StyleBlend runs 4 rows ([coarse, fine] x [uncond, cond], guidance_scale > 1), got "
                             f"{hidden_states.shape[0]}")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        fine = super().project(attn, take_rows(hidden_states, FINE), take_rows(context, FINE))
        with _lora_scale(attn, self.coarse_lora_scale):
            coarse = super().project(attn, take_rows(hidden_states, COARSE), take_rows(context, COARSE))
        q, k, v = (jt.concat([c[0:1], f[0:1], c[1:2], f[1:2]]) for c, f in zip(coarse, fine, strict=True))
        if self.mode is not None and self.counter.step < self.steps:
            q, k, v = blend_rows(q, k, v, self.mode)
        return q, k, v


def _block_order(name: str) -> tuple:
    """Sort key of an attention layer: down blocks, the mid block, then up blocks (the official `indexes`)."""
    parts = name.split(".")
    section = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}.get(parts[0], 3)
    return (section, *(int(p) for p in parts if p.isdigit()))


def self_attention_layers(names: Sequence[str]) -> list[str]:
    """Self-attention (attn1) layer names of a UNet in the official index order (0-15 on SD 1.x/2.x)."""
    return sorted((n for n in names if n.endswith("attn1")), key=_block_order)


def styleblend_processors(layer_names: Sequence[str], c2f_layers: Sequence[int], f2c_layers: Sequence[int],
                          coarse_lora_scale: float, c2f_steps: int, f2c_steps: int,
                          counter: StepCounter) -> dict[str, StyleBlendProcessor]:
    """{layer name: processor} for every attention layer of a UNet (names as unet.attn_processors without
    '.processor'), as the official `register_styleblend_modules` sets them: cross-attention with the coarse LoRA
    scale only; self-attention layer i with 'both' (c2f steps) if in both lists, 'c2f' or 'f2c' if in one."""
    ordered = self_attention_layers(layer_names)
    bad = sorted(i for i in {*c2f_layers, *f2c_layers} if not 0 <= i < len(ordered))
    if bad:
        raise ConfigError(f"StyleBlend layer {bad[0]}: this UNet has self-attention layers 0-{len(ordered) - 1}")
    index = {name: i for i, name in enumerate(ordered)}
    out = {}
    for name in layer_names:
        i = index.get(name)
        c2f, f2c = i in c2f_layers, i in f2c_layers
        mode = "both" if c2f and f2c else "c2f" if c2f else "f2c" if f2c else None
        steps = f2c_steps if mode == "f2c" else c2f_steps if mode else 0
        out[name] = StyleBlendProcessor(coarse_lora_scale, counter, mode, steps)
    return out
