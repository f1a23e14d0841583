"""Methods reach into the UNet only through processors and forward wrappers (jstyle.models.hooks): no module under
jstyle/ reassigns `execute`, wrappers nest and come off again, and StyleID's / IP-Adapter's processors override
single steps of AttnProcessor instead of copying it."""

from __future__ import annotations

import ast
from pathlib import Path

import jittor as jt
import numpy as np
from jittor import nn

from jstyle.methods.ip_adapter import IPAttnProcessor
from jstyle.methods.styleid import InjectProcessor, RecordProcessor
from jstyle.models.attention import AttnProcessor
from jstyle.models.hooks import ForwardHooksMixin

PACKAGE = Path(__file__).resolve().parents[2] / "jstyle"


def _reassignments(tree: ast.AST) -> list[int]:
    """Lines that bind, set or delete an attribute named `execute` (x.execute = ..., setattr(x, "execute", ...),
    del x.execute, x.__dict__["execute"] = ...)."""
    lines = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr == "execute":
                lines.append(node.lineno)
            if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == "execute":
                lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if name in ("setattr", "delattr", "__setattr__", "__delattr__") and any(
                    isinstance(a, ast.Constant) and a.value == "execute" for a in node.args):
                lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_finds_reassignments():
    code = ("m.execute = f\nsetattr(m, 'execute', f)\ndel m.execute\nm.__dict__['execute'] = f\n"
            "object.__setattr__(m, 'execute', f)\nm.execute(x)\ny = m.execute\n")
    assert sorted(_reassignments(ast.parse(code))) == [1, 2, 3, 4, 5]


def test_no_module_reassigns_execute():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             for line in _reassignments(ast.parse(path.read_text(), str(path)))]
    assert not found, f"use a forward wrapper (jstyle.models.hooks) or a processor instead: {found}"


class _Scale(ForwardHooksMixin, nn.Module):
    def execute(self, x: jt.Var, factor: float = 2.0) -> jt.Var:
        return x * factor


def test_forward_wrappers_nest_and_come_off():
    m, x = _Scale(), jt.array(np.array([1.0, -3.0], np.float32))
    inner = m.register_forward_wrapper(lambda forward, *a, **k: forward(*a, **k) + 1.0)
    with m.register_forward_wrapper(lambda forward, *a, **k: forward(*a, **k) * 10.0):
        np.testing.assert_array_equal(m(x, factor=3.0).numpy(), [40.0, -80.0])  # (3x + 1) * 10: last outermost
        assert len(m.forward_wrappers()) == 2
    np.testing.assert_array_equal(m(x).numpy(), [3.0, -5.0])  # 2x + 1
    inner.remove()
    inner.remove()  # a second remove is a no-op
    np.testing.assert_array_equal(m(x).numpy(), [2.0, -6.0])
    assert m.forward_wrappers() == () and "execute" not in m.__dict__


def test_processors_override_single_steps():
    for cls, steps in ((RecordProcessor, {"project"}), (InjectProcessor, {"project", "attend"}),
                       (IPAttnProcessor, {"attend"})):
        assert issubclass(cls, AttnProcessor)
        overridden = {s for s in ("__call__", "prepare", "project", "attend", "finish") if s in vars(cls)}
        assert overridden == steps, cls.__name__
