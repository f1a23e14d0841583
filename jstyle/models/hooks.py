"""Forward hooks: code that runs around a module's forward pass, so that methods and training tools never
reassign a module's `execute`.

Jittor's own `Module.register_forward_hook` keeps a single hook per module and cannot replace the forward
itself, which gradient checkpointing needs; a wrapper can do both:

    def wrapper(forward, *args, **kwargs):   # forward: the module's execute (or the next wrapper)
        return edit(forward(*args, **kwargs))

    with unet.mid_block.register_forward_wrapper(wrapper):   # removed on leaving the block
        ...
    handle = block.register_forward_wrapper(wrapper)       # or kept until handle.remove()
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

__all__ = ["ForwardHooksMixin", "HookHandle", "ForwardWrapper"]

ForwardWrapper = Callable[..., Any]  # wrapper(forward, *args, **kwargs) -> output
_WRAPPERS = "_jstyle_forward_wrappers"


class HookHandle:
    """Removes one registered wrapper: `remove()`, or leaving a `with` block."""

    def __init__(self, wrappers: list[ForwardWrapper], wrapper: ForwardWrapper):
        self._wrappers, self._wrapper = wrappers, wrapper

    def remove(self) -> None:
        if any(w is self._wrapper for w in self._wrappers):
            self._wrappers.remove(self._wrapper)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class ForwardHooksMixin:
    """For `nn.Module` classes whose forward methods may wrap (list it before nn.Module in the bases)."""

    def register_forward_wrapper(self, wrapper: ForwardWrapper) -> HookHandle:
        """Run `wrapper(forward, *args, **kwargs)` instead of the forward; the last registered runs outermost."""
        wrappers = self.__dict__.setdefault(_WRAPPERS, [])
        wrappers.append(wrapper)
        return HookHandle(wrappers, wrapper)

    def forward_wrappers(self) -> tuple[ForwardWrapper, ...]:
        """The registered wrappers, first registered first."""
        return tuple(self.__dict__.get(_WRAPPERS, ()))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = self.execute
        for wrapper in self.__dict__.get(_WRAPPERS, ()):
            forward = partial(wrapper, forward)
        return forward(*args, **kwargs)
