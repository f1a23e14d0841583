"""Choosing where Jittor runs: `--device auto|cpu|cuda`."""

from __future__ import annotations

import jittor as jt

from .errors import InputError

__all__ = ["DEVICES", "use_device"]

DEVICES = ("auto", "cpu", "cuda")


def use_device(device: str = "auto") -> str:
    """Point Jittor at `device` ('auto' picks CUDA when Jittor has it) and return 'cpu' or 'cuda'."""
    if device not in DEVICES:
        raise InputError(f"unknown device '{device}'; use one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if jt.has_cuda else "cpu"
    if device == "cuda" and not jt.has_cuda:
        raise InputError("--device cuda: Jittor found no usable CUDA here (see envs/env.sh); use --device cpu")
    jt.flags.use_cuda = int(device == "cuda")
    return device
