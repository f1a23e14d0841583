"""DiffStyle: training-free style transfer through the UNet's h-space (Jeong et al., WACV 2024).

Sampling starts from the style image's DDIM-inverted x_T. While t >= t_edit the UNet mid-block
output h (the "h-space") is replaced by a spherical interpolation between the current (style) h and
the content image's h recorded at the same timestep during its inversion, rescaled to the style's
norm. The step is asymmetric (Asyrp): x0 comes from the injected prediction, the direction term
from the plain one, so both are evaluated (one batch of two). Quality boosting adds DDIM noise
(eta) for t <= t_boost, and dt_lambda scales the direction term for t >= 950.

Reading of the two knobs the spec names without equations (the official code was not reachable
here): omega mixes the x0 predictions, x0 = omega P(eps_inj) + (1 - omega) P(eps); dt_lambda
multiplies the direction term sqrt(1 - a_prev - sigma^2) eps. Defaults (omega 1, dt_lambda 0.9985
only for t >= 950) keep the paper's behaviour elsewhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jittor as jt
import numpy as np

from ..cli import run_cli
from ..errors import ConfigError, InputError
from ..models.hooks import HookHandle
from ..ops import randn
from ..schedulers.common import SchedulerOutput, ddim_sigma, ddim_step, predict_x0_eps
from ..schedulers.ddim import DDIMScheduler
from .inversion import ddim_invert, inversion_timesteps, make_scheduler

__all__ = ["DiffStyleConfig", "slerp", "match_norm", "inject_h", "diffstyle", "main"]

DT_LAMBDA_FROM = 950  # dt_lambda applies for t >= this


@dataclass(frozen=True)
class DiffStyleConfig:
    """DiffStyle settings (paper defaults; t_boost 0 turns quality boosting off, as for artistic refs)."""

    gamma: float = field(default=0.3, metadata={"help": "DiffStyle content injection ratio in [0, 1] "
                                                        "(0 = the style's own trajectory)"})
    t_edit: int = 400  # inject h for t >= t_edit
    t_boost: int = 200  # quality boosting (eta noise) for t <= t_boost
    eta: float = 1.0  # DDIM eta used while boosting
    omega: float = 1.0  # weight of the injected x0 prediction
    dt_lambda: float = 0.9985  # direction-term scale for t >= 950
    steps: int = field(default=50, metadata={"help": "DiffStyle DDIM schedule length (run_all inverts and "
                                                     "denoises steps - 1, skipping t = 981)"})
    start_step: int | None = None  # steps inverted and denoised (None = all of them)
    seed: int = 0  # noise of the boosted steps

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"DiffStyle gamma must be in [0, 1], got {self.gamma}")
        for name in ("t_edit", "t_boost"):
            if not 0 <= getattr(self, name) <= 1000:
                raise ConfigError(f"DiffStyle {name} must be in [0, 1000], got {getattr(self, name)}")
        if not 0.0 <= self.omega <= 1.0 or self.eta < 0 or self.dt_lambda <= 0:
            raise ConfigError("DiffStyle needs omega in [0, 1], eta >= 0 and dt_lambda > 0")
        if self.steps < 1:
            raise ConfigError(f"DiffStyle steps must be >= 1, got {self.steps}")
        if self.start_step is not None and not 1 <= self.start_step <= self.steps:
            raise ConfigError(f"DiffStyle start_step must be in 1..{self.steps}, got {self.start_step}")


def slerp(a: jt.Var, b: jt.Var, gamma: float, eps: float = 1e-7) -> jt.Var:
    """Spherical interpolation per batch item (flattened): 0 -> a, 1 -> b."""
    # slerp(g; a, b) = sin((1-g) th)/sin(th) a + sin(g th)/sin(th) b,  cos(th) = <a, b> / (|a| |b|)
    shape = a.shape
    a2, b2 = a.reshape(shape[0], -1), b.reshape(shape[0], -1)
    cos = (a2 * b2).sum(1) / (jt.sqrt((a2 * a2).sum(1) * (b2 * b2).sum(1)) + eps)
    theta = jt.acos(jt.clamp(cos, -1 + eps, 1 - eps))
    s = jt.sin(theta)
    wa, wb = jt.sin((1 - gamma) * theta) / s, jt.sin(gamma * theta) / s
    return (wa.reshape(-1, 1) * a2 + wb.reshape(-1, 1) * b2).reshape(shape)


def match_norm(h_content: jt.Var, h_style: jt.Var) -> jt.Var:
    """h_content rescaled to h_style's norm, per batch item."""
    # (|h_s| / |h_c|) h_c
    n = h_content.shape[0]
    nc = jt.sqrt((h_content.reshape(n, -1) ** 2).sum(1))
    ns = jt.sqrt((h_style.reshape(n, -1) ** 2).sum(1))
    return h_content * (ns / nc).reshape(n, *([1] * (h_content.ndim - 1)))


def inject_h(h_style: jt.Var, h_content: jt.Var, gamma: float) -> jt.Var:
    """The injected h: slerp(gamma; h_style, (|h_style|/|h_content|) h_content)."""
    return slerp(h_style, match_norm(h_content, h_style), gamma)


def _mid_block_hook(unet, fn: Callable[[jt.Var], jt.Var]) -> HookHandle:
    """Route the mid-block's output h through fn (a forward wrapper, removed by the handle / leaving `with`)."""
    block = unet.mid_block
    if block is None:
        raise ConfigError("DiffStyle needs a UNet with a mid block (h-space)")
    return block.register_forward_wrapper(lambda forward, *args, **kwargs: fn(forward(*args, **kwargs)))


def _record_content_h(pipe, latents: jt.Var, context: jt.Var, cfg: DiffStyleConfig) -> dict[int, jt.Var]:
    """h of the content latents at every timestep of their DDIM inversion."""
    store: dict[int, jt.Var] = {}
    current = {}

    def keep(h: jt.Var) -> jt.Var:
        store[current["t"]] = h.clone().stop_grad()
        return h

    with _mid_block_hook(pipe.unet, keep):
        ddim_invert(pipe, latents, context, cfg.steps, callback=lambda i, t, x: current.update(t=t),
                    num_inversion_steps=cfg.start_step)
    return store


class _AsymmetricStep:
    """DiffStyle's DDIM step in the scheduler interface `StableDiffusion.denoise` drives: on edit steps the model
    output holds two branches ([injected; plain], 2n rows), x0 comes from both (omega) and eps from the plain one;
    eta noise for t <= t_boost, drawn from the config's seed; dt_lambda on the direction term for t >= 950."""

    def __init__(self, scheduler: DDIMScheduler, cfg: DiffStyleConfig, batch: int):
        self.scheduler, self.cfg, self.n = scheduler, cfg, batch
        self.rng = np.random.default_rng(cfg.seed)

    def scale_model_input(self, sample: jt.Var, timestep: int) -> jt.Var:
        return sample

    def step(self, model_output: jt.Var, timestep: int, sample: jt.Var) -> SchedulerOutput:
        cfg, n, t, kind = self.cfg, self.n, int(timestep), self.scheduler.config.prediction_type
        a_t, a_prev = self.scheduler.alphas_cumprod[t], self.scheduler.alpha_prev(t)
        if model_output.shape[0] == 2 * n:  # edit step: [injected; plain]
            x0_inj, _ = predict_x0_eps(model_output[:n], sample, a_t, kind)
            x0, eps = predict_x0_eps(model_output[n:], sample, a_t, kind)
            x0 = cfg.omega * x0_inj + (1 - cfg.omega) * x0  # x0 = w P(eps_inj) + (1 - w) P(eps)
        else:
            x0, eps = predict_x0_eps(model_output, sample, a_t, kind)
        sigma = ddim_sigma(a_t, a_prev, cfg.eta if t <= cfg.t_boost else 0.0)
        noise = randn(tuple(sample.shape), self.rng, str(sample.dtype)) if sigma > 0 else None
        lam = cfg.dt_lambda if t >= DT_LAMBDA_FROM else 1.0
        # x_prev = sqrt(a_prev) x0 + lam sqrt(1 - a_prev - sigma^2) eps + sigma z
        return SchedulerOutput(ddim_step(x0, eps, a_prev, sigma, noise, direction_scale=lam), x0)


def _sample(pipe, x: jt.Var, context: jt.Var, h_content: dict[int, jt.Var], cfg: DiffStyleConfig) -> jt.Var:
    scheduler = make_scheduler(pipe, cfg.steps)
    n = x.shape[0]
    both = jt.concat([context, context])
    current: dict = {}

    def edits(t: int) -> bool:
        return t >= cfg.t_edit and cfg.gamma > 0

    def on_step(i: int, t: int, latents: jt.Var) -> None:
        current.clear()
        if edits(t):
            current["t"] = t

    def swap(h: jt.Var) -> jt.Var:  # first half of the batch: injected; second half: plain
        if "t" not in current:
            return h
        return jt.concat([inject_h(h[:n], h_content[current["t"]], cfg.gamma), h[n:]])

    with _mid_block_hook(pipe.unet, swap):
        return pipe.denoise(x, lambda i, t: both if edits(t) else context, _AsymmetricStep(scheduler, cfg, n),
                            inversion_timesteps(scheduler, cfg.start_step)[::-1], callback=on_step)


def diffstyle(pipe, content_images: np.ndarray, style_image: np.ndarray,
              cfg: DiffStyleConfig = DiffStyleConfig()) -> np.ndarray:
    """Content images (uint8 [N, H, W, 3]) in the style of one image (uint8 [H, W, 3]) -> uint8 [N, H, W, 3]."""
    if style_image is None:
        raise InputError("DiffStyle needs a style image")
    content = pipe.encode_uint8(content_images)
    style = pipe.encode_uint8(style_image)
    if style.shape[0] != 1 or style.shape[2:] != content.shape[2:]:
        raise InputError(f"one style image of the content's size, got {list(style.shape)} for {list(content.shape)}")
    context = pipe.encode_prompt("")
    n = content.shape[0]
    ctx = jt.concat([context] * n) if n > 1 else context
    x_t = ddim_invert(pipe, style, context, cfg.steps, num_inversion_steps=cfg.start_step)[-1]
    h_content = _record_content_h(pipe, content, ctx, cfg)
    latents = _sample(pipe, jt.concat([x_t] * n) if n > 1 else x_t, ctx, h_content, cfg)
    return pipe.decode_latents(latents)


# ----------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = DiffStyleConfig()
    p = argparse.ArgumentParser(prog="python -m jstyle.methods.diffstyle", description=__doc__.split("\n\n")[0],
                                epilog="output: <out>/<content>-<style>.png, written atomically; existing files kept")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="diffusers Stable Diffusion folder")
    p.add_argument("--content", type=Path, nargs="+", required=True, metavar="IMG", help="content image(s)")
    p.add_argument("--style", type=Path, required=True, metavar="IMG", help="style image")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder, created if missing")
    p.add_argument("--size", type=int, default=512, help="images are centre-cropped, resized to SIZE^2 (default 512)")
    p.add_argument("--start-step", type=int, default=None, help="steps inverted and denoised (default all)")
    for name in ("gamma", "t_edit", "t_boost", "eta", "omega", "dt_lambda", "steps", "seed"):
        value = getattr(d, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="where Jittor runs (default auto)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..device import use_device
    from ..io import read_rgb, save_png
    from ..pipeline import load_pipeline

    cfg = DiffStyleConfig(gamma=args.gamma, t_edit=args.t_edit, t_boost=args.t_boost, eta=args.eta,
                          omega=args.omega, dt_lambda=args.dt_lambda, steps=args.steps,
                          start_step=args.start_step, seed=args.seed)
    style = read_rgb(args.style, args.size)
    todo = [(c, args.out / f"{c.stem}-{args.style.stem}.png") for c in args.content]
    todo = [(c, o) for c, o in todo if not o.exists()]
    if not todo:
        print(f"all images already in {args.out}; nothing to do")
        return 0
    use_device(args.device)
    pipe = load_pipeline(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    for content, path in todo:
        save_png(diffstyle(pipe, read_rgb(content, args.size)[None], style, cfg)[0], path)
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line `error: ...` for a user-fixable problem)."""
    return run_cli(build_parser(), run, argv)


# ------------------------------------------------------------------------------------- run_all's inject stage


def inject(pipe, job) -> tuple[np.ndarray, dict]:
    """run_all's inject stage (a jstyle.methods.registry.InjectJob): DiffStyle of the content with the
    reference image the job's rule picks."""
    from ..io import read_rgb
    from .reference import choose_reference

    ref = choose_reference(job.content, job.references, job.reference_rule)
    return diffstyle(pipe, job.content[None], read_rgb(ref, job.size), job.settings)[0], {"reference": ref.name}


if __name__ == "__main__":
    sys.exit(main())
