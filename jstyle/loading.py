"""Read the public diffusers folder format with numpy only: configs, safetensors, strict loading."""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from jittor import nn

from .errors import ConfigError, WeightsError

__all__ = ["read_json", "load_safetensors", "find_weights", "load_state_dict_strict", "load_model", "release_pages"]

M = TypeVar("M", bound=nn.Module)

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
_CONVERT_HINT = "convert it with `$JSTYLE_CHECKER_PYTHON scripts/convert_to_safetensors.py"
# Keys some writers add that carry no weights (e.g. transformers' position_ids buffer).
IGNORED_KEYS = ("text_model.embeddings.position_ids",)


def read_json(path: str | Path) -> dict[str, Any]:
    """Parse a JSON file; a missing or malformed file is one WeightsError/ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); restore the file from the original model folder")


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays; bf16 is widened to float32."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size < 8:
        raise WeightsError(f"{path}: missing or empty; copy the weights file again")
    with open(path, "rb") as f:  # mapped, not read: no second copy of the weights
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError):
        raise WeightsError(f"{path}: not a safetensors file (bad header); re-download or re-convert it")
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if base + end > len(data):
            raise WeightsError(
                f"{path}: truncated ({len(data)} bytes, tensor '{name}' ends at {base + end}); "
                "copy the file again"
            )
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightsError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        arr = np.frombuffer(data, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=base + start)
        if info["dtype"] == "BF16":  # bfloat16 = the high half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.reshape(info["shape"])
    return out


def find_weights(component_dir: str | Path, variant: str | None = None) -> list[Path]:
    """The safetensors file(s) of a component folder (sharded index, variant files understood)."""
    d = Path(component_dir)
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    for stem in ("diffusion_pytorch_model", "model"):
        index = d / f"{stem}{suffix}.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise WeightsError(f"{index}: shard {missing[0]} is missing; copy all shards")
            return [d / s for s in shards]
        single = d / f"{stem}{suffix}"
        if single.is_file():
            return [single]
    pickles = sorted(p.name for p in d.glob("*") if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{d / pickles[0]}: pickle weights are refused (they can run code); "
            f"{_CONVERT_HINT} {d}`"
        )
    found = sorted(p.name for p in d.glob("*.safetensors"))
    hint = f" (found {', '.join(found[:3])}; pass the matching variant)" if found else ""
    raise WeightsError(f"{d}: no {'*' + suffix} weights file{hint}")


def load_state_dict_strict(module: nn.Module, state: dict[str, np.ndarray], source: str, dtype: str) -> None:
    """Load `state` into `module`; missing, unexpected or mis-shaped keys raise one WeightsError."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS or k in own}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {own[k]}" for k in own
              if k in state and tuple(state[k].shape) != own[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped (e.g. {'; '.join(shapes[:2])})")
    if problems:
        raise WeightsError(
            f"{source}: weights do not fit {type(module).__name__}: " + ", ".join(problems)
            + "; check that config.json and the weights come from the same model"
        )
    np_dtype = np.dtype(dtype)
    for k, v in state.items():  # one tensor at a time, its file pages dropped once copied (peak = model + 1 tensor)
        module.load_parameters({k: v.astype(np_dtype, copy=False) if np.issubdtype(v.dtype, np.floating) else v})
        release_pages(v)


def release_pages(arr: np.ndarray) -> None:
    """Drop the resident file pages behind a tensor mapped by `load_safetensors` (no-op for other arrays).

    The mapping stays valid (pages are read again on access); this only keeps a loaded file from counting
    twice in resident memory, once as mapped pages and once as the model's own copy.
    """
    base = arr
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    if base is None or arr.nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    offset = arr.ctypes.data - np.frombuffer(base, dtype=np.uint8, count=1).ctypes.data
    start = offset - offset % mmap.PAGESIZE
    base.madvise(mmap.MADV_DONTNEED, start, min(offset + arr.nbytes, len(base)) - start)


def load_model(cls: type[M], component_dir: str | Path, dtype: str = "float32", variant: str | None = None) -> M:
    """Build `cls` from `component_dir/config.json` and load its safetensors weights strictly."""
    d = Path(component_dir)
    if not d.is_dir():
        raise WeightsError(f"{d}: folder not found")
    model = cls.from_config(read_json(d / "config.json"))
    state: dict[str, np.ndarray] = {}
    files = find_weights(d, variant)
    for f in files:
        state.update(load_safetensors(f))
    convert = getattr(cls, "convert_state_dict", None)  # e.g. the VAE's legacy attention key names
    if convert is not None:
        state = convert(state)
    load_state_dict_strict(model, state, str(files[0] if len(files) == 1 else d), dtype)
    model.eval()
    return model
