"""StyleID (Chung et al., CVPR 2024): training-free style injection into self-attention.

Content and style images are DDIM-inverted with the empty prompt; at every timestep the chosen decoder
self-attention layers record Q (content) and K, V (style). Sampling starts from the AdaIN of the two
inverted latents and, in those layers, attends with Q = gamma Q_c + (1 - gamma) Q_cs, K = K_s, V = V_s
and a temperature T: softmax(T Q K^T / sqrt(d)) V. Everything goes through attention processors; the
UNet is never forked.

    python -m jstyle.methods.styleid --model DIR --content IMG [IMG ...] --style IMG --out DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jittor as jt
import numpy as np

from ..cli import run_cli
from ..errors import ConfigError, InputError
from ..models.attention import Attention, AttnProcessor
from ..ops import mean_std
from .inversion import ddim_invert, ddim_sample

__all__ = [
    "StyleIDConfig", "StyleFeatures", "RecordProcessor", "InjectProcessor", "adain", "resolve_layers",
    "invert_style", "stylize", "stylize_latents", "main",
]

# LDM output blocks 6-11 (the paper's layers) on SD 1.x/2.x.
PAPER_LAYERS = tuple(f"up_blocks.{b}.attentions.{a}" for b in (2, 3) for a in range(3))


@dataclass(frozen=True)
class StyleIDConfig:
    """StyleID settings (paper defaults). layers=None: the paper's up_blocks[2..3].attentions[0..2], i.e.
    the attentions of the last two decoder blocks that have any (on a smaller UNet, those that exist)."""

    gamma: float = field(default=0.75, metadata={"help": "StyleID query preservation: "
                                                         "Q = gamma Q_c + (1 - gamma) Q_cs"})
    T: float = field(default=1.5, metadata={"help": "StyleID attention temperature: softmax(T Q K^T / sqrt(d))"})
    steps: int = field(default=50, metadata={"help": "StyleID DDIM schedule length (run_all inverts and denoises "
                                                     "steps - 1, skipping t = 981)"})
    start_step: int = 49  # steps inverted and denoised (49 of 50 skips t = 981)
    layers: tuple[str, ...] | None = None  # module prefixes holding the injected attn1 layers
    adain: bool = True  # initial-latent AdaIN
    inject: bool = True  # Q/K/V injection

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"StyleID gamma must be in [0, 1], got {self.gamma}")
        if not self.T > 0:
            raise ConfigError(f"StyleID temperature T must be > 0, got {self.T}")
        if self.steps < 1:
            raise ConfigError(f"StyleID steps must be >= 1, got {self.steps}")
        if not 1 <= self.start_step <= self.steps:
            raise ConfigError(f"StyleID start_step must be in 1..{self.steps} (steps), got {self.start_step}")
        if self.layers is not None:
            if isinstance(self.layers, str) or not self.layers:
                raise ConfigError("StyleID layers must be a non-empty tuple of module names (or None)")
            object.__setattr__(self, "layers", tuple(self.layers))


def adain(content: jt.Var, style: jt.Var) -> jt.Var:
    """Per-channel AdaIN over the spatial axes (unbiased std, as torch.std)."""
    # z = std(z_s) * (z_c - mean(z_c)) / std(z_c) + mean(z_s)
    mc, sc = mean_std(content, dims=(2, 3))
    ms, ss = mean_std(style, dims=(2, 3))
    return ss * (content - mc) / sc + ms


def _self_attention_layers(unet) -> dict[str, Attention]:
    return {n: m for n, m in unet.named_modules() if isinstance(m, Attention) and n.split(".")[-1] == "attn1"}


def resolve_layers(unet, layers: tuple[str, ...] | None) -> list[str]:
    """Names of the attn1 modules under the given prefixes (default: see StyleIDConfig)."""
    attn1 = _self_attention_layers(unet)
    if layers is None:
        blocks = sorted({int(n.split(".")[1]) for n in attn1 if n.startswith("up_blocks.")})
        layers = tuple(f"up_blocks.{b}." for b in blocks[-2:])
        if not layers:
            raise ConfigError("this UNet has no decoder self-attention layers for StyleID; pass layers=")
    names: list[str] = []
    for prefix in layers:
        hits = [n for n in attn1 if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            have = sorted({n.rsplit(".transformer_blocks", 1)[0] for n in attn1})
            raise ConfigError(f"StyleID layer '{prefix}' has no self-attention (attn1) in this UNet; "
                              f"have {', '.join(have)}")
        names += [n for n in hits if n not in names]
    return names


def _self_attention_only(encoder_hidden_states: jt.Var | None) -> None:
    if encoder_hidden_states is not None:
        raise InputError("StyleID layers must be self-attention (attn1) layers")


class RecordProcessor(AttnProcessor):
    """Plain self-attention that stores its projected q/k/v ([B, N, heads*d]) in `store[timestep][name]`.

    The owner sets `timestep` before each UNet call; `keep` picks which of 'q', 'k', 'v' are stored.
    """

    def __init__(self, name: str, store: dict, keep: str = "qkv"):
        self.name, self.store, self.keep, self.timestep = name, store, keep, None

    def project(self, attn: Attention, hidden_states: jt.Var, encoder_hidden_states: jt.Var | None):
        _self_attention_only(encoder_hidden_states)
        q, k, v = super().project(attn, hidden_states, None)
        saved = {key: val.detach() for key, val in zip("qkv", (q, k, v)) if key in self.keep}
        jt.sync(list(saved.values()))
        self.store.setdefault(self.timestep, {})[self.name] = saved
        return q, k, v


class InjectProcessor(AttnProcessor):
    """StyleID attention: Q = gamma Q_c + (1 - gamma) Q_cs, K = K_s, V = V_s, softmax(T Q K^T / sqrt(d)) V.

    `content[t][name]['q']` and `style[t][name]['k'|'v']` come from RecordProcessor; the owner sets
    `timestep` before each UNet call.
    """

    def __init__(self, name: str, content: dict, style: dict, gamma: float, temperature: float):
        self.name, self.content, self.style = name, content, style
        self.gamma, self.temperature, self.timestep = gamma, temperature, None

    def project(self, attn: Attention, hidden_states: jt.Var, encoder_hidden_states: jt.Var | None):
        _self_attention_only(encoder_hidden_states)
        q_c = self.content[self.timestep][self.name]["q"]
        kv = self.style[self.timestep][self.name]
        q = self.gamma * q_c + (1.0 - self.gamma) * attn.to_q(hidden_states)
        return q, kv["k"], kv["v"]  # K, V: batch 1 broadcasts

    def attend(self, attn: Attention, query: jt.Var, key: jt.Var, value: jt.Var, mask: jt.Var | None) -> jt.Var:
        """softmax(T Q K^T / sqrt(d) + mask) V."""
        return attn.attend(query, key, value, mask, kernel=self.kernel, scale=attn.scale * self.temperature)


@dataclass
class StyleFeatures:
    """A style image's inversion, reusable for any number of content images with the same settings."""

    latent: jt.Var | None  # inverted style latent at the start timestep [1, C, h, w] (None: unused)
    kv: dict = field(repr=False)  # {timestep: {layer: {'k': Var, 'v': Var}}}
    key: tuple  # (steps, start_step, layers) it was computed for


def _settings_key(cfg: StyleIDConfig, layers: list[str]) -> tuple:
    return cfg.steps, cfg.start_step, tuple(layers)


@contextmanager
def _hooked(unet, hooks: list) -> Iterator[Callable[[int, int, jt.Var], None]]:
    """Install `hooks` (processors with .name and .timestep) on their layers for the block, then put the
    original processors back; yields the per-step callback that tells the hooks the current timestep."""
    saved = unet.attn_processors
    unet.set_attn_processor({**saved, **{f"{h.name}.processor": h for h in hooks}})

    def on_step(i: int, t: int, x: jt.Var) -> None:
        for h in hooks:
            h.timestep = t

    try:
        yield on_step
    finally:
        unet.set_attn_processor(saved)


def _invert(pipe, latents: jt.Var, cfg: StyleIDConfig, layers: list[str], keep: str) -> tuple[jt.Var, dict]:
    """Invert with recording processors on `layers` (none if keep is empty); restores the processors."""
    store: dict = {}
    recorders = [RecordProcessor(name, store, keep) for name in layers] if keep else []
    with _hooked(pipe.unet, recorders) as on_step:
        latents = ddim_invert(pipe, latents, pipe.encode_prompt(""), cfg.steps, on_step,
                              num_inversion_steps=cfg.start_step)[-1]
    return latents, store


def invert_style(pipe, style_image: np.ndarray, cfg: StyleIDConfig) -> StyleFeatures:
    """Invert one style image (uint8 [H, W, 3]) and keep its K, V per timestep in memory."""
    if style_image is None:
        raise InputError("StyleID needs a style image")
    layers = resolve_layers(pipe.unet, cfg.layers)
    z = pipe.encode_uint8(style_image)
    if z.shape[0] != 1:
        raise InputError(f"one style image at a time, got {z.shape[0]}")
    if not (cfg.inject or cfg.adain):  # nothing of the style is used
        return StyleFeatures(None, {}, _settings_key(cfg, layers))
    latent, store = _invert(pipe, z, cfg, layers, "kv" if cfg.inject else "")
    return StyleFeatures(latent, store, _settings_key(cfg, layers))


def stylize_latents(pipe, content_latents: jt.Var, style: StyleFeatures, cfg: StyleIDConfig) -> jt.Var:
    """StyleID on clean content latents [B, C, h, w] -> clean stylised latents."""
    layers = resolve_layers(pipe.unet, cfg.layers)
    if style.key != _settings_key(cfg, layers):
        raise ConfigError("these StyleFeatures were made with other steps/start_step/layers; run invert_style again")
    z_c, q_store = _invert(pipe, content_latents, cfg, layers, "q" if cfg.inject else "")
    z = adain(z_c, style.latent) if cfg.adain else z_c
    injectors = [InjectProcessor(n, q_store, style.kv, cfg.gamma, cfg.T) for n in layers] if cfg.inject else []
    with _hooked(pipe.unet, injectors) as on_step:
        return ddim_sample(pipe, z, pipe.encode_prompt(""), cfg.steps, cfg.start_step, on_step)


def stylize(pipe, content_images: np.ndarray, style_image: np.ndarray | StyleFeatures,
            cfg: StyleIDConfig = StyleIDConfig()) -> np.ndarray:
    """Content images (uint8 [B, H, W, 3], one batch) in the style of one image (or its StyleFeatures)
    -> uint8 [B, H, W, 3]."""
    if style_image is None:
        raise InputError("StyleID needs a style image")
    resolve_layers(pipe.unet, cfg.layers)
    content = pipe.encode_uint8(content_images)
    style = style_image if isinstance(style_image, StyleFeatures) else invert_style(pipe, style_image, cfg)
    return pipe.decode_latents(stylize_latents(pipe, content, style, cfg))


# ---------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    d = StyleIDConfig()
    p = _Parser(prog="python -m jstyle.methods.styleid", description=__doc__.split("\n\n")[0],
                epilog="output: <out>/<content>-<style>.png, written atomically; existing files are kept.")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="diffusers Stable Diffusion folder")
    p.add_argument("--content", type=Path, nargs="+", required=True, metavar="IMG", help="content image(s)")
    p.add_argument("--style", type=Path, required=True, metavar="IMG", help="style image")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder, created if missing")
    p.add_argument("--size", type=int, default=512, help="images are centre-cropped, resized to SIZE^2 (default 512)")
    p.add_argument("--gamma", type=float, default=d.gamma, help=f"query preservation in [0, 1] (default {d.gamma})")
    p.add_argument("--T", type=float, default=d.T, dest="T", help=f"attention temperature (default {d.T})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"DDIM steps (default {d.steps})")
    p.add_argument("--start-step", type=int, default=d.start_step,
                   help=f"steps inverted and denoised, <= --steps (default {d.start_step})")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="module prefixes of the injected attn1 layers (default: the attentions of the last two "
                   "decoder blocks that have any, i.e. " + " ".join(PAPER_LAYERS) + " on SD 1.x/2.x)")
    p.add_argument("--no-adain", action="store_true", help="skip the initial-latent AdaIN")
    p.add_argument("--no-inject", action="store_true", help="skip the Q/K/V injection")
    p.add_argument("--batch", type=int, default=1, help="content images per batch (default 1)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="where Jittor runs (default auto)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..device import use_device
    from ..io import read_rgb, save_png
    from ..pipeline import load_pipeline

    cfg = StyleIDConfig(gamma=args.gamma, T=args.T, steps=args.steps, start_step=args.start_step,
                        layers=tuple(args.layers) if args.layers else None,
                        adain=not args.no_adain, inject=not args.no_inject)
    if args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")
    style = read_rgb(args.style, args.size)
    contents = [(c, args.out / f"{c.stem}-{args.style.stem}.png") for c in args.content]
    todo = [(c, o) for c, o in contents if not o.exists()]
    images = [read_rgb(c, args.size) for c, _ in todo]
    if not todo:
        print(f"all {len(contents)} images already in {args.out}; nothing to do")
        return 0
    use_device(args.device)
    pipe = load_pipeline(args.model)
    resolve_layers(pipe.unet, cfg.layers)
    features = invert_style(pipe, style, cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(todo), args.batch):
        out = stylize(pipe, np.stack(images[i:i + args.batch]), features, cfg)
        for (_, path), image in zip(todo[i:i + args.batch], out):
            save_png(image, path)
            print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line `error: ...` for a user-fixable problem)."""
    return run_cli(build_parser(), run, argv)


# ------------------------------------------------------------------------------------- run_all's inject stage


def inject(pipe, job) -> tuple[np.ndarray, dict]:
    """run_all's inject stage (a jstyle.methods.registry.InjectJob): StyleID of the content with the reference
    image the job's rule picks; the style's inversion is kept in job.cache for the next prompt of the style."""
    from ..io import read_rgb
    from .reference import choose_reference

    ref = choose_reference(job.content, job.references, job.reference_rule)
    key = ("styleid", str(ref), job.size, job.settings)
    if key not in job.cache:  # one inversion kept at a time: the previous style's goes
        for old in [k for k in job.cache if isinstance(k, tuple) and k[0] == "styleid"]:
            del job.cache[old]
        job.cache[key] = invert_style(pipe, read_rgb(ref, job.size), job.settings)
    return stylize(pipe, job.content[None], job.cache[key], job.settings)[0], {"reference": ref.name}


if __name__ == "__main__":
    sys.exit(main())
