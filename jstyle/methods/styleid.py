"""StyleID (Chung et al., CVPR 2024): training-free style injection into self-attention.

Content and style images are DDIM-inverted with the empty prompt; at every timestep the chosen decoder
self-attention layers record Q (content) and K, V (style). Sampling starts from the AdaIN of the two
inverted latents and, in those layers, attends with Q = gamma Q_c + (1 - gamma) Q_cs, K = K_s, V = V_s
and a temperature T: softmax(T Q K^T / sqrt(d)) V. Everything goes through attention processors; the
UNet is never forked.

Two variants, as the authors' two programs (jiwoogit/StyleID @ d4ea655; docs/methods-sources.md):
  diffusers (default) diffusers_implementation/: the UNet at label t on the latent at level t - 1000/N, all
            N = 20 steps inverted and sampled, LDM output blocks 7-11 (5 layers), AdaIN with std + 1e-4.
            The authors' only code for SD 2.x, the challenge's base model.
  paper     run_styleid.py + ldm/models/diffusion/ddim.py: the VAE posterior *sampled* (seed_everything(22):
            here default_rng(seed) for the style, the content's own generator), inversion in float32 (outside
            autocast) over all N = 50 steps at the latent's own label up to alpha-bar[999], sampling (in the
            pipeline's dtype, as under autocast) of the last start_step = 49 labels from there, injecting at
            sampling step i >= 50 - start_step (feat_merge's 50 is hard-coded: N < 26 injects nothing),
            blocks 6-11 (6 layers), AdaIN without epsilon, images truncated (not rounded) to uint8.

    python -m jstyle.methods.styleid --model DIR --content IMG [IMG ...] --style IMG --out DIR [--variant paper]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cli import run_cli
from ..errors import ConfigError, InputError

if TYPE_CHECKING:
    import jittor as jt

    from ..models.attention import Attention

__all__ = [  # noqa: F822 (RecordProcessor, InjectProcessor: module __getattr__)
    "StyleIDConfig", "StyleFeatures", "RecordProcessor", "InjectProcessor", "VARIANTS", "adain", "resolve_layers",
    "official_layers", "inversion_steps", "sampling_timesteps", "injected_labels", "invert_style", "pool_features",
    "stylize", "stylize_latents", "reference_size", "main",
]

# The official defaults of each variant (docs/methods-sources.md): DDIM steps, noisiest steps not sampled
# (start_step = steps - skip), LDM output-block indices (= diffusers up_blocks[i // 3].attentions[i % 3]),
# AdaIN epsilon on the std, uint8 conversion of the output.
VARIANTS: dict[str, dict[str, Any]] = {
    # diffusers_implementation/config.py::get_args, run_styleid_diffusers.py, utils.py::denormalize
    "diffusers": dict(steps=20, skip=0, layers=(7, 8, 9, 10, 11), adain_eps=1e-4, rounding="round"),
    # run_styleid.py::main argparse and ::adain, the Image.fromarray(x.astype(np.uint8)) save
    "paper": dict(steps=50, skip=1, layers=(6, 7, 8, 9, 10, 11), adain_eps=0.0, rounding="trunc"),
}
PAPER_FEATURE_MAPS = 50  # run_styleid.py: feat_maps = [...] for _ in range(50), feat_merge's `i < 50 - start_step`
PAPER_SEED = 22  # run_styleid.py::main: seed_everything(22) before the posterior samples
DEFAULT_VARIANT = "diffusers"
# LDM output blocks 6-11 (the paper's layers) on SD 1.x/2.x.
PAPER_LAYERS = tuple(f"up_blocks.{b}.attentions.{a}" for b in (2, 3) for a in range(3))


@dataclass(frozen=True)
class StyleIDConfig:
    """StyleID settings. `variant` sets the official defaults of steps, start_step, layers and adain_eps (None =
    the variant's); a value given explicitly wins. layers: module prefixes holding the injected attn1 layers."""

    variant: str = field(default=DEFAULT_VARIANT, metadata={"help": (
        "StyleID variant, the authors' two programs: diffusers (their diffusers implementation: 20 steps inverted "
        "and sampled, 5 layers, AdaIN std + 1e-4) or paper (the LDM code behind the paper: 50-step inversion to "
        "t = 999 at own labels, 49 sampled, 6 layers); it presets the other StyleID settings. diffusers unless "
        "given: it is the only official code for SD 2.x, and the challenge's base is SD 2.1")})
    gamma: float = field(default=0.75, metadata={"help": "StyleID query preservation: "
                                                         "Q = gamma Q_c + (1 - gamma) Q_cs"})
    T: float = field(default=1.5, metadata={"help": "StyleID attention temperature: softmax(T Q K^T / sqrt(d))"})
    steps: int | None = field(default=None, metadata={"help": "StyleID DDIM steps",
                                                      "default": "the variant's: diffusers 20, paper 50"})
    start_step: int | None = field(default=None, metadata={"help": "StyleID steps sampled, <= steps",
                                                           "default": "the variant's: diffusers all, paper steps - 1"})
    layers: tuple[str, ...] | None = None  # module prefixes of the injected attn1 layers (None: the variant's)
    adain_eps: float | None = None  # AdaIN: (z_c - m_c) / (s_c + eps) (None: the variant's, 1e-4 / 0)
    adain: bool = True  # initial-latent AdaIN
    inject: bool = True  # Q/K/V injection
    seed: int = PAPER_SEED  # paper: the style's posterior sample default_rng(seed); contents' default (seed, 1)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"StyleID variant '{self.variant}' unknown; use {' or '.join(VARIANTS)}")
        d = VARIANTS[self.variant]
        steps = d["steps"] if self.steps is None else self.steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= 1000:
            raise ConfigError(f"StyleID steps must be in 1..1000, got {steps}")
        start = max(1, steps - d["skip"]) if self.start_step is None else self.start_step
        if not 1 <= start <= steps:
            raise ConfigError(f"StyleID start_step must be in 1..{steps} (steps), got {start}")
        if self.variant == "paper" and steps > PAPER_FEATURE_MAPS:
            raise ConfigError(f"StyleID paper variant: steps must be <= {PAPER_FEATURE_MAPS} (run_styleid.py keeps "
                              f"{PAPER_FEATURE_MAPS} feature maps), got {steps}")
        object.__setattr__(self, "steps", int(steps))
        object.__setattr__(self, "start_step", int(start))
        if self.adain_eps is None:
            object.__setattr__(self, "adain_eps", d["adain_eps"])
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"StyleID gamma must be in [0, 1], got {self.gamma}")
        if not self.T > 0:
            raise ConfigError(f"StyleID temperature T must be > 0, got {self.T}")
        if self.layers is not None:
            if isinstance(self.layers, str) or not self.layers:
                raise ConfigError("StyleID layers must be a non-empty tuple of module names (or None)")
            object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def rounding(self) -> str:
        return VARIANTS[self.variant]["rounding"]


def adain(content: jt.Var, style: jt.Var, eps: float = 0.0) -> jt.Var:
    """Per-channel AdaIN over the spatial axes (unbiased std, as torch.std)."""
    from ..ops import mean_std

    # z = std(z_s) * (z_c - mean(z_c)) / (std(z_c) + eps) + mean(z_s)
    mc, sc = mean_std(content, dims=(2, 3))
    ms, ss = mean_std(style, dims=(2, 3))
    return ss * (content - mc) / (sc + eps if eps else sc) + ms


def _self_attention_layers(unet) -> dict[str, Attention]:
    from ..models.attention import Attention

    return {n: m for n, m in unet.named_modules() if isinstance(m, Attention) and n.split(".")[-1] == "attn1"}


def official_layers(unet, indices: tuple[int, ...]) -> tuple[str, ...]:
    """Official output-block indices -> module prefixes up_blocks[i // 3].attentions[i % 3]; a UNet with fewer
    than 4 up-blocks keeps the last ones (i -> i - (12 - 3 * len(up_blocks))), blocks without attention dropped
    (as the LDM code skips output blocks without a SpatialTransformer)."""
    attn1 = _self_attention_layers(unet)
    n = len(unet.up_blocks)
    found = []
    for i in indices:
        j = i - (12 - 3 * n)
        prefix = f"up_blocks.{j // 3}.attentions.{j % 3}"
        if j >= 0 and any(name.startswith(prefix + ".") for name in attn1):
            found.append(prefix)
    return tuple(found)


def resolve_layers(unet, layers: tuple[str, ...] | None, variant: str = DEFAULT_VARIANT) -> list[str]:
    """Names of the attn1 modules under the given prefixes (None: the variant's official layers)."""
    attn1 = _self_attention_layers(unet)
    if layers is None:
        layers = official_layers(unet, VARIANTS[variant]["layers"])
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


def __getattr__(name: str):  # the processors need Jittor: imported on first use, not with the settings
    if name in ("RecordProcessor", "InjectProcessor"):
        from . import styleid_processors

        return getattr(styleid_processors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------- schedules


def _schedule(pipe, cfg: StyleIDConfig):
    from .inversion import make_scheduler

    return make_scheduler(pipe, cfg.steps)


def inversion_steps(cfg: StyleIDConfig, scheduler) -> list[tuple[int, np.float32, np.float32]]:
    """(UNet label, level of the input latent, level it lands on) of the variant's inversion, in call order.

    paper (ddim.py::encode_ddim): labels range(1, T, T // N), the UNet at the latent's own label (the clean latent
    counts as alpha-bar[1]), landing on the next label's level, the last on alpha-bar[T - 1] = [999]; N steps.
    diffusers (invert_process): labels = the DDIM schedule ascending, the UNet at label t on the latent at level
    max(0, t - T // N); the first start_step of them."""
    acp = scheduler.alphas_cumprod
    n_train, n = len(acp), cfg.steps
    if cfg.variant == "paper":
        labels = list(range(1, n_train, n_train // n))
        nxt = labels[1:] + [n_train - 1]  # steps = range(1, T + c, c) with steps[-1] = 999
        return [(t, acp[t], acp[t_next]) for t, t_next in zip(labels, nxt)][:n]
    stride = n_train // n
    return [(int(t), acp[max(0, int(t) - stride)], acp[int(t)]) for t in scheduler.timesteps[::-1][:cfg.start_step]]


def sampling_timesteps(cfg: StyleIDConfig, scheduler) -> list[tuple[int, np.float32, np.float32]]:
    """(UNet label, a_t, a_prev) of the variant's sampling, in call order.

    paper (ddim.py::ddim_sampling): labels arange(N) * (T // N) + 1 descending, the first N - start_step skipped;
    a_t = alpha-bar[label] (the first step's latent sits at alpha-bar[999]), a_prev the next label's, alpha-bar[0]
    at the end. diffusers (reverse_process): the DDIM schedule's last start_step steps (scheduler.step)."""
    acp = scheduler.alphas_cumprod
    if cfg.variant == "paper":
        ts = np.arange(cfg.steps) * (len(acp) // cfg.steps) + 1
        prev = [acp[0]] + [acp[t] for t in ts[:-1]]
        return [(int(ts[k]), acp[ts[k]], prev[k]) for k in range(cfg.start_step - 1, -1, -1)]
    return [(int(t), acp[int(t)], scheduler.alpha_prev(int(t))) for t in scheduler.timesteps[-cfg.start_step:]]


def injected_labels(cfg: StyleIDConfig, scheduler) -> set[int]:
    """The sampling labels whose attention is injected. paper (run_styleid.py::feat_merge, ddim.py::ddim_sampling):
    loop step i over all N labels (the first N - start_step skipped) injects iff i >= 50 - start_step, 50 hard-coded;
    diffusers: every sampled label."""
    labels = [t for t, _, _ in sampling_timesteps(cfg, scheduler)]
    if cfg.variant != "paper":
        return set(labels)
    first = cfg.steps - cfg.start_step  # loop index of labels[0]
    return {t for i, t in enumerate(labels, start=first) if PAPER_FEATURE_MAPS - cfg.start_step <= i}


# ------------------------------------------------------------------------------------------------- StyleID


@dataclass
class StyleFeatures:
    """A style image's inversion, reusable for any number of content images with the same settings."""

    latent: jt.Var | None  # inverted style latent at the start timestep [1, C, h, w] (None: unused)
    kv: dict = field(repr=False)  # {timestep: {layer: {'k': Var, 'v': Var}}}
    key: tuple  # (variant, steps, start_step, layers) it was computed for


def pool_features(features: list[StyleFeatures]) -> StyleFeatures:
    """Several references' inversions as one style: K and V concatenated along the token axis per timestep and
    layer (attention over all references' tokens), the latents' tokens concatenated (AdaIN over their pooled
    per-channel statistics). One reference is returned as it is."""
    import jittor as jt

    if not features:
        raise InputError("no style features to pool")
    if len(features) == 1:
        return features[0]
    if len({f.key for f in features}) != 1:
        raise ConfigError("style features made with different settings cannot be pooled")
    first = features[0]
    latent = None
    if first.latent is not None:  # [1, C, 1, sum h w]: mean_std over (2, 3) pools every reference's positions
        latent = jt.concat([f.latent.reshape(1, f.latent.shape[1], 1, -1) for f in features], dim=3)
    kv = {t: {name: {key: jt.concat([f.kv[t][name][key] for f in features], dim=1) for key in first.kv[t][name]}
              for name in first.kv[t]} for t in first.kv}
    return StyleFeatures(latent, kv, first.key)


def _settings_key(cfg: StyleIDConfig, layers: list[str]) -> tuple:
    return cfg.variant, cfg.steps, cfg.start_step, tuple(layers)


@contextmanager
def _hooked(unet, hooks: list) -> Iterator[Callable[[int, int, jt.Var], None]]:
    """Install `hooks` (processors with .name and .timestep) on their layers for the block, then put the
    original processors back; yields the per-step callback that tells the hooks the current timestep."""
    saved = unet.attn_processors
    unet.set_attn_processor({**saved, **{f"{h.name}.processor": h for h in hooks}})

    def on_step(i: int, t: int, x: jt.Var) -> None:
        for h in hooks:
            h.timestep = int(t)

    try:
        yield on_step
    finally:
        unet.set_attn_processor(saved)


@contextmanager
def _float32(unet) -> Iterator[None]:
    """The UNet's float parameters in float32 for the block, then back to their own dtypes (float16 -> float32 ->
    float16 is exact)."""
    params = [p for p in unet.parameters() if p.dtype.is_float() and str(p.dtype) != "float32"]
    dtypes = [str(p.dtype) for p in params]
    for p in params:
        p.assign(p.float32())
    try:
        yield
    finally:
        for p, dtype in zip(params, dtypes):
            p.assign(p.cast(dtype))


def _invert(pipe, latents: jt.Var, cfg: StyleIDConfig, layers: list[str], keep: str) -> tuple[jt.Var, dict]:
    """Invert with recording processors on `layers` (none if keep is empty); restores the processors.
    Returns the start latent of sampling and {label: {layer: {q|k|v: Var}}}, in the pipeline's dtype. The paper
    variant inverts in float32 whatever the pipeline's dtype (run_styleid.py runs encode_ddim outside autocast)."""
    from .inversion import invert_along
    from .styleid_processors import RecordProcessor

    store: dict = {}
    recorders = [RecordProcessor(name, store, keep) for name in layers] if keep else []
    steps = inversion_steps(cfg, _schedule(pipe, cfg))
    context = pipe.encode_prompt("")
    upcast = cfg.variant == "paper" and pipe.dtype != "float32"
    with _hooked(pipe.unet, recorders) as on_step, _float32(pipe.unet) if upcast else nullcontext():
        latents = invert_along(pipe, latents.float32() if upcast else latents,
                               context.float32() if upcast else context, steps, on_step)[-1]
    if upcast:  # sampling runs in the pipeline's dtype (under autocast in the official)
        latents = latents.cast(pipe.dtype)
        store = {t: {n: {k: v.cast(pipe.dtype) for k, v in qkv.items()} for n, qkv in per.items()}
                 for t, per in store.items()}
    return latents, store


def invert_style(pipe, style_image: np.ndarray, cfg: StyleIDConfig) -> StyleFeatures:
    """Invert one style image (uint8 [H, W, 3]) and keep its K, V per timestep in memory."""
    if style_image is None:
        raise InputError("StyleID needs a style image")
    layers = resolve_layers(pipe.unet, cfg.layers, cfg.variant)
    # paper: a posterior sample (get_first_stage_encoding after seed_everything(22)); diffusers: the mode
    z = pipe.encode_uint8(style_image, np.random.default_rng(cfg.seed) if cfg.variant == "paper" else None)
    if z.shape[0] != 1:
        raise InputError(f"one style image at a time, got {z.shape[0]}")
    if not (cfg.inject or cfg.adain):  # nothing of the style is used
        return StyleFeatures(None, {}, _settings_key(cfg, layers))
    latent, store = _invert(pipe, z, cfg, layers, "kv" if cfg.inject else "")
    return StyleFeatures(latent, store, _settings_key(cfg, layers))


def stylize_latents(pipe, content_latents: jt.Var, style: StyleFeatures, cfg: StyleIDConfig) -> jt.Var:
    """StyleID on clean content latents [B, C, h, w] -> clean stylised latents."""
    from .inversion import sample_along
    from .styleid_processors import InjectProcessor

    layers = resolve_layers(pipe.unet, cfg.layers, cfg.variant)
    if style.key != _settings_key(cfg, layers):
        raise ConfigError("these StyleFeatures were made with another variant/steps/start_step/layers; "
                          "run invert_style again")
    z_c, q_store = _invert(pipe, content_latents, cfg, layers, "q" if cfg.inject else "")
    z = adain(z_c, style.latent, cfg.adain_eps) if cfg.adain else z_c
    labels = injected_labels(cfg, _schedule(pipe, cfg))
    injectors = [InjectProcessor(n, q_store, style.kv, cfg.gamma, cfg.T, labels) for n in layers] if cfg.inject \
        else []
    with _hooked(pipe.unet, injectors) as on_step:
        if cfg.variant == "paper":
            return sample_along(pipe, z, pipe.encode_prompt(""), sampling_timesteps(cfg, _schedule(pipe, cfg)),
                                on_step)
        from .inversion import ddim_sample

        return ddim_sample(pipe, z, pipe.encode_prompt(""), cfg.steps, cfg.start_step, on_step)


def decode(pipe, latents: jt.Var, cfg: StyleIDConfig) -> np.ndarray:
    """Clean latents -> uint8 [B, H, W, 3] as the variant saves them: rounded (diffusers' utils.py::denormalize)
    or truncated (the paper's Image.fromarray((255 * clamp((x + 1) / 2)).astype(np.uint8)))."""
    if cfg.rounding == "round":
        return pipe.decode_latents(latents)
    x = np.clip((pipe.vae_decode(latents).float32().numpy() + 1.0) / 2.0, 0.0, 1.0)
    return (255.0 * x.transpose(0, 2, 3, 1)).astype(np.uint8)


def stylize(pipe, content_images: np.ndarray, style_image: np.ndarray | StyleFeatures,
            cfg: StyleIDConfig = StyleIDConfig(), generator: np.random.Generator | None = None) -> np.ndarray:
    """Content images (uint8 [B, H, W, 3], one batch) in the style of one image (or its StyleFeatures)
    -> uint8 [B, H, W, 3]. paper: the contents' posterior sample from `generator` (default
    default_rng((cfg.seed, 1))); diffusers: the posterior mode."""
    if style_image is None:
        raise InputError("StyleID needs a style image")
    resolve_layers(pipe.unet, cfg.layers, cfg.variant)
    if cfg.variant == "paper" and generator is None:
        generator = np.random.default_rng((cfg.seed, 1))
    content = pipe.encode_uint8(content_images, generator if cfg.variant == "paper" else None)
    style = style_image if isinstance(style_image, StyleFeatures) else invert_style(pipe, style_image, cfg)
    return decode(pipe, stylize_latents(pipe, content, style, cfg), cfg)


# ---------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    d = StyleIDConfig()
    help_of = {f.name: f.metadata.get("help", "") for f in StyleIDConfig.__dataclass_fields__.values()}
    p = _Parser(prog="python -m jstyle.methods.styleid", description=__doc__.split("\n\n")[0],
                epilog="output: <out>/<content>-<style>.png, written atomically; existing files are kept.")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="diffusers Stable Diffusion folder")
    p.add_argument("--content", type=Path, nargs="+", required=True, metavar="IMG", help="content image(s)")
    p.add_argument("--style", type=Path, required=True, metavar="IMG", help="style image")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder, created if missing")
    p.add_argument("--size", type=int, default=512, help="images are centre-cropped, resized to SIZE^2 (default 512)")
    p.add_argument("--variant", choices=list(VARIANTS), default=d.variant, help=help_of["variant"])
    p.add_argument("--gamma", type=float, default=d.gamma, help=f"query preservation in [0, 1] (default {d.gamma})")
    p.add_argument("--T", type=float, default=d.T, dest="T", help=f"attention temperature (default {d.T})")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the variant's, diffusers 20, paper 50)")
    p.add_argument("--start-step", type=int, help="steps sampled, <= --steps (default: the variant's, diffusers "
                   "all, paper steps - 1)")
    p.add_argument("--layers", nargs="+", metavar="NAME",
                   help="module prefixes of the injected attn1 layers (default: the variant's LDM output blocks, "
                   "diffusers 7-11, paper 6-11 = " + " ".join(PAPER_LAYERS) + " on SD 1.x/2.x)")
    p.add_argument("--adain-eps", type=float, help="AdaIN (z_c - m_c) / (s_c + EPS) (default: the variant's, "
                   "diffusers 1e-4, paper 0)")
    p.add_argument("--no-adain", action="store_true", help="skip the initial-latent AdaIN")
    p.add_argument("--no-inject", action="store_true", help="skip the Q/K/V injection")
    p.add_argument("--batch", type=int, default=1, help="content images per batch (default 1)")
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="where Jittor runs (default auto)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..device import use_device
    from ..io import read_rgb, save_png
    from ..pipeline import load_pipeline

    cfg = StyleIDConfig(variant=args.variant, gamma=args.gamma, T=args.T, steps=args.steps,
                        start_step=args.start_step, layers=tuple(args.layers) if args.layers else None,
                        adain_eps=args.adain_eps, adain=not args.no_adain, inject=not args.no_inject)
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
    resolve_layers(pipe.unet, cfg.layers, cfg.variant)
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


def reference_size(cfg: StyleIDConfig, job) -> int | None:
    """The reference's pixel size (None: native) for --reference-size auto: the variant's source reading, native
    for `diffusers` (cv2.imread, run_styleid_diffusers.py), the run's size for `paper` (load_img: crop, 512)."""
    from .reference import parse_size

    return parse_size(job.reference_size, None if cfg.variant == "diffusers" else job.size)


def inject(pipe, job) -> tuple[np.ndarray, dict]:
    """run_all's inject stage (a jstyle.methods.registry.InjectJob): StyleID of the content with the reference
    images the job's rule and --references pick (their inversions pooled); each inversion is kept in job.cache
    for the style's next prompt."""
    from .reference import choose_references, parse_count, read_reference

    refs = choose_references(job.content, job.references, job.reference_rule, parse_count(job.reference_count),
                             seed=job.seed, style=job.style, prompt=job.obj)
    size = reference_size(job.settings, job)
    keys = [("styleid", str(ref), size, job.settings) for ref in refs]
    for old in [k for k in job.cache if isinstance(k, tuple) and k[0] == "styleid" and k not in keys]:
        del job.cache[old]  # inversions of references this prompt does not use go
    for key, ref in zip(keys, refs):
        if key not in job.cache:
            job.cache[key] = invert_style(pipe, read_reference(ref, size), job.settings)
    style = pool_features([job.cache[k] for k in keys])
    return stylize(pipe, job.content[None], style, job.settings, np.random.default_rng(job.noise))[0], \
        {"reference": ",".join(r.name for r in refs)}


if __name__ == "__main__":
    sys.exit(main())
