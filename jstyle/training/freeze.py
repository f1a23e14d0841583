"""Freezing a model's base weights so that they stay frozen through `train()` / `eval()`.

Jittor's `Module.eval()` records each parameter's grad state the first time it sees the parameter
(`backup_grad_state`) and stops every gradient; `Module.train()` then restarts the gradients recorded as on.
`load_model` calls `eval()` on a fresh model, whose weights all take gradients, so a later `stop_grad()` on
the base weights is undone by the next `train()`: every frozen weight takes gradients again (gradient
checkpointing then computes them all, and without it Jittor keeps each layer's input for them).
"""

from __future__ import annotations

from collections.abc import Sequence

import jittor as jt
from jittor import nn

__all__ = ["freeze_except"]


def freeze_except(model: nn.Module, trainable: Sequence[jt.Var]) -> int:
    """stop_grad every parameter of `model` but `trainable`, also for later `train()` calls (on `model` or
    any of its submodules); returns how many were frozen."""
    keep = {id(p) for p in trainable}
    frozen = [p for p in model.parameters() if id(p) not in keep]
    for p in frozen:
        p.stop_grad()
    for m in model.modules():
        state = m.__dict__.get("backup_grad_state")
        if state is not None:  # what train() restores: off for the frozen ones
            state.update({id(p): False for p in frozen})
    return len(frozen)
