#!/usr/bin/env bash
# The project's test command (README and CI):  bash tests/run.sh [pytest args...]
# Creates or updates both environments (a quick no-op when they are current), lints, then runs
# the Jittor-side tests in the jstyle env and, beside them, the checker tests in the checker env
# (Jittor holds a lock on its cache, so Jittor tests run one process at a time), then the numeric ones
# again with oneDNN capped at AVX2. Ends with one combined "N passed, N failed" line.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash envs/setup.sh all || { echo "error: environment set-up failed (see above)"; exit 1; }
export JSTYLE_CUDA_NOTE=1  # set-up said it once (a CUDA toolkit without a driver, ...): not again below
# Where a CUDA toolkit exists, Jittor's CUDA core and extern ops are built once per machine (cached in
# $JSTYLE_HOME/jittor-cuda-build, like the CPU core) as part of set-up; tests/jstyle/test_cuda_build.py
# checks that build (and builds it itself when run alone). No toolkit: skipped with a line (exit 3). Likewise
# CUDA 12.4 + cuDNN 8.9 from the package registries ($JSTYLE_HOME/jittor-cuda12-build; skipped where they cannot
# be had).
bash envs/setup.sh cuda-build || true
bash envs/setup.sh cuda12-build || true
# shellcheck source=envs/env.sh
source envs/env.sh
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
status=0

t0="$(jstyle_now)"

echo "== ruff"
"$JSTYLE_ENV/bin/ruff" check jstyle checker tests scripts bench run_all.py || status=1

# The checker tests (torch, their own env and process) run beside the Jittor tests, which hold Jittor's
# cache lock and leave a core idle while they wait on a subprocess or a one-thread kernel.
"$JSTYLE_CHECKER_PYTHON" -m pytest tests/checker -q -p no:cacheprovider --junitxml="$results/checker.xml" "$@" \
  > "$results/checker.log" 2>&1 &
checker_pid=$!

echo "== jstyle tests (Jittor, $JSTYLE_PYTHON)"
"$JSTYLE_PYTHON" -m pytest tests/jstyle -q -p no:cacheprovider --junitxml="$results/jstyle.xml" "$@" || status=1
[ -s "$results/jstyle.xml" ] || { echo; echo "error: the jstyle test process died before reporting (a crash)"; status=1; }

# The numeric tests again with oneDNN capped at AVX2: oneDNN picks its kernels by the processor's ISA, so an
# AVX-512 machine runs here the kernels an AVX2-only one runs (docs/performance.md, "Numbers by machine").
# The files whose numbers go through oneDNN (convolutions, GEMMs: UNet, VAE, CLIP, attention, the pipeline),
# not the float16 or pure-Jittor-kernel ones; counted in the total below.
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  echo "== numeric tests with oneDNN and MKL capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)"
  avx2_tests=(test_conv.py test_linear.py test_unet.py test_vae.py test_clip_text.py test_device_paths.py test_numerics.py
    test_pipeline.py test_attention_backward.py)
  ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 "$JSTYLE_PYTHON" -m pytest "${avx2_tests[@]/#/tests/jstyle/}" -q -p no:cacheprovider \
    -k "not float16_upcast_gradients and not writer_folder and not fp16_variant" \
    -o junit_suite_name=jstyle-avx2 --junitxml="$results/jstyle-avx2.xml" "$@"
  rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 5 ] || status=1  # 5: a -k of the caller's selects none of these
  [ -s "$results/jstyle-avx2.xml" ] || { echo; echo "error: the AVX2 test process died before reporting (a crash)"; status=1; }
else
  echo "== numeric tests with oneDNN capped at AVX2: not run again (no AVX-512 here: the run above was that)"
fi

echo "== checker tests (PyTorch, $JSTYLE_CHECKER_PYTHON; ran alongside)"
wait "$checker_pid" || status=1
cat "$results/checker.log"
[ -s "$results/checker.xml" ] || { echo; echo "error: the checker test process died before reporting (a crash)"; status=1; }

echo "tests took $(jstyle_since "$t0") s"
"$JSTYLE_PYTHON" - "$results" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

tests = failed = skipped = 0
for xml in sorted(Path(sys.argv[1]).glob("*.xml")):
    for suite in ET.parse(xml).getroot().iter("testsuite"):
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
print(f"total: {tests - failed - skipped} passed, {failed} failed, {skipped} skipped")
PY
exit $status
