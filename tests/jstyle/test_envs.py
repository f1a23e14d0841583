"""The jstyle env never contains torch, and jstyle's import graph never pulls it in."""

import importlib
import importlib.util
import json
import os
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


def test_env_sh_turns_on_huge_page_malloc_once_and_respects_the_user():
    from pathlib import Path

    env_sh = Path(__file__).resolve().parents[2] / "envs" / "env.sh"

    def tunables(prefix: str) -> str:
        cmd = f'{prefix} source "{env_sh}"; source "{env_sh}"; printf %s "$GLIBC_TUNABLES"'
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                              check=True).stdout

    assert tunables("") == "glibc.malloc.hugetlb=1"  # sourced twice, added once
    assert tunables("export GLIBC_TUNABLES=glibc.malloc.arena_max=2;") == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert tunables("export GLIBC_TUNABLES=glibc.malloc.hugetlb=0;") == "glibc.malloc.hugetlb=0"
    assert tunables("export JSTYLE_THP=0;") == ""


def test_jittor_reads_a_config_json_that_another_process_is_rewriting(tmp_path):
    """~/.cache/jittor/config.json caught between truncation and write (another JITTOR_HOME's process rewriting
    it) failed every kernel compile with a JSONDecodeError before envs/patch_jittor.py; now read as empty."""
    config = tmp_path / ".cache" / "jittor" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text("")
    code = "import jittor_utils; print(jittor_utils.home())"
    env = {**os.environ, "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip() == os.path.abspath(os.environ["JITTOR_HOME"])
    assert json.loads(config.read_text()) == {"JITTOR_HOME": out.stdout.strip()}  # written whole
    assert [p.name for p in config.parent.iterdir()] == ["config.json"]  # no temporary file left
