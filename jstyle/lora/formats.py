"""LoRA files: the diffusers, PEFT and kohya safetensors layouts (key mapping, read, save), and loading
a file's layers into a model or a pipeline.

Files are written in the diffusers layout (`unet.<module>.lora_A.weight`, `text_encoder.<module>.lora_B.weight`,
adapter config in the safetensors metadata under `lora_adapter_metadata`); the PEFT (`base_model.model.`
prefix + adapter_config.json) and kohya (`lora_unet_..._to_q.lora_down.weight` + `.alpha`) layouts are
read too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jittor as jt
import numpy as np
from jittor import nn

from ..errors import ConfigError, WeightsError
from ..io import atomic_path
from ..loading import load_safetensors
from .layers import (
    COMPONENTS,
    LoRAParams,
    inject_lora,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    remove_lora,
    set_lora_scale,
)

__all__ = ["METADATA_KEY", "WEIGHT_NAME", "LoRAWeights", "save_lora", "read_lora_file", "load_lora_weights",
           "apply_lora"]

METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE


@dataclass
class LoRAWeights:
    """A LoRA file's contents: {component: {module name: LoRAParams}} and its adapter metadata."""

    layers: dict[str, dict[str, LoRAParams]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def count(self) -> int:
        """Number of tensors (A, B) held."""
        return 2 * sum(len(v) for v in self.layers.values())


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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
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
    names = {n: m for n, m in model.named_modules() if n}
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
                      source: str = "LoRA", skip: Sequence[str] = ()) -> int:
    """Inject LoRA layers shaped as `layers` into `model` and copy A, B and alpha in; returns tensors loaded.

    `skip`: target names (PEFT matching, e.g. "to_out.0") whose layers in the file are not loaded."""
    layers = _resolve_names(model, comp, dict(layers), source)
    layers = {n: p for n, p in layers.items() if not any(n == t or n.endswith("." + t) for t in skip)}
    if lora_layers(model):
        remove_lora(model)
    if not layers:
        return 0
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


def unload_lora(pipe: Any) -> int:
    """Remove every LoRA layer from a pipeline's unet / text_encoder / vae (the base weights stay); returns how many."""
    return sum(remove_lora(model) for comp in COMPONENTS if (model := getattr(pipe, comp, None)) is not None)


def apply_lora(pipe: Any, lora: str | Path | LoRAWeights, scale: float = 1.0,
               skip: Sequence[str] = ()) -> dict[str, int]:
    """Load a LoRA file (or pre-read LoRAWeights) into a pipeline's unet / text_encoder / vae.

    Any LoRA already there is removed first, so switching styles needs no reload of the base model.
    `skip` leaves the file's layers of those targets out (skip=("to_out.0",): the JDiffusion baseline's
    inference, where stock peft never injected the trained UNet to_out.0 weights). Returns {component:
    tensors loaded}; raises WeightsError if the file names a missing component.
    """
    weights = lora if isinstance(lora, LoRAWeights) else read_lora_file(lora)
    counts = {}
    unload_lora(pipe)
    for comp, layers in weights.layers.items():
        model = getattr(pipe, comp, None)
        if model is None:
            raise WeightsError(f"{weights.source}: has {comp} LoRA layers but the pipeline has no {comp}")
        counts[comp] = load_lora_weights(model, layers, comp, weights.source, skip)
        set_lora_scale(model, scale)
    return counts
