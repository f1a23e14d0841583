#!/usr/bin/env bash
# shellcheck disable=SC2329  # the phase_* functions are called by name: bash gpu_check.sh --phase NAME
# One prepared run on a GPU machine (issue 20, item 4): builds the jstyle env offline from the carried wheels
# through envs/setup.sh (Jittor patched, CUDA home from the toolkit + the torch venv's nvidia-* packages, CUDA
# core and extern ops), then parity tests on CUDA against diffusers, speed and GPU memory vs diffusers on the
# SD 2.1 architecture (random weights, 512 px, float16), and run_all.sh --demo on a CUDA worker.
#
#   bash bench/prepare_gpu_check.sh                  (first, on a machine with a package index: fills .whl/)
#   bash bench/gpu_check.sh                          (on the GPU machine; writes $OUT/gpu_check.{json,log})
#   bash bench/gpu_check.sh --dry-run                (or JSTYLE_GPU_CHECK_CPU=1: the same phases on this CPU,
#                                                     tiny sizes, no CUDA: proves the plumbing)
#
# Every phase runs under `timeout` (its limit, capped by what is left of JSTYLE_GPU_CHECK_BUDGET seconds),
# is recorded in gpu_check.json as ok / failed / timeout / skipped with its seconds and figures the moment it
# ends, and a failed phase stops only the phases that need it. The machine it is written for: one NVIDIA
# H200, driver 580, nvcc 13.0 on PATH, /opt/torch/.venv (Python 3.12, torch 2.11, transformers, peft, nvidia-*
# cu13 packages), no diffusers, no jittor, no network.
# Overrides: OUT, JSTYLE_GPU_CHECK_BUDGET, JSTYLE_GPU_CHECK_HOME (the JSTYLE_HOME it builds in),
# JSTYLE_GPU_CHECK_TORCH_PYTHON, JSTYLE_GPU_CHECK_BASE_PYTHON, JSTYLE_GPU_CHECK_PHASES (e.g. build,parity).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
self="$root/bench/gpu_check.sh"

mode=gpu
[ "${1:-}" = --dry-run ] || [ "${JSTYLE_GPU_CHECK_CPU:-0}" = 1 ] && mode=cpu
export JSTYLE_GPU_CHECK_MODE="${JSTYLE_GPU_CHECK_MODE:-$mode}"
mode="$JSTYLE_GPU_CHECK_MODE"
export PYTHONUNBUFFERED=1
# the JSON and the log write paths under these as ./ and ~/ (bench/_gpu_check.py shorten): no machine's paths
export JSTYLE_GPU_CHECK_ROOT="$root" JSTYLE_GPU_CHECK_USER_HOME="${JSTYLE_GPU_CHECK_USER_HOME:-$HOME}"

find_python() {  # VERSION: the path of a working CPython VERSION (python3.X on PATH, pyenv's, uv's), or fail
  local want="$1" cand exe
  for cand in "$(command -v "python$want" 2>/dev/null)" \
      "$(pyenv prefix "$want" 2>/dev/null | head -n 1)/bin/python$want" \
      "$(uv python find "$want" 2>/dev/null)"; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    # (a pyenv shim exists on PATH even where that version is not selected: it must run and be VERSION)
    exe="$("$cand" -c 'import sys; print(sys.executable if "%d.%d" % sys.version_info[:2] == sys.argv[1] else "")' \
      "$want" 2>/dev/null)" || continue
    [ -n "$exe" ] && { printf '%s\n' "$exe"; return 0; }
  done
  return 1
}

# ---- settings (both modes) --------------------------------------------------------------------------------
if [ "$mode" = gpu ]; then
  : "${OUT:=$root/outputs/gpu_check}"
  : "${JSTYLE_GPU_CHECK_BUDGET:=530}"
  : "${JSTYLE_GPU_CHECK_HOME:=$root/.gpu-check-home}"   # ignored by git: kept on a warm machine between calls
  : "${JSTYLE_GPU_CHECK_TORCH_PYTHON:=/opt/torch/.venv/bin/python3}"
  : "${JSTYLE_GPU_CHECK_BASE_PYTHON:=$JSTYLE_GPU_CHECK_TORCH_PYTHON}"
  device=cuda dtype=float16 latent=64 size=512 t2i_steps=25 styleid_steps=50 repeats=3
  demo_args=(--devices 0)   # the whole demo (3 styles, 200 LoRA steps each) on one CUDA worker
  tests="test_unet.py test_vae.py test_clip_text.py test_fp16.py test_pipeline.py test_lora.py"
  # phase limits, seconds (the budget caps them; what is left over flows to the later phases)
  lim_machine=60 lim_refsite=90 lim_build=300 lim_cuda_ops=90 lim_parity=100 lim_sd21=240
  lim_unet=150 lim_txt2img=120 lim_train=120 lim_styleid=100 lim_runner=150
else
  : "${OUT:=$root/outputs/gpu_check_dry}"
  : "${JSTYLE_GPU_CHECK_BUDGET:=6000}"
  : "${JSTYLE_GPU_CHECK_HOME:=$root/.gpu-check-home/dry-run}"   # ignored by git; a fresh Jittor build the first time
  : "${JSTYLE_GPU_CHECK_TORCH_PYTHON:=${JSTYLE_CHECKER_PYTHON:-${JSTYLE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/jstyle}/envs/checker/bin/python}}"
  if [ -z "${JSTYLE_GPU_CHECK_BASE_PYTHON:-}" ]; then  # the carried wheels are CPython 3.12's, as on the GPU machine
    JSTYLE_GPU_CHECK_BASE_PYTHON="$(find_python 3.12)" || {
      echo "error: no Python 3.12 found (python3.12 on PATH, pyenv, uv): install one or set JSTYLE_GPU_CHECK_BASE_PYTHON" >&2
      exit 1
    }
  fi
  device=cpu dtype=float32 latent=8 size=64 t2i_steps=2 styleid_steps=2 repeats=1
  # one style, 20 LoRA steps: the same stages and kernels as the whole demo (its 3 styles share every shape),
  # without the 3 x 200 LoRA steps that took 223 s a style here under load and ran the runner past 1200 s
  demo_args=(--devices cpu --styles 00 --train-steps 20)
  tests="test_schedulers.py"
  # Limits of a plumbing check, not timings: from a fresh clone every kernel compiles cold, and a 2-core CPU
  # shared with other work took 3-4x an idle one's time (the core build 799 s, the parity tests > 300 s, the
  # UNet bench 198 s at load 15-19)
  lim_machine=90 lim_refsite=120 lim_build=1500 lim_cuda_ops=300 lim_parity=900 lim_sd21=600
  lim_unet=600 lim_txt2img=600 lim_train=600 lim_styleid=600 lim_runner=1200
  export JSTYLE_BENCH_TINY=1
  # Jittor rewrites ~/.cache/jittor/config.json whenever a process's JITTOR_HOME differs from the one stored
  # there, and its compile helpers read it: on a shared machine other users' runs race with ours. A private
  # HOME for this run (the GPU machine runs only us, so it keeps the user's HOME).
  export HOME="$JSTYLE_GPU_CHECK_HOME/home"
  mkdir -p "$HOME"
fi
export OUT JSTYLE_GPU_CHECK_BUDGET JSTYLE_GPU_CHECK_HOME JSTYLE_GPU_CHECK_TORCH_PYTHON JSTYLE_GPU_CHECK_BASE_PYTHON
work="$JSTYLE_GPU_CHECK_HOME/check"          # scratch of this run (wheels unpacked, logs, the SD2.1 folder)
json="$OUT/gpu_check.json"
log="$OUT/gpu_check.log"
whl="$root/.whl"
reserve=8                                    # seconds kept for the final record

# The environment every phase sees: setup.sh offline from .whl/, the CUDA libraries of the torch venv.
export JSTYLE_HOME="$JSTYLE_GPU_CHECK_HOME"
export JSTYLE_BASE_PYTHON="$JSTYLE_GPU_CHECK_BASE_PYTHON"
export JSTYLE_REQUIREMENTS="$whl/requirements.txt"
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$whl" PIP_CONSTRAINT="" PIP_DISABLE_PIP_VERSION_CHECK=1
torch_venv="$(dirname "$(dirname "$JSTYLE_GPU_CHECK_TORCH_PYTHON")")"
export JSTYLE_CUDA_LIBS="${JSTYLE_CUDA_LIBS:-$torch_venv}"
export JSTYLE_CHECKER_PYTHON="$work/checker-python"   # the torch venv + diffusers (written by the refsite phase)
export JSTYLE_BENCH_SD21="$work/sd21-random"
export JSTYLE_GPU_CHECK_WORK="$work"
[ -f "$work/python-config-path" ] && python_config_path="$(cat "$work/python-config-path")" && export python_config_path

hpy() {  # the helper, on whichever python exists (the torch venv's on the GPU machine)
  local py="$JSTYLE_GPU_CHECK_TORCH_PYTHON"
  [ -x "$py" ] || py="$(command -v python3)"
  "$py" "$root/bench/_gpu_check.py" "$@"
}
fig() { printf '%s\n' "$@" >> "$GPU_CHECK_KV"; }   # KEY=VALUE... : figures of the running phase
jstyle_env() {  # source envs/env.sh (after the build) in a phase's shell
  # shellcheck source=envs/env.sh
  source "$root/envs/env.sh"
}

# ---- phases (each runs in its own `bash gpu_check.sh --phase NAME` under timeout) ---------------------------
phase_machine() {
  local gpu="" drv="" nvcc_v="" gxx="" pyv torchv
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || true
    gpu="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
    drv="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
  fi
  nvcc_v="$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  gxx="$(g++ --version 2>/dev/null | head -n 1)"
  pyv="$("$JSTYLE_GPU_CHECK_BASE_PYTHON" -c 'import sys; print(sys.version.split()[0])' 2>&1)"
  torchv="$(PYTHONPATH="" "$JSTYLE_GPU_CHECK_TORCH_PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' 2>&1 | tail -n 1)"
  hpy machine "$json" "gpu=$gpu" "driver=$drv" "nvcc=$nvcc_v" "nvcc_path=$(command -v nvcc)" "gxx=$gxx" \
    "python=$pyv" "base_python=$JSTYLE_GPU_CHECK_BASE_PYTHON" "torch=$torchv" "cores=$(nproc)" \
    "disk_free_gb=$(df -Pk "$JSTYLE_GPU_CHECK_HOME" 2>/dev/null | awk 'NR==2 {printf "%.0f", $4 / 1048576}')" \
    "mode=$mode" "git=$(git -C "$root" rev-parse --short HEAD 2>/dev/null)"
  echo "gpu=$gpu driver=$drv nvcc=$nvcc_v python=$pyv torch=$torchv g++=$gxx"
  [ -n "$gxx" ] || { echo "error: no g++ on PATH: Jittor compiles with it; install g++ (build-essential)"; return 1; }
  [ -f "$whl/requirements.txt" ] || { echo "error: no .whl/requirements.txt: run bash bench/prepare_gpu_check.sh and carry .whl"; return 1; }
  # Jittor asks python3.X-config for the include flags; an interpreter without one gets a shim.
  hpy python-config "$JSTYLE_GPU_CHECK_BASE_PYTHON" "$work/bin/python3-config" > "$work/python-config-path" \
    || { rm -f "$work/python-config-path"; return 1; }
  fig "python_config=$(cat "$work/python-config-path")"
  [ "$mode" = cpu ] || [ -n "$gpu" ] || { echo "error: nvidia-smi found no GPU"; return 1; }
}

phase_refsite() {  # diffusers (+ what the torch venv lacks) unpacked next to it, and a python that sees it
  local out
  rm -rf "$work/refsite"
  out="$(hpy refsite "$JSTYLE_GPU_CHECK_TORCH_PYTHON" "$whl" "$whl/ref-requirements.txt" "$work/refsite")" || return 1
  echo "$out"
  fig "refsite=$out"
  cat > "$work/checker-python" <<EOF
#!/usr/bin/env bash
# The reference side for this run: $JSTYLE_GPU_CHECK_TORCH_PYTHON with diffusers from $work/refsite.
export PYTHONPATH="$work/refsite"
exec "$JSTYLE_GPU_CHECK_TORCH_PYTHON" "\$@"
EOF
  chmod +x "$work/checker-python"
  "$work/checker-python" -c 'import diffusers, torch, transformers; print("diffusers", diffusers.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' \
    | tee "$work/ref-versions.txt" || { echo "error: diffusers does not import next to $JSTYLE_GPU_CHECK_TORCH_PYTHON (see above)"; return 1; }
  fig "versions=$(tail -n 1 "$work/ref-versions.txt")"
}

phase_sd21() {  # the random SD2.1 folder, made by diffusers (on the GPU when there is one, saved in $dtype)
  [ -e "$JSTYLE_BENCH_SD21/DONE" ] && { echo "already made: $JSTYLE_BENCH_SD21"; return 0; }
  rm -rf "$JSTYLE_BENCH_SD21" && mkdir -p "$JSTYLE_BENCH_SD21"
  "$JSTYLE_CHECKER_PYTHON" "$root/bench/_diffusers_unet_step.py" make "$JSTYLE_BENCH_SD21" "$dtype" "$device" || return 1
  fig "gb=$(du -sk "$JSTYLE_BENCH_SD21" | awk '{printf "%.2f", $1 / 1048576}')"
}

phase_build() {  # the jstyle env, offline, through the user's set-up path
  local env_dir="$JSTYLE_HOME/envs/jstyle"
  if [ ! -x "$env_dir/bin/python" ] && ! "$JSTYLE_BASE_PYTHON" -m venv "$env_dir"; then
    # a base python without ensurepip (Debian's python3 without python3-venv): pip from the carried wheel
    rm -rf "$env_dir"
    "$JSTYLE_BASE_PYTHON" -m venv --without-pip "$env_dir" || { echo "error: $JSTYLE_BASE_PYTHON cannot make a venv"; return 1; }
    local pip_whl=("$whl"/pip-*.whl)
    "$env_dir/bin/python" "${pip_whl[0]}/pip" install -q --no-index "${pip_whl[0]}" \
      || { echo "error: no pip for the jstyle env (carried pip wheel failed)"; return 1; }
    fig "venv=without ensurepip, pip from .whl"
  fi
  bash "$root/envs/setup.sh" jstyle || { echo "error: envs/setup.sh jstyle failed (see above)"; return 1; }
  jstyle_env
  fig "nvcc_path=${nvcc_path:-}" "cuda_home=$JSTYLE_CUDA_HOME" "cuda_driver=$JSTYLE_CUDA_DRIVER"
  fig "jittor=$("$JSTYLE_PYTHON" -c 'import jittor; print(jittor.__version__)' 2>/dev/null | tail -n 1)"
  [ "$mode" = cpu ] || [ -n "${nvcc_path:-}" ] || { echo "error: env.sh chose CPU (no CUDA home or driver; see [envs] lines above)"; return 1; }
}

phase_cuda_ops() {  # has_cuda, extern ops, a matmul and a conv on the device against numpy / the CPU
  jstyle_env
  "$JSTYLE_PYTHON" - "$device" "$GPU_CHECK_KV" <<'PY'
import sys
import time

import jittor as jt
import numpy as np
from jittor import compile_extern

device, kv = sys.argv[1], sys.argv[2]


def record(**figs):
    """Figures of this phase, written as they come (a crash later keeps them)."""
    print(figs, flush=True)
    with open(kv, "a") as f:
        f.write("".join(f"{k}={v}\n" for k, v in figs.items()))


libs = [n for n in ("cublas", "cudnn", "curand", "cufft", "cusparse", "cub") if getattr(compile_extern, n + "_ops", None)]
record(has_cuda=int(jt.has_cuda), extern=",".join(libs), devices=jt.core.get_device_count())
if device == "cuda" and not jt.has_cuda:
    sys.exit("error: Jittor has no CUDA (jt.has_cuda=0): see the build phase's [envs] lines")
rng = np.random.default_rng(0)
a, b = rng.standard_normal((256, 512)).astype(np.float32), rng.standard_normal((512, 128)).astype(np.float32)
x, w = rng.standard_normal((2, 8, 32, 32)).astype(np.float32), rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
ref_mm = a @ b
ref_conv = jt.nn.conv2d(jt.array(x), jt.array(w), padding=1).numpy()  # on the CPU
jt.flags.use_cuda = int(device == "cuda")
ok = True
for dt, tol in (("float32", 1e-3), ("float16", 2e-2)):
    try:
        t0 = time.perf_counter()
        mm = jt.matmul(jt.array(a).cast(dt), jt.array(b).cast(dt)).float32().numpy()
        conv = jt.nn.conv2d(jt.array(x).cast(dt), jt.array(w).cast(dt), padding=1).float32().numpy()
        e_mm = float(np.abs(mm - ref_mm).max() / np.abs(ref_mm).max())
        e_conv = float(np.abs(conv - ref_conv).max() / np.abs(ref_conv).max())
        good = e_mm < tol and e_conv < tol
        record(**{f"{dt}_first_s": round(time.perf_counter() - t0, 2), f"{dt}_matmul_rel_err": e_mm,
                  f"{dt}_conv_rel_err": e_conv, f"{dt}_ok": int(good)})
    except Exception as e:  # noqa: BLE001 - recorded, the other dtype still runs
        good = False
        record(**{f"{dt}_error": str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__})
    ok = ok and good
sys.exit(0 if ok else "error: CUDA matmul/conv failed or disagree with numpy/CPU (see above)")
PY
}

phase_parity() {  # the tiny parity tests with Jittor on $device, references from diffusers next to torch
  jstyle_env
  local args=() t rc
  for t in $tests; do args+=("tests/jstyle/$t"); done
  JSTYLE_TEST_DEVICE="$device" "$JSTYLE_PYTHON" -m pytest "${args[@]}" -v -rfE --durations=8 -p no:cacheprovider 2>&1 \
    | tee "$work/pytest.log"
  rc="${PIPESTATUS[0]}"
  fig "summary=$(hpy pytest-summary "$work/pytest.log")"
  return "$rc"
}

bench_run() {  # SCRIPT ARGS...: one bench script on $device/$dtype; its GPU_CHECK line becomes the figures
  jstyle_env
  "$JSTYLE_PYTHON" "$root/bench/$1" "${@:2}" --device "$device" --dtype "$dtype" --json 2>&1 | tee "$work/$1.log"
  local rc="${PIPESTATUS[0]}"
  fig "result=$(hpy bench-json "$work/$1.log")"
  return "$rc"
}
needs_sd21() { [ -e "$JSTYLE_BENCH_SD21/DONE" ] || { echo "error: no random SD2.1 folder (phase sd21 failed)"; return 3; }; }
phase_bench_unet() { needs_sd21 && bench_run unet_step.py --latent "$latent" --repeats "$repeats" --parts unet,vae; }
phase_bench_txt2img() { needs_sd21 && bench_run txt2img.py --latent "$latent" --steps "$t2i_steps" --repeats 1; }
phase_bench_train() { needs_sd21 && bench_run train_step.py --latent "$latent" --repeats "$repeats"; }
phase_bench_styleid() {  # jstyle's side only (see the report); its first call includes kernel compiles
  needs_sd21 && bench_run methods_memory.py --one styleid --model "$JSTYLE_BENCH_SD21" --size "$size" \
    --steps "$styleid_steps"
}

phase_runner() {  # run_all.sh --demo end to end on a CUDA worker (no scoring: the checker env is not here)
  local out="$work/demo-out" rc
  rm -rf "$out"
  # the seconds of each task run_all finished, also when the phase's timeout stops it (TERM)
  trap 'fig "task_s=$(hpy task-seconds "$out/manifest.json")"; exit 1' TERM
  bash "$root/run_all.sh" --demo "${demo_args[@]}" --no-check --no-progress --out "$out"
  rc=$?
  trap - TERM
  fig "task_s=$(hpy task-seconds "$out/manifest.json")"
  fig "submission_zip=$([ -s "$out/submission.zip" ] && echo 1 || echo 0)" "out=$out"
  fig "worker_log=$(grep -hs "loaded .* on " "$out"/logs/worker-*.log 2>/dev/null | head -n 3 | tr '\n' ' ' | cut -c1-400)"
  return "$rc"
}

# ---- driver ------------------------------------------------------------------------------------------------
declare -A state=()
run_phase() {  # NAME LIMIT [NEEDS...]: run a phase, record it; returns 0 when it passed
  local name="$1" limit="$2" need left t0 rc status secs figs
  shift 2
  if [ -n "${JSTYLE_GPU_CHECK_PHASES:-}" ] && [[ ",$JSTYLE_GPU_CHECK_PHASES," != *",$name,"* ]]; then
    state[$name]=skipped; hpy phase "$json" "$name" skipped 0 "reason=not in JSTYLE_GPU_CHECK_PHASES"; return 1
  fi
  for need in "$@"; do
    if [ "${state[$need]:-}" != ok ]; then
      state[$name]=skipped; echo "== $name: skipped ($need: ${state[$need]:-not run})"
      hpy phase "$json" "$name" skipped 0 "reason=needs $need (${state[$need]:-not run})"; return 1
    fi
  done
  left=$(( JSTYLE_GPU_CHECK_BUDGET - (SECONDS - t_start) - reserve ))
  if [ "$left" -lt 10 ]; then
    state[$name]=skipped; echo "== $name: skipped (out of time)"
    hpy phase "$json" "$name" skipped 0 "reason=out of time"; return 1
  fi
  [ "$limit" -le "$left" ] || limit="$left"
  echo "== $name (limit ${limit}s, $(( SECONDS - t_start ))s into the run)"
  hpy phase "$json" "$name" running 0 "limit_s=$limit"
  export GPU_CHECK_KV="$work/phase-$name.kv"
  : > "$GPU_CHECK_KV"
  t0="${EPOCHREALTIME/,/.}"
  timeout --kill-after=5 "$limit" bash "$self" --phase "$name" < /dev/null
  rc=$?
  secs="$(awk -v a="$t0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }')"
  case "$rc" in 0) status=ok;; 124|137) status=timeout;; 3) status=skipped;; *) status=failed;; esac
  state[$name]="$status"
  mapfile -t figs < "$GPU_CHECK_KV"
  hpy phase "$json" "$name" "$status" "$secs" "rc=$rc" "limit_s=$limit" "${figs[@]}"
  echo "== $name: $status in ${secs}s (rc $rc)"
  [ "$status" = ok ]
}

main() {  # a function, so that bash has read the whole file before it runs (safe to edit while running)
  mkdir -p "$OUT" "$work"
  : > "$log"
  exec > >(hpy shorten | tee -a "$log") 2>&1
  tee_pid=$!
  t_start=$SECONDS
  rm -f "$json"
  hpy machine "$json" "started=$(date -u +%FT%TZ)" "mode=$mode" "budget_s=$JSTYLE_GPU_CHECK_BUDGET" || {
    echo "error: cannot write $json"; exit 1; }
  echo "gpu_check ($mode): budget ${JSTYLE_GPU_CHECK_BUDGET}s, OUT=$OUT, JSTYLE_HOME=$JSTYLE_HOME"

  run_phase machine "$lim_machine"
  [ -f "$work/python-config-path" ] && python_config_path="$(cat "$work/python-config-path")" && export python_config_path
  run_phase refsite "$lim_refsite"
  # The SD2.1 folder (torch only) is made in the background while Jittor builds; its record comes after.
  sd21_pid=""
  if [ "${state[refsite]}" = ok ]; then
    ( run_phase sd21 "$lim_sd21" > "$work/sd21.log" 2>&1 ) &
    sd21_pid=$!
  fi
  run_phase build "$lim_build" machine
  run_phase cuda_ops "$lim_cuda_ops" build
  run_phase parity "$lim_parity" build refsite
  if [ -n "$sd21_pid" ]; then
    wait "$sd21_pid"
    cat "$work/sd21.log"
    state[sd21]="$(hpy load-status "$json" sd21 2>/dev/null || echo failed)"
  else
    state[sd21]=skipped; hpy phase "$json" sd21 skipped 0 "reason=needs refsite"
  fi
  run_phase bench_unet "$lim_unet" build sd21
  run_phase bench_txt2img "$lim_txt2img" build sd21
  run_phase bench_train "$lim_train" build sd21
  run_phase bench_styleid "$lim_styleid" build sd21
  run_phase runner "$lim_runner" build

  local summary="" name
  for name in machine refsite sd21 build cuda_ops parity bench_unet bench_txt2img bench_train bench_styleid runner; do
    summary+="$name=${state[$name]:-?} "
  done
  hpy machine "$json" "finished=$(date -u +%FT%TZ)" "total_s=$(( SECONDS - t_start ))" "summary=${summary% }"
  echo "gpu_check done in $(( SECONDS - t_start ))s: $summary"
  echo "wrote $json and $log"
  exec 1>&- 2>&-
  wait "$tee_pid" 2>/dev/null || sleep 1
  local failed=0
  for name in "${!state[@]}"; do [ "${state[$name]}" = ok ] || failed=1; done
  return "$failed"
}

if [ "${1:-}" = --phase ]; then  # a phase in its own process (under timeout)
  "phase_$2"
  exit $?
fi
main "$@"
exit $?
