"""DiffStyle: training-free style transfer through the UNet's h-space (Jeong et al., WACV 2024), as its authors'
code runs it (curryjung/DiffStyle_official @ 744c59a: diffusion_latent.py::diff_style, utils/diffusion_utils.py::
denoising_step, models/ddpm/diffusion.py; docs/methods-sources.md), on a latent Stable Diffusion UNet.

Both images are inverted at the latent's own label over seq_of(inv_steps) (int(linspace(0, 1, n) * 999)) up to
alpha-bar[999], the content's mid-block output h kept per label. Generation starts from the style's x_T and
walks seq_of(steps) down to the clean latent. Only on the *replace steps* (labels also in
seq_of(content_replace_step), 50 by default, so strength and noise do not grow with --steps):
  - for t >= t_edit, h -> slerp(gamma; h, (|h| / |h_c|) h_c) with h_c the content's h at the closest label, and
    the asymmetric step: x0 from the injected eps, the direction from the plain one;
  - quality boosting: DDIM eta 1 for t <= t_boost (eta 0 elsewhere);
  - dt_lambda != 1 and t >= dt_end: x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps dt_lambda (no noise);
  - omega > 0: style calibration: x0 rescaled to the plain x0's std, x_t += sqrt(a_t) dx0 + omega sqrt(1 - a_t)
    (eps_inj - eps), the UNet again on the shifted latent and a plain step from it (omega 0, the default: off).
Other steps are plain eta-0 DDIM. Recipes (the README's): artistic (default: the challenge's references are
artworks) gamma 0.4, no boosting, dt_lambda 1, 1000 steps inverted and generated; in-domain = the README's
"#AFHQ" invocation, gamma 0.3, t_boost 200, dt_lambda 1, 1000 generated from 50 inverted. Adapted: the latent
UNet with the empty prompt and no CFG (the official model is an unconditional pixel DDPM), v-prediction read as
eps, slerp clamped against parallel h (the official divides by sin(0) there).

    python -m jstyle.methods.diffstyle --model DIR --content IMG [IMG ...] --style IMG --out DIR [--recipe in-domain]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cli import run_cli
from ..errors import ConfigError, InputError

if TYPE_CHECKING:
    import jittor as jt

    from ..models.hooks import HookHandle

__all__ = ["DiffStyleConfig", "RECIPES", "seq_of", "slerp", "match_norm", "inject_h", "injecting_labels", "diffstyle",
           "main"]

# The README's recipes (hs_coeff = gamma, t_noise = t_boost, n_gen_step = steps, n_inv_step = inv_steps; None:
# = steps); main.py's defaults for the rest: t_edit 400, dt_end 950, omega 0, content_replace_step 50, t_0 999.
RECIPES: dict[str, dict[str, Any]] = {
    # "Harmonization-like style mixing with artistic references": 1000 / 1000 steps
    "artistic": dict(gamma=0.4, t_boost=0, dt_lambda=1.0, steps=1000, inv_steps=None),
    # "#AFHQ", exactly (h_gamma 0.3, t_boost 200, n_gen_step 1000, n_inv_step 50, omega 0; no --dt_lambda: 1.0).
    # Not "#CelebA_HQ" (dt_lambda 0.9985 with --use_mask, a feature mask jstyle lacks) nor script_diffstyle.sh
    # (dt_lambda 0.9985, n_inv_step 1000, t_edit 500): --diffstyle-dt-lambda etc. give those
    "in-domain": dict(gamma=0.3, t_boost=200, dt_lambda=1.0, steps=1000, inv_steps=50),
}
DEFAULT_RECIPE = "artistic"


@dataclass(frozen=True)
class DiffStyleConfig:
    """DiffStyle settings (main.py's names in the help). `recipe` sets the defaults of gamma, t_boost, dt_lambda,
    steps and inv_steps (None = the recipe's); a value given explicitly wins."""

    recipe: str = field(default=DEFAULT_RECIPE, metadata={"help": (
        "DiffStyle recipe (the official README's): artistic (gamma 0.4, no boosting, dt_lambda 1, 1000/1000 steps) "
        "or in-domain (its #AFHQ line: gamma 0.3, t_boost 200, 1000 steps from a 50-step inversion); it presets "
        "the other DiffStyle settings. artistic unless given: the challenge's style references are artworks")})
    gamma: float | None = field(default=None, metadata={"help": "DiffStyle content injection ratio hs_coeff in "
                                                                "[0, 1] (0 = the style's own trajectory)",
                                                        "default": "the recipe's: artistic 0.4, in-domain 0.3"})
    t_edit: int = field(default=400, metadata={"help": "DiffStyle: inject h on replace steps with t >= t_edit"})
    t_boost: int | None = field(default=None, metadata={"help": "DiffStyle quality boosting t_noise: DDIM eta 1 on "
                                                                "replace steps with t <= t_boost",
                                                        "default": "the recipe's: artistic 0, in-domain 200"})
    omega: float = field(default=0.0, metadata={"help": "DiffStyle style calibration weight (0 = off, as main.py; "
                                                        "> 0 re-runs the UNet on the calibrated latent)"})
    dt_lambda: float | None = field(default=None, metadata={"help": "DiffStyle direction-term scale on replace steps "
                                                                    "with t >= dt_end",
                                                            "default": "the recipe's: artistic 1, in-domain 0.9985"})
    dt_end: int = field(default=950, metadata={"help": "DiffStyle: dt_lambda applies for t >= dt_end"})
    steps: int | None = field(default=None, metadata={"help": "DiffStyle generation steps n_gen_step",
                                                      "default": "the recipe's: 1000"})
    inv_steps: int | None = field(default=None, metadata={"help": "DiffStyle inversion steps n_inv_step",
                                                          "default": "the recipe's: artistic = steps, in-domain 50"})
    content_replace_step: int = field(default=50, metadata={"help": "DiffStyle: inject/boost only on the labels of "
                                                                    "a CONTENT_REPLACE_STEP-step schedule (0: all)"})
    t_0: int = 999  # the noisiest label of inversion and generation
    seed: int | tuple[int, ...] = 0  # default_rng seed of the boosted steps' noise (run_all: the image's)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ConfigError(f"DiffStyle recipe '{self.recipe}' unknown; use {' or '.join(RECIPES)}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.steps if name == "inv_steps" and value is None else value)
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"DiffStyle gamma must be in [0, 1], got {self.gamma}")
        for name in ("t_edit", "t_boost", "dt_end"):
            if not 0 <= getattr(self, name) <= 1000:
                raise ConfigError(f"DiffStyle {name} must be in [0, 1000], got {getattr(self, name)}")
        if self.omega < 0 or self.dt_lambda <= 0:
            raise ConfigError("DiffStyle needs omega >= 0 and dt_lambda > 0")
        if not 1 <= self.t_0 <= 999:
            raise ConfigError(f"DiffStyle t_0 must be in 1..999, got {self.t_0}")
        if not 1 <= self.steps <= self.t_0 + 1:
            raise ConfigError(f"DiffStyle steps must be in 1..{self.t_0 + 1}, got {self.steps}")
        if not 2 <= self.inv_steps <= self.t_0 + 1:
            raise ConfigError(f"DiffStyle inv_steps must be in 2..{self.t_0 + 1}, got {self.inv_steps}")
        if self.content_replace_step < -1 or self.content_replace_step > self.t_0 + 1:
            raise ConfigError(f"DiffStyle content_replace_step must be in 0..{self.t_0 + 1} (0: every step), "
                              f"got {self.content_replace_step}")


def seq_of(n: int, t_0: int = 999) -> list[int]:
    """diffusion_latent.py's schedule: [int(s + 1e-6) for s in linspace(0, 1, n) * t_0], ascending labels."""
    return [int(s + 1e-6) for s in list(np.linspace(0, 1, n) * t_0)]


def replace_labels(cfg: DiffStyleConfig) -> set[int]:
    """The generation labels that inject and boost: seq_of(content_replace_step) (0 or -1: all of seq_of(steps))."""
    if cfg.content_replace_step in (0, -1):
        return set(seq_of(cfg.steps, cfg.t_0))
    return set(seq_of(cfg.content_replace_step, cfg.t_0))


def injecting_labels(cfg: DiffStyleConfig) -> list[int]:
    """The generation labels that inject the content's h: replace labels >= t_edit, descending (none if gamma 0)."""
    replace = replace_labels(cfg)
    return [t for t in seq_of(cfg.steps, cfg.t_0)[::-1] if t in replace and t >= cfg.t_edit] if cfg.gamma > 0 else []


def slerp(a: jt.Var, b: jt.Var, gamma: float, eps: float = 1e-7) -> jt.Var:
    """Spherical interpolation per batch item (flattened): 0 -> a, 1 -> b."""
    import jittor as jt

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
    import jittor as jt

    # (|h_s| / |h_c|) h_c
    n = h_content.shape[0]
    nc = jt.sqrt((h_content.reshape(n, -1) ** 2).sum(1))
    ns = jt.sqrt((h_style.reshape(n, -1) ** 2).sum(1))
    return h_content * (ns / nc).reshape(n, *([1] * (h_content.ndim - 1)))


def inject_h(h_style: jt.Var, h_content: jt.Var, gamma: float) -> jt.Var:
    """The injected h: slerp(gamma; h_style, (|h_style|/|h_content|) h_content) (diffusion.py's h2)."""
    return slerp(h_style, match_norm(h_content, h_style), gamma)


def calibrate(x: jt.Var, x0_inj: jt.Var, x0: jt.Var, eps_inj: jt.Var, eps: jt.Var, a_t: np.float32,
              omega: float) -> jt.Var:
    """denoising_step's style calibration: the shifted latent x + dx (the UNet then runs again on it)."""
    from ..ops import mean_std

    # new_P = m(x0_inj) + (x0_inj - m(x0_inj)) std(x0) / std(x0_inj);  dx = sqrt(a) (new_P - P) + w sqrt(1-a) det
    m_new = mean_std(x0_inj, dims=(1, 2, 3))[0]
    _, s_p = mean_std(x0 - mean_std(x0, dims=(1, 2, 3))[0], dims=(1, 2, 3))
    var_new = x0_inj - m_new
    _, s_var_new = mean_std(var_new, dims=(1, 2, 3))
    new_p = m_new + var_new * (s_p / s_var_new)
    return x + (float(np.sqrt(a_t)) * (new_p - x0) + (omega * float(np.sqrt(np.float32(1) - a_t))) * (eps_inj - eps))


def _mid_block_hook(unet, fn: Callable[[jt.Var], jt.Var]) -> HookHandle:
    """Route the mid-block's output h through fn (a forward wrapper, removed by the handle / leaving `with`)."""
    block = unet.mid_block
    if block is None:
        raise ConfigError("DiffStyle needs a UNet with a mid block (h-space)")
    return block.register_forward_wrapper(lambda forward, *args, **kwargs: fn(forward(*args, **kwargs)))


def invert(pipe, latents: jt.Var, context: jt.Var, cfg: DiffStyleConfig) -> tuple[jt.Var, dict[int, jt.Var]]:
    """precompute_pairs_with_h: own-label inversion over seq_of(inv_steps) (the UNet at label i on the latent at
    level i, landing on the next label's level) -> (x_T at alpha-bar[t_0], {label i: mid-block h of that call})."""
    from .inversion import invert_along, make_scheduler

    acp = make_scheduler(pipe, 1).alphas_cumprod
    seq = seq_of(cfg.inv_steps, cfg.t_0)
    store: dict[int, jt.Var] = {}
    current = {}

    def keep(h: jt.Var) -> jt.Var:
        store[current["t"]] = h.clone().stop_grad()
        return h

    with _mid_block_hook(pipe.unet, keep):
        out = invert_along(pipe, latents, context, [(i, acp[i], acp[j]) for i, j in zip(seq[:-1], seq[1:])],
                           callback=lambda k, t, x: current.update(t=t))
    return out[-1], store


class _DiffStyleStep:
    """denoising_step in the scheduler interface `StableDiffusion.denoise` drives. Injected steps get two branches
    ([injected; plain], 2n rows): x0 from the injected eps, the direction from the plain one. Replace steps: eta 1
    for t <= t_boost (noise drawn for every DDIM update with eta != 0, as the official randn_like calls), dt_lambda
    for t >= dt_end, and with omega the calibration and `rerun` (the UNet without injection)."""

    def __init__(self, pipe, cfg: DiffStyleConfig, batch: int, rerun: Callable[[jt.Var, int], jt.Var]):
        from .inversion import make_scheduler

        self.cfg, self.n, self.rerun = cfg, batch, rerun
        self.acp = make_scheduler(pipe, 1).alphas_cumprod
        self.kind = pipe.scheduler_config.get("prediction_type", "epsilon")
        seq = seq_of(cfg.steps, cfg.t_0)
        self.next = dict(zip(seq, [-1] + seq[:-1]))
        self.replace = replace_labels(cfg)
        self.rng = np.random.default_rng(cfg.seed)

    def scale_model_input(self, sample: jt.Var, timestep: int) -> jt.Var:
        return sample

    def _ddim(self, x0: jt.Var, eps: jt.Var, a_t: np.float32, a_next: np.float32, eta: float) -> jt.Var:
        from ..ops import randn
        from ..schedulers.common import ddim_sigma, ddim_step

        if not eta:  # x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps
            return ddim_step(x0, eps, a_next)
        sigma = ddim_sigma(a_t, a_next, eta)  # c1; c2 = sqrt(1 - a_next - c1^2)
        return ddim_step(x0, eps, a_next, sigma, randn(tuple(x0.shape), self.rng, str(x0.dtype)))

    def step(self, model_output: jt.Var, timestep: int, sample: jt.Var):
        from ..schedulers.common import SchedulerOutput, ddim_step, predict_x0_eps

        cfg, n, t = self.cfg, self.n, int(timestep)
        a_t = self.acp[t]
        a_next = np.float32(1.0) if self.next[t] < 0 else self.acp[self.next[t]]
        x0, eps = predict_x0_eps(model_output[n:] if model_output.shape[0] == 2 * n else model_output, sample, a_t,
                                 self.kind)
        x0_inj, eps_inj = (predict_x0_eps(model_output[:n], sample, a_t, self.kind) if model_output.shape[0] == 2 * n
                           else (x0, eps))
        if t not in self.replace:
            return SchedulerOutput(ddim_step(x0, eps, a_next), x0)
        eta = 0.0 if t > cfg.t_boost else 1.0
        x_next = self._ddim(x0_inj, eps, a_t, a_next, eta)
        if cfg.dt_lambda != 1 and t >= cfg.dt_end:  # x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps dt_lambda
            x_next = ddim_step(x0_inj, eps, a_next, direction_scale=cfg.dt_lambda)
        if not cfg.omega:
            return SchedulerOutput(x_next, x0_inj)
        x = calibrate(sample, x0_inj, x0, eps_inj, eps, a_t, cfg.omega)
        x0, eps = predict_x0_eps(self.rerun(x, t), x, a_t, self.kind)
        return SchedulerOutput(self._ddim(x0, eps, a_t, a_next, eta), x0)


def generate(pipe, x_t: jt.Var, context: jt.Var, h_content: dict[int, jt.Var], cfg: DiffStyleConfig) -> jt.Var:
    """diff_style's generation from x_T over reversed(seq_of(steps)) with the content's h -> clean latents."""
    import jittor as jt

    n = x_t.shape[0]
    both = jt.concat([context, context])
    keys = sorted(h_content, reverse=True)  # take_closest: min |k - t|, ties to the larger label
    injecting = set(injecting_labels(cfg))
    current: dict = {}

    def injects(t: int) -> bool:
        return int(t) in injecting

    def on_step(i: int, t: int, latents: jt.Var) -> None:
        current.clear()
        if injects(t):
            current["h"] = h_content[min(keys, key=lambda k: abs(k - int(t)))]

    def swap(h: jt.Var) -> jt.Var:  # first half of the batch: injected; second half: plain
        if "h" not in current:
            return h
        return jt.concat([inject_h(h[:n], current["h"], cfg.gamma), h[n:]])

    def rerun(x: jt.Var, t: int) -> jt.Var:  # the calibration's UNet call, without injection
        current.clear()
        return pipe.unet(x, t, context)

    step = _DiffStyleStep(pipe, cfg, n, rerun)
    with _mid_block_hook(pipe.unet, swap):
        return pipe.denoise(x_t, lambda i, t: both if injects(t) else context, step,
                            seq_of(cfg.steps, cfg.t_0)[::-1], callback=on_step)


def diffstyle(pipe, content_images: np.ndarray, style_image: np.ndarray,
              cfg: DiffStyleConfig = DiffStyleConfig()) -> np.ndarray:
    """Content images (uint8 [N, H, W, 3]) in the style of one image (uint8 [H, W, 3]) -> uint8 [N, H, W, 3]."""
    import jittor as jt

    if style_image is None:
        raise InputError("DiffStyle needs a style image")
    n_inject = len(injecting_labels(cfg))
    if cfg.gamma > 0 and n_inject < 2:  # e.g. 20 steps: only label 999 is also on the 50-step replace schedule
        why = ("" if cfg.content_replace_step in (0, -1) else
               f" (the labels >= t_edit {cfg.t_edit} also on a {cfg.content_replace_step}-step schedule; "
               "content_replace_step 0 injects on every step >= t_edit)")
        warnings.warn(f"DiffStyle injects the content on {n_inject} of {cfg.steps} steps{why}", stacklevel=2)
    content = pipe.encode_uint8(content_images)
    style = pipe.encode_uint8(style_image)
    if style.shape[0] != 1 or style.shape[2:] != content.shape[2:]:
        raise InputError(f"one style image of the content's size, got {list(style.shape)} for {list(content.shape)}")
    context = pipe.encode_prompt("")
    n = content.shape[0]
    ctx = jt.concat([context] * n) if n > 1 else context
    x_t, _ = invert(pipe, style, context, cfg)
    _, h_content = invert(pipe, content, ctx, cfg)
    latents = generate(pipe, jt.concat([x_t] * n) if n > 1 else x_t, ctx, h_content, cfg)
    return pipe.decode_latents(latents)


# ----------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    fields = DiffStyleConfig.__dataclass_fields__
    p = argparse.ArgumentParser(prog="python -m jstyle.methods.diffstyle", description=__doc__.split("\n\n")[0],
                                epilog="output: <out>/<content>-<style>.png, written atomically; existing files kept")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="diffusers Stable Diffusion folder")
    p.add_argument("--content", type=Path, nargs="+", required=True, metavar="IMG", help="content image(s)")
    p.add_argument("--style", type=Path, required=True, metavar="IMG", help="style image")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder, created if missing")
    p.add_argument("--size", type=int, default=512, help="images are centre-cropped, resized to SIZE^2 (default 512)")
    p.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE, help=fields["recipe"].metadata["help"])
    kinds = {"gamma": float, "t_edit": int, "t_boost": int, "omega": float, "dt_lambda": float, "dt_end": int,
             "steps": int, "inv_steps": int, "content_replace_step": int, "seed": int}
    for name, kind in kinds.items():
        f = fields[name]
        default = "the recipe's" if f.default is None else f.default
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{f.metadata.get('help', name)} "
                       f"(default {default})")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="where Jittor runs (default auto)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..device import use_device
    from ..io import read_rgb, save_png
    from ..pipeline import load_pipeline

    given = {k: getattr(args, k) for k in ("gamma", "t_edit", "t_boost", "omega", "dt_lambda", "dt_end", "steps",
                                           "inv_steps", "content_replace_step", "seed") if getattr(args, k) is not None}
    cfg = DiffStyleConfig(recipe=args.recipe, **given)
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

    ref = choose_reference(job.content, job.references, job.reference_rule, seed=job.seed, style=job.style,
                           prompt=job.obj)
    cfg = replace(job.settings, seed=job.noise)
    return diffstyle(pipe, job.content[None], read_rgb(ref, job.size), cfg)[0], {"reference": ref.name}


if __name__ == "__main__":
    sys.exit(main())
