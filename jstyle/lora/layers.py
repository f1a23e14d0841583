"""LoRA layers (Hu et al. 2021) for Jittor Linear and Conv2d: the wrappers, injection by target names,
scale, dropout, fuse/unfuse and removal. File layouts live in `formats.py`.

A LoRA layer replaces a frozen `nn.Linear`/`nn.Conv2d` by a wrapper that keeps the base weights under
the same names (`to_q.weight`) and adds two small layers, as PEFT does:

    y = W x + b + scale * (alpha / r) * B(A(dropout(x)))      A: in -> r, B: r -> out (B starts at 0)

Injection is by target names (PEFT semantics: a module matches when its dotted name equals the target
or ends with "." + target).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import jittor as jt
import numpy as np
from jittor import nn

from ..errors import ConfigError

__all__ = [
    "COMPONENTS", "DEFAULT_TARGETS", "OPTIONAL_TARGETS", "INITS", "init_lora_a", "default_targets",
    "LoRALinear", "LoRAConv2d", "LoRALayer", "LoRAParams", "inject_lora", "remove_lora", "lora_layers",
    "lora_parameters", "lora_state_dict", "set_lora_scale", "set_lora_dropout_generator", "fuse_lora",
    "unfuse_lora",
]

COMPONENTS = ("unet", "text_encoder", "vae")
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "unet": ("to_q", "to_k", "to_v", "to_out.0"),
    "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "vae": ("to_q", "to_k", "to_v"),
}
OPTIONAL_TARGETS = {"unet": ("add_k_proj", "add_v_proj")}  # added by default_targets when present
INITS = ("gaussian", "kaiming")


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
