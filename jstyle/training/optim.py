"""AdamW with torch.optim.AdamW's semantics, learning-rate schedules, gradient clipping, dynamic loss
scaling (Jittor).

Jittor's own `jt.optim.AdamW` counts bias-correction steps per `backward()` call (wrong under gradient
accumulation) and does not save its moments; this one counts optimizer steps, takes the gradients
explicitly, and round-trips its state through numpy for exact resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jittor as jt
import numpy as np

from ..errors import ConfigError

__all__ = ["AdamW", "SCHEDULES", "lr_at", "clip_grad_norm", "global_norm", "all_finite", "LossScaler"]

SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear", "step")


class AdamW:
    """Decoupled weight decay Adam (Loshchilov & Hutter 2019), as torch.optim.AdamW (amsgrad=False).

    p <- p (1 - lr wd);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: list[jt.Var], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 1e-2, eps: float = 1e-8):
        if not params:
            raise ConfigError("the optimizer got no parameters; inject LoRA layers first")
        self.params = list(params)
        self.lr, self.betas, self.weight_decay, self.eps = lr, tuple(betas), weight_decay, eps
        self.m = [jt.zeros(p.shape, "float32").stop_grad() for p in self.params]
        self.v = [jt.zeros(p.shape, "float32").stop_grad() for p in self.params]
        self.t = 0

    def step(self, grads: list[jt.Var], lr: float | None = None, lr_scale: list[float] | None = None) -> None:
        """One update from `grads` (same order as params) at learning rate `lr` (default self.lr);
        `lr_scale` multiplies it per parameter (e.g. a lower text-encoder lr)."""
        base_lr = self.lr if lr is None else lr
        scales = lr_scale or [1.0] * len(self.params)
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        bc2_sqrt = math.sqrt(bc2)
        for p, g, m, v, k in zip(self.params, grads, self.m, self.v, scales, strict=True):
            lr = base_lr * k
            step_size = lr / bc1
            g = g.float32()
            m.update(b1 * m + (1 - b1) * g)
            v.update(b2 * v + (1 - b2) * g * g)
            new = p * (1 - lr * self.weight_decay) - step_size * m / (jt.sqrt(v) / bc2_sqrt + self.eps)
            p.update(new.cast(p.dtype))
        jt.sync(self.params + self.m + self.v)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self.t, np.int64)}
        for i, (m, v) in enumerate(zip(self.m, self.v, strict=True)):
            out[f"m.{i}"], out[f"v.{i}"] = m.numpy(), v.numpy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        n = sum(k.startswith("m.") for k in state)
        if n != len(self.params):
            raise ConfigError(f"optimizer state has {n} tensors for {len(self.params)} parameters")
        self.t = int(state["t"])
        for i, (m, v) in enumerate(zip(self.m, self.v, strict=True)):
            m.assign(jt.array(state[f"m.{i}"]))
            v.assign(jt.array(state[f"v.{i}"]))


def lr_at(step: int, base_lr: float, schedule: str, warmup: int, total: int, step_size: int = 1,
          gamma: float = 1.0) -> float:
    """Learning rate for optimizer step `step` (0-based), as diffusers' get_scheduler.

    warmup: lr * step / warmup; then constant, cosine (0.5 (1 + cos(pi p))) or linear (1 - p) decay,
    p = (step - warmup) / (total - warmup). "step": lr gamma^floor(step / step_size), torch's StepLR stepped
    after every optimizer step (no warmup).
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown lr schedule '{schedule}'; use one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** (step // max(1, step_size))
    if step < warmup:
        return base_lr * step / max(1, warmup)
    if schedule == "constant_with_warmup":
        return base_lr
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return base_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return base_lr * max(0.0, 1.0 - progress)


def global_norm(grads: list[jt.Var]) -> float:
    """sqrt(sum of squares) over all gradients (float)."""
    total = sum(float((g.float32() * g.float32()).sum().item()) for g in grads)
    return math.sqrt(total)


def clip_grad_norm(grads: list[jt.Var], max_norm: float) -> tuple[list[jt.Var], float]:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)); returns (grads, norm)."""
    norm = global_norm(grads)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        grads = [g * coef for g in grads]
    return grads, norm


def all_finite(grads: list[jt.Var]) -> bool:
    """True when no gradient holds an inf or a NaN (0 * x is 0 for finite x, NaN otherwise; no overflow)."""
    return math.isfinite(sum(float((g.float32() * 0.0).sum().item()) for g in grads))


@dataclass
class LossScaler:
    """Dynamic loss scaling for float16 mixed precision, as torch.cuda.amp.GradScaler (same defaults).

    The loss is multiplied by `scale` before the backward pass and the gradients divided by it after
    (before clipping). A step whose unscaled gradients hold an inf or a NaN is skipped and the scale
    multiplied by `backoff_factor`; after `growth_interval` finite steps in a row it is multiplied by
    `growth_factor`. `enabled=False` is a fixed scale of 1 (float32 training).
    """

    scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    enabled: bool = True
    good_steps: int = 0  # finite steps since the last skip or growth (GradScaler's growth tracker)

    def __post_init__(self) -> None:
        if not self.enabled:
            self.scale = 1.0
        if self.scale <= 0 or self.growth_factor <= 1 or not 0 < self.backoff_factor < 1 or self.growth_interval < 1:
            raise ConfigError("loss scaler: need scale > 0, growth_factor > 1, 0 < backoff_factor < 1, "
                              "growth_interval >= 1")

    def unscale(self, grads: list[jt.Var]) -> list[jt.Var]:
        """g / scale (identity when disabled)."""
        return grads if self.scale == 1.0 else [g / self.scale for g in grads]

    def update(self, finite: bool) -> bool:
        """Record one step's outcome; returns True when the optimizer step must be skipped."""
        if not self.enabled:
            return False
        if not finite:  # GradScaler: scale *= backoff_factor, growth tracker reset, step skipped
            self.scale *= self.backoff_factor
            self.good_steps = 0
            return True
        self.good_steps += 1
        if self.good_steps == self.growth_interval:  # GradScaler: scale *= growth_factor, tracker reset
            self.scale *= self.growth_factor
            self.good_steps = 0
        return False
