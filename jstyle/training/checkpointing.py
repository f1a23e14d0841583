"""Gradient checkpointing for Jittor modules: keep a block's inputs, drop its activations after the forward pass
and recompute them when the backward pass reaches the block (Chen et al. 2016, "Training deep nets with
sublinear memory cost"). Jittor has no built-in one; this is a `jt.Function` whose `grad` re-runs the block,
installed as a forward wrapper (jstyle.models.hooks) on each ResNet and transformer block.

    enable_gradient_checkpointing(unet)   # as diffusers' unet.enable_gradient_checkpointing()
    with jt.no_grad():                    # first-order gradients: Jittor keeps nothing for a second order
        grads = jt.grad(loss, params)
    run_backward(unet, grads)             # the backward pass block by block (the memory saving needs it)
    disable_gradient_checkpointing(unet)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jittor as jt
from jittor import nn

from ..errors import ConfigError

__all__ = ["checkpoint", "enable_gradient_checkpointing", "disable_gradient_checkpointing",
           "is_gradient_checkpointing", "run_backward"]

_HANDLE = "_jstyle_checkpoint_handle"  # the block's forward-wrapper handle (jstyle.models.hooks)
_TAPE = "_jstyle_checkpoint_tape"


class _Tape:
    """Per-block gradients of the last backward pass, each with its block's position in the forward pass."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.forward_count = 0
        self.entries: list[tuple[int, list[jt.Var | None]]] = []  # (forward position, gradients)


def _rng_owners(module: nn.Module) -> list[Any]:
    """LoRA layers inside `module` that draw dropout masks from a numpy generator (see jstyle.lora)."""
    return [m for m in module.modules() if getattr(m, "_rng", None) is not None and getattr(m, "dropout", 0) > 0]


def _check_no_random_dropout(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout) and m.p > 0 and m.is_training():
            raise ConfigError(f"gradient checkpointing: {type(module).__name__} has dropout p={m.p}, whose masks "
                              "cannot be drawn again when recomputing; set dropout to 0 or turn checkpointing off")


class _Recompute(jt.Function):
    """Forward: run `fn` and return its output alone (no graph kept behind it). Backward: run `fn` again on the
    saved inputs, once the output's gradient exists, and return the gradients of the inputs and `params`."""

    def __init__(self, fn: Callable[..., jt.Var], n_inputs: int, rng_owners: list[Any], tape: _Tape | None = None):
        self.fn, self.n_inputs, self.rng_owners, self.tape = fn, n_inputs, rng_owners, tape

    def execute(self, *args: jt.Var) -> jt.Var:
        inputs = args[: self.n_inputs]
        self.saved = [x.detach() for x in inputs]
        self.requires = [not x.is_stop_grad() for x in inputs]
        self.rng_states = [m._rng.bit_generator.state for m in self.rng_owners]
        if self.tape is not None:
            self.tape.forward_count += 1
            self.position = self.tape.forward_count
        with jt.no_grad():  # no graph behind the output
            return self.fn(*inputs)

    def grad(self, grad_output: jt.Var | None) -> list[jt.Var | None]:
        n = self.n_inputs
        params = list(self.params)
        if grad_output is None:
            return [None] * (n + len(params))
        # The recomputed inputs depend on the gradient (by a zero), so Jittor cannot run the recomputation
        # before the backward pass arrives here, which would keep its activations alive as long as before.
        anchor = (grad_output.reshape(-1)[:1].sum() * 0).stop_grad()
        after = [m._rng.bit_generator.state for m in self.rng_owners]
        for m, state in zip(self.rng_owners, self.rng_states, strict=True):
            m._rng.bit_generator.state = state  # the same dropout masks as in the forward pass
        with jt.enable_grad():  # the recomputation's graph, whether or not jt.grad runs under no_grad
            inputs = [(x + anchor.cast(x.dtype)) if r else x for x, r in zip(self.saved, self.requires, strict=True)]
            out = self.fn(*inputs)
            loss = (out * grad_output.detach()).sum()
        for m, state in zip(self.rng_owners, after, strict=True):
            m._rng.bit_generator.state = state
        wrt = [x for x, r in zip(inputs, self.requires, strict=True) if r] + params
        # built under no_grad (stop_grad): nothing differentiates these again, and Jittor keeps every variable a
        # second-order gradient could need (the recomputed activations, the backward's own work) alive as long
        # as a gradient-carrying variable behind them is
        with jt.no_grad():
            grads = jt.grad(loss, wrt) if wrt else []
        if self.tape is not None:
            self.tape.entries.append((self.position, grads))  # for run_backward(): block by block
        grads = iter(grads)
        return [next(grads) if r else None for r in self.requires] + [next(grads) for _ in params]


def checkpoint(fn: Callable[..., jt.Var], inputs: Sequence[jt.Var], params: Sequence[jt.Var],
               rng_owners: Sequence[Any] = (), tape: _Tape | None = None) -> jt.Var:
    """fn(*inputs) without keeping its activations; `params` are the trainable weights fn uses.
    With a `tape`, the gradients the backward pass makes here are recorded for `run_backward`."""
    if jt.flags.no_grad or not (params or any(not x.is_stop_grad() for x in inputs)):
        return fn(*inputs)
    op = _Recompute(fn, len(inputs), list(rng_owners), tape)
    op.params = list(params)
    return op(*inputs, *params)


def _checkpointed(module: nn.Module, tape: _Tape) -> Callable[..., jt.Var]:
    """A forward wrapper (jstyle.models.hooks) that runs `module` through `checkpoint` in training."""

    def wrapper(original: Callable[..., jt.Var], *args: Any, **kwargs: Any) -> jt.Var:
        if not module.is_training() or jt.flags.no_grad:
            return original(*args, **kwargs)
        _check_no_random_dropout(module)
        if tape.entries:  # a new forward pass: drop what an earlier backward left (never more than one)
            tape.clear()
        slots = [("a", i) for i, a in enumerate(args) if isinstance(a, jt.Var)]
        slots += [("k", k) for k, v in kwargs.items() if isinstance(v, jt.Var)]
        tensors = [args[i] if kind == "a" else kwargs[i] for kind, i in slots]

        def run(*xs: jt.Var) -> jt.Var:  # the block with its tensor arguments (args and kwargs) replaced
            a, kw = list(args), dict(kwargs)
            for (kind, i), x in zip(slots, xs, strict=True):
                if kind == "a":
                    a[i] = x
                else:
                    kw[i] = x
            return original(*a, **kw)

        params = [p for p in module.parameters() if not p.is_stop_grad()]
        return checkpoint(run, tensors, params, _rng_owners(module), tape)

    return wrapper


def _targets(model: nn.Module) -> list[nn.Module]:
    from ..models.resnet import ResnetBlock2D
    from ..models.transformer_2d import Transformer2DModel

    return [m for m in model.modules() if isinstance(m, (ResnetBlock2D, Transformer2DModel))]


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint every ResNet block and transformer (attention) block of `model` while it is in train mode,
    as diffusers does per block; returns how many blocks. Inference (eval mode, no_grad) is unchanged."""
    blocks = _targets(model)
    tape = model.__dict__.setdefault(_TAPE, _Tape())
    for m in blocks:
        if _HANDLE not in m.__dict__:
            m.__dict__[_HANDLE] = m.register_forward_wrapper(_checkpointed(m, tape))
    return len(blocks)


def run_backward(model: nn.Module, grads: Sequence[jt.Var] = ()) -> None:
    """Compute the pending backward pass of `model` block by block, last block first, then `grads`.

    Call it after `jt.grad(loss, params)`: Jittor otherwise runs the whole lazy graph at once and keeps the
    recomputed activations of many blocks alive together. A no-op without gradient checkpointing."""
    tape = model.__dict__.get(_TAPE)
    if tape is not None:
        # from the last block of the forward pass to the first (jt.grad records them in that order; sorted so
        # as not to rely on it): each sync then computes one block's recomputation and gradients
        for _, block_grads in sorted(tape.entries, key=lambda e: -e[0]):
            if block_grads := [g for g in block_grads if g is not None]:
                jt.sync(block_grads)
        tape.clear()
    if grads:
        jt.sync(list(grads))


def disable_gradient_checkpointing(model: nn.Module) -> None:
    """Undo `enable_gradient_checkpointing`."""
    model.__dict__.pop(_TAPE, None)
    for m in _targets(model):
        handle = m.__dict__.pop(_HANDLE, None)
        if handle is not None:
            handle.remove()


def is_gradient_checkpointing(model: nn.Module) -> bool:
    """Whether any block of `model` is checkpointed."""
    return any(_HANDLE in m.__dict__ for m in _targets(model))
