"""LoRA (Hu et al. 2021) for Jittor Linear and Conv2d layers, and its files in the diffusers formats.

A LoRA layer replaces a frozen `nn.Linear`/`nn.Conv2d` by a wrapper that keeps the base weights under
the same names (`to_q.weight`) and adds two small layers, as PEFT does:

    y = W x + b + scale * (alpha / r) * B(A(dropout(x)))      A: in -> r, B: r -> out (B starts at 0)

Injection is by target names (PEFT semantics: a module matches when its dotted name equals the target
or ends with "." + target). Files are read and written in the diffusers layout
(`unet.<module>.lora_A.weight`, `text_encoder.<module>.lora_B.weight`, adapter config in the safetensors
metadata under `lora_adapter_metadata`); the PEFT (`base_model.model.` prefix + adapter_config.json)
and kohya (`lora_unet_..._to_q.lora_down.weight` + `.alpha`) layouts are read too.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jittor as jt
import numpy as np
from jittor import nn

from .errors import ConfigError, WeightsError
from .loading import load_safetensors

__all__ = [
    "DEFAULT_TARGETS", "COMPONENTS", "default_targets", "LoRALinear", "LoRAConv2d", "LoRAParams",
    "LoRAWeights", "inject_lora", "remove_lora", "lora_layers", "lora_parameters", "lora_state_dict",
    "set_lora_scale", "set_lora_dropout_generator", "fuse_lora", "unfuse_lora", "save_lora",
    "read_lora_file", "load_lora_weights", "apply_lora",
]

COMPONENTS = ("unet", "text_encoder", "vae")
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "unet": ("to_q", "to_k", "to_v", "to_out.0"),
    "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "vae": ("to_q", "to_k", "to_v"),
}
OPTIONAL_TARGETS = {"unet": ("add_k_proj", "add_v_proj")}  # added by default_targets when present
INITS = ("gaussian", "kaiming")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE


def init_lora_a(shape: tuple[int, ...], init: str, rng: np.random.Generator) -> np.ndarray:
    """gaussian: N(0, 1/r^2) as PEFT's init_lora_weights='gaussian'; kaiming: U(+-1/sqrt(fan_in)) (a=sqrt 5)."""
    if init == "gaussian":
        return (rng.standard_normal(shape) / shape[0]).astype(np.float32)
    if init == "kaiming":
        bound = 1.0 / math.sqrt(int(np.prod(shape[1:])))
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)
    raise ConfigError(f"unknown LoRA init '{init}'; use one of {', '.join(INITS)}")


class _LoRABase(nn.Module):
    """Shared state of LoRA wrappers: base layer (hidden from state_dict), rank, alpha, scale, fuse flag."""

    def _setup(self, base: nn.Module, rank: int, alpha: float, dropout: float) -> None:
        if not isinstance(rank, int) or rank <= 0:
            raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self._base = (base,)  # a tuple: Jittor does not walk it, so base keys stay `<name>.weight`
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.scale = 1.0  # user multiplier at inference (diffusers' lora_scale)
        self.fused_scale: float | None = None
        self._fused_backup: np.ndarray | None = None
        self._rng: np.random.Generator | None = None
        self.is_train = False

    @property
    def base_layer(self) -> nn.Module:
        return self._base[0]

    @property
    def scaling(self) -> float:
        """alpha / r (PEFT's `scaling`)."""
        return self.alpha / self.rank

    def set_dropout_generator(self, rng: np.random.Generator | None) -> None:
        """Dropout masks come from this numpy generator (needed when dropout > 0 in training)."""
        self._rng = rng

    def _dropout(self, x: jt.Var) -> jt.Var:
        if self.dropout == 0.0 or not self.is_train:
            return x
        if self._rng is None:
            raise ConfigError("LoRA dropout in training needs a generator: call set_lora_dropout_generator")
        keep = (self._rng.random(tuple(x.shape)) >= self.dropout).astype(np.float32) / (1.0 - self.dropout)
        return x * jt.array(keep).cast(x.dtype)

    def delta_weight(self) -> np.ndarray:
        """(alpha / r) * B A in the base weight's shape (float32 numpy)."""
        a, b = self.lora_A.weight.numpy().astype(np.float32), self.lora_B.weight.numpy().astype(np.float32)
        delta = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
        return (self.scaling * delta).reshape(self.weight.shape)

    def execute(self, x: jt.Var) -> jt.Var:
        out = self.base_layer(x)
        if self.fused_scale is not None or self.scale == 0.0:
            return out
        h = self._dropout(x)
        if h.dtype != self.lora_A.weight.dtype:
            h = h.cast(self.lora_A.weight.dtype)
        delta = self.lora_B(self.lora_A(h)) * (self.scaling * self.scale)
        return out + (delta if delta.dtype == out.dtype else delta.cast(out.dtype))


class LoRALinear(_LoRABase):
    """nn.Linear + low-rank update: lora_A = Linear(in, r), lora_B = Linear(r, out), no biases."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self._setup(base, rank, alpha, dropout)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_A = nn.Linear(self.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False)


class LoRAConv2d(_LoRABase):
    """nn.Conv2d + low-rank update: lora_A = Conv2d(in, r, k, stride, padding), lora_B = 1x1 Conv2d(r, out)."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if getattr(base, "groups", 1) != 1:
            raise ConfigError("LoRA on grouped convolutions is not supported; target another layer")
        self._setup(base, rank, alpha, dropout)
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.lora_A = nn.Conv2d(self.in_channels, rank, base.kernel_size, stride=base.stride,
                                padding=base.padding, dilation=base.dilation, bias=False)
        self.lora_B = nn.Conv2d(rank, self.out_channels, 1, bias=False)


LoRALayer = LoRALinear | LoRAConv2d


@dataclass
class LoRAParams:
    """One layer's LoRA: A [r, in(, k, k)], B [out, r(, 1, 1)], alpha (scaling = alpha / r)."""

    A: np.ndarray
    B: np.ndarray
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass
class LoRAWeights:
    """A LoRA file's contents: {component: {module name: LoRAParams}} and its adapter metadata."""

    layers: dict[str, dict[str, LoRAParams]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def count(self) -> int:
        """Number of tensors (A, B) held."""
        return 2 * sum(len(v) for v in self.layers.values())


# ---------------------------------------------------------------- injection, scale, fuse


def default_targets(comp: str, model: nn.Module | None = None) -> list[str]:
    """The challenge baseline's targets for `comp` (+ add_k_proj/add_v_proj when the model has them)."""
    if comp not in DEFAULT_TARGETS:
        raise ConfigError(f"unknown LoRA component '{comp}'; use one of {', '.join(COMPONENTS)}")
    names = list(_named(model)) if model is not None else []
    extra = [t for t in OPTIONAL_TARGETS.get(comp, ()) if any(_matches(n, t) for n in names)]
    return list(DEFAULT_TARGETS[comp]) + extra


def _named(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model if not parent_name else _named(model)[parent_name]
    setattr(parent, child, new)


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """The LoRA wrappers of `model` by module name."""
    return {name: m for name, m in _named(model).items() if isinstance(m, _LoRABase)}


def _wrap(module: nn.Module, name: str, rank: int, alpha: float, dropout: float) -> LoRALayer:
    if isinstance(module, nn.Linear):
        return LoRALinear(module, rank, alpha, dropout)
    if isinstance(module, nn.Conv2d):
        return LoRAConv2d(module, rank, alpha, dropout)
    raise ConfigError(f"LoRA target '{name}' is a {type(module).__name__}; only Linear and Conv2d are supported")


def inject_lora(
    model: nn.Module,
    targets: Iterable[str],
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    init: str = "gaussian",
    rng: np.random.Generator | None = None,
    ranks: Mapping[str, int] | None = None,
    alphas: Mapping[str, float] | None = None,
) -> list[str]:
    """Wrap every Linear/Conv2d whose name matches a target; returns the wrapped names (model order).

    A gets `init` ('gaussian' or 'kaiming') from `rng` (default np.random.default_rng(0)), B is zero.
    `ranks` / `alphas` override rank / alpha per exact module name (files with mixed ranks).
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
    if init not in INITS:
        raise ConfigError(f"unknown LoRA init '{init}'; use one of {', '.join(INITS)}")
    targets = list(targets)
    if not targets:
        raise ConfigError("no LoRA targets given; name modules such as to_q, to_k, to_v, to_out.0")
    if lora_layers(model):
        raise ConfigError("model already has LoRA layers; call remove_lora(model) first")
    rng = np.random.default_rng(0) if rng is None else rng
    names = [n for n, m in _named(model).items() if any(_matches(n, t) for t in targets)]
    unused = [t for t in targets if not any(_matches(n, t) for n in names)]
    if unused:
        raise ConfigError(f"LoRA target '{unused[0]}' matches no module of {type(model).__name__}")
    wrapped = []
    modules = _named(model)
    for name in names:
        r = (ranks or {}).get(name, rank)
        a = (alphas or {}).get(name, alpha if alpha is not None else r)
        layer = _wrap(modules[name], name, r, a, dropout)
        # LoRA weights stay float32 even on a float16 base (mixed precision); execute casts
        layer.lora_A.weight.assign(jt.array(init_lora_a(tuple(layer.lora_A.weight.shape), init, rng)))
        layer.lora_B.weight.assign(jt.zeros(layer.lora_B.weight.shape, "float32"))
        _set_module(model, name, layer)
        wrapped.append(name)
    return wrapped


def remove_lora(model: nn.Module) -> int:
    """Put the original layers back (unfusing first); returns how many were removed."""
    layers = lora_layers(model)
    for name, layer in layers.items():
        if layer.fused_scale is not None:
            _unfuse(layer)
        _set_module(model, name, layer.base_layer)
    return len(layers)


def lora_parameters(model: nn.Module) -> list[jt.Var]:
    """The trainable LoRA tensors (A then B per layer, model order)."""
    return [p for layer in lora_layers(model).values() for p in (layer.lora_A.weight, layer.lora_B.weight)]


def lora_state_dict(model: nn.Module) -> dict[str, np.ndarray]:
    """{'<module>.lora_A.weight': A, '<module>.lora_B.weight': B} as float32 numpy (PEFT key form)."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = layer.lora_A.weight.numpy().astype(np.float32)
        out[f"{name}.lora_B.weight"] = layer.lora_B.weight.numpy().astype(np.float32)
    return out


def set_lora_scale(model: nn.Module, scale: float) -> None:
    """Multiply every (unfused) LoRA update by `scale` (0 disables LoRA; the base output is then exact)."""
    for layer in lora_layers(model).values():
        if layer.fused_scale is not None:
            raise ConfigError("LoRA is fused; unfuse_lora(model) before changing its scale")
        layer.scale = float(scale)


def set_lora_dropout_generator(model: nn.Module, rng: np.random.Generator | None) -> None:
    """Give every LoRA layer the numpy generator its dropout masks come from."""
    for layer in lora_layers(model).values():
        layer.set_dropout_generator(rng)


def fuse_lora(model: nn.Module, scale: float | None = None) -> int:
    """W <- W + scale * (alpha/r) B A for every LoRA layer (scale defaults to each layer's current one).

    The original weights are kept, so unfuse_lora restores them bit for bit.
    """
    layers = lora_layers(model)
    for layer in layers.values():
        if layer.fused_scale is not None:
            continue
        s = layer.scale if scale is None else float(scale)
        w = layer.weight.numpy()
        layer._fused_backup = w.copy()
        layer.weight.update(jt.array((w.astype(np.float32) + s * layer.delta_weight()).astype(w.dtype)))
        layer.fused_scale = s
    return len(layers)


def _unfuse(layer: LoRALayer) -> None:
    layer.weight.update(jt.array(layer._fused_backup))
    layer._fused_backup, layer.fused_scale = None, None


def unfuse_lora(model: nn.Module) -> int:
    """Restore the weights saved by fuse_lora (exactly); returns how many layers were unfused."""
    layers = [m for m in lora_layers(model).values() if m.fused_scale is not None]
    for layer in layers:
        _unfuse(layer)
    return len(layers)


# ---------------------------------------------------------------- files


def _adapter_metadata(model: nn.Module, dropout: float | None = None) -> dict[str, Any]:
    """A LoraConfig-shaped dict (what diffusers stores per component) describing `model`'s LoRA."""
    layers = lora_layers(model)
    ranks = {n: m.rank for n, m in layers.items()}
    alphas = {n: m.alpha for n, m in layers.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    a_int = int(alpha) if float(alpha).is_integer() else alpha
    return {
        "r": r, "lora_alpha": a_int, "target_modules": sorted(layers),
        "rank_pattern": {n: v for n, v in ranks.items() if v != r},
        "alpha_pattern": {n: v for n, v in alphas.items() if v != alpha},
        "lora_dropout": float(dropout if dropout is not None else next(iter(layers.values())).dropout),
        "bias": "none", "init_lora_weights": "gaussian", "use_dora": False, "peft_type": "LORA",
    }


def save_lora(
    path: str | Path, models: Mapping[str, nn.Module], extra_metadata: Mapping[str, str] | None = None
) -> Path:
    """Write the LoRA layers of {'unet': unet, 'text_encoder': te, 'vae': vae} as diffusers does.

    `path` is a .safetensors file or a folder (then `pytorch_lora_weights.safetensors` in it). Written to
    a temporary file first and renamed, so an interrupted save never leaves a half-written file.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / WEIGHT_NAME
    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for comp, model in models.items():
        if comp not in COMPONENTS:
            raise ConfigError(f"unknown LoRA component '{comp}'; use one of {', '.join(COMPONENTS)}")
        if model is None or not lora_layers(model):
            continue
        for k, v in lora_state_dict(model).items():
            tensors[f"{comp}.{k}"] = np.ascontiguousarray(v)
        meta.update({f"{comp}.{k}": v for k, v in _adapter_metadata(model).items()})
    if not tensors:
        raise ConfigError("nothing to save: no model has LoRA layers")
    metadata = {"format": "pt", METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)}
    metadata.update(extra_metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - any header problem is reported by load_safetensors below
        raise WeightsError(f"{path}: not a readable safetensors file ({e}); re-save the LoRA") from None


_PEFT_RE = re.compile(r"^(.*)\.lora_([AB])(?:\.default)?\.weight$")
_KOHYA_RE = re.compile(r"^(lora_unet|lora_te1?|lora_vae)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_KOHYA_COMPONENT = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_vae": "vae"}


def _pattern_value(pattern: Mapping[str, Any], name: str) -> Any:
    for key, value in pattern.items():  # PEFT: re.match(rf"(.*\.)?{key}$", name)
        if re.match(rf"(.*\.)?{key}$", name):
            return value
    return None


def _alpha_for(meta: Mapping[str, Any], name: str, rank: int) -> float:
    """alpha of one module from LoraConfig-shaped metadata; without metadata alpha = rank (diffusers)."""
    if not meta:
        return float(rank)
    a = _pattern_value(meta.get("alpha_pattern") or {}, name)
    if a is None:
        a = meta.get("lora_alpha", rank)
    return float(a)


def _component_meta(metadata: Mapping[str, Any], comp: str) -> dict[str, Any]:
    return {k[len(comp) + 1:]: v for k, v in metadata.items() if k.startswith(comp + ".")}


def read_lora_file(path: str | Path, component: str = "unet") -> LoRAWeights:
    """Parse a LoRA file (diffusers, PEFT or kohya layout) into LoRAWeights (no model needed).

    `component` is where keys without a component prefix go (PEFT files hold one model). Kohya module
    names (`down_blocks_0_..._to_out_0`) are resolved later against the model's module names.
    """
    path = Path(path)
    if path.is_dir():
        cands = [path / WEIGHT_NAME, path / "adapter_model.safetensors"]
        found = [c for c in cands if c.is_file()] or sorted(path.glob("*.safetensors"))
        if not found:
            raise WeightsError(f"{path}: no .safetensors LoRA file inside; pass the file itself")
        path = found[0]
    if not path.is_file():
        raise WeightsError(f"{path}: LoRA file not found")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: only .safetensors LoRA files are read (pickles can run code)")
    raw_meta = _read_metadata(path)
    tensors = load_safetensors(path)
    metadata: dict[str, Any] = {}
    if METADATA_KEY in raw_meta:
        metadata = json.loads(raw_meta[METADATA_KEY])
    peft_cfg = path.parent / "adapter_config.json"
    if not metadata and peft_cfg.is_file():  # PEFT save_pretrained: the config sits beside the weights
        metadata = {f"{component}.{k}": v for k, v in json.loads(peft_cfg.read_text()).items()}
    out = LoRAWeights(metadata=metadata, source=str(path))
    pairs: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    unknown = []
    for key, arr in tensors.items():
        m = _PEFT_RE.match(key)
        k = _KOHYA_RE.match(key)
        if m:
            name, which = m.group(1), m.group(2)
            name = name.removeprefix("base_model.model.")
            comp, _, rest = name.partition(".")
            if comp in COMPONENTS and rest:
                name = rest
            else:
                comp = component
            pairs.setdefault((comp, name), {})[which] = arr
        elif k:
            comp = _KOHYA_COMPONENT[k.group(1)]
            which = {"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}[k.group(3)]
            pairs.setdefault((comp, "kohya:" + k.group(2)), {})[which] = arr
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(
            f"{path}: {len(unknown)} keys are not LoRA keys jstyle reads (e.g. {unknown[0]}); "
            "expected diffusers/PEFT (.lora_A/.lora_B) or kohya (.lora_down/.lora_up/.alpha) names"
        )
    for (comp, name), parts in pairs.items():
        if "A" not in parts or "B" not in parts:
            raise WeightsError(f"{path}: {comp} layer {name} has no lora_{'B' if 'A' in parts else 'A'} weight")
        a, b = parts["A"].astype(np.float32), parts["B"].astype(np.float32)
        if b.shape[1] != a.shape[0]:
            raise WeightsError(f"{path}: {comp} {name}: lora_A {a.shape} and lora_B {b.shape} ranks differ")
        if "alpha" in parts:
            alpha = float(np.asarray(parts["alpha"]).reshape(-1)[0])
        else:
            alpha = _alpha_for(_component_meta(metadata, comp), name, a.shape[0])
        out.layers.setdefault(comp, {})[name] = LoRAParams(a, b, alpha)
    return out


def _resolve_names(model: nn.Module, comp: str, layers: dict[str, LoRAParams], source: str) -> dict:
    """Map file module names (dotted, or kohya's underscored) onto `model`'s names; every one must exist."""
    names = _named(model)
    kohya = {n.replace(".", "_"): n for n in names}
    out, missing = {}, []
    for name, params in layers.items():
        real = kohya.get(name[len("kohya:"):]) if name.startswith("kohya:") else name
        if real is not None and real not in names:  # transformers-4 files: text_model.encoder...
            real = real.removeprefix("text_model.").removeprefix("text_model_")
            real = kohya.get(real) if name.startswith("kohya:") else real
        if real is None or real not in names:
            missing.append(name.removeprefix("kohya:"))
            continue
        out[real] = params
    if missing:
        raise WeightsError(
            f"{source}: {len(missing)} {comp} LoRA layers name no module of {type(model).__name__} "
            f"(e.g. {missing[0]}); the LoRA was made for another model"
        )
    return out


def load_lora_weights(model: nn.Module, layers: Mapping[str, LoRAParams], comp: str = "unet",
                      source: str = "LoRA") -> int:
    """Inject LoRA layers shaped as `layers` into `model` and copy A, B and alpha in; returns tensors loaded."""
    layers = _resolve_names(model, comp, dict(layers), source)
    if lora_layers(model):
        remove_lora(model)
    ranks = {n: p.rank for n, p in layers.items()}
    inject_lora(model, list(layers), rank=max(ranks.values()), ranks=ranks,
                alphas={n: p.alpha for n, p in layers.items()})
    loaded = 0
    wrappers = lora_layers(model)
    for name, p in layers.items():
        layer = wrappers[name]
        for var, arr, which in ((layer.lora_A.weight, p.A, "A"), (layer.lora_B.weight, p.B, "B")):
            if tuple(var.shape) != arr.shape:
                raise WeightsError(
                    f"{source}: {comp} {name}.lora_{which} has shape {arr.shape}, the model needs "
                    f"{tuple(var.shape)}; the LoRA was made for another model"
                )
            var.assign(jt.array(arr))
            loaded += 1
    jt.sync(lora_parameters(model))
    return loaded


def apply_lora(pipe: Any, lora: str | Path | LoRAWeights, scale: float = 1.0) -> dict[str, int]:
    """Load a LoRA file (or pre-read LoRAWeights) into a pipeline's unet / text_encoder / vae.

    Any LoRA already there is removed first, so switching styles needs no reload of the base model.
    Returns {component: tensors loaded}; raises WeightsError if the file names a missing component.
    """
    weights = lora if isinstance(lora, LoRAWeights) else read_lora_file(lora)
    counts = {}
    for comp in COMPONENTS:
        model = getattr(pipe, comp, None)
        if model is not None and lora_layers(model):
            remove_lora(model)
    for comp, layers in weights.layers.items():
        model = getattr(pipe, comp, None)
        if model is None:
            raise WeightsError(f"{weights.source}: has {comp} LoRA layers but the pipeline has no {comp}")
        counts[comp] = load_lora_weights(model, layers, comp, weights.source)
        set_lora_scale(model, scale)
    return counts
