"""The jstyle env never contains torch, and jstyle's import graph never pulls it in."""

import importlib
import importlib.util
import pkgutil
import subprocess
import sys

import jstyle


def test_torch_not_installed_in_jstyle_env():
    assert importlib.util.find_spec("torch") is None, "torch must not be installed in the jstyle env"


def test_jstyle_import_graph_has_no_torch():
    names = [m.name for m in pkgutil.walk_packages(jstyle.__path__, "jstyle.")]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'diffusers'))\n"
        "print(len(sys.modules)); assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(names) >= 8  # the package really was walked
