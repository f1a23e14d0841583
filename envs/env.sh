# Sourced by every shell entry point (run_all.sh, check.sh, tests/run.sh, envs/setup.sh).
# The one place that decides where the two environments live and how Jittor runs offline.
# Override any variable by exporting it before sourcing.

JSTYLE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Stable per-machine location: Jittor's ~4 min core build is keyed by its install path.
JSTYLE_HOME="${JSTYLE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/jstyle}"
JSTYLE_ENV="${JSTYLE_ENV:-$JSTYLE_HOME/envs/jstyle}"
JSTYLE_CHECKER_ENV="${JSTYLE_CHECKER_ENV:-$JSTYLE_HOME/envs/checker}"
JSTYLE_PYTHON="${JSTYLE_PYTHON:-$JSTYLE_ENV/bin/python}"
JSTYLE_CHECKER_PYTHON="${JSTYLE_CHECKER_PYTHON:-$JSTYLE_CHECKER_ENV/bin/python}"
export JSTYLE_ROOT JSTYLE_HOME JSTYLE_ENV JSTYLE_CHECKER_ENV JSTYLE_PYTHON JSTYLE_CHECKER_PYTHON

# Jittor, offline and quiet.
export JITTOR_HOME="${JITTOR_HOME:-$JSTYLE_HOME/jittor}"
export FIX_TORCH_ERROR="${FIX_TORCH_ERROR:-0}"   # never let Jittor import torch
export log_silent="${log_silent:-1}"
# CUDA. Jittor gets nvcc only where a CUDA toolkit exists AND a driver works (nvidia-smi succeeds), and
# then the CUDA home envs/setup.sh assembled (the toolkit + cuBLAS/cuDNN found where installed; see
# envs/cuda_home.py). Anywhere else nvcc_path="" and Jittor runs on CPU as it always did (a visible nvcc
# without a driver used to crash `import jittor`). nvcc_path="" set by the user: CPU, no questions; a user's
# nvcc_path=<nvcc> only names the toolkit to use.
jstyle_real_nvcc() {  # CANDIDATES...: the real nvcc behind the first that works (wrapper scripts resolved)
  local cand here
  for cand in "$@"; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    here="$("$cand" -dryrun -x cu -E /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n 1)"
    if [ -n "$here" ] && [ -x "$here/nvcc" ]; then printf '%s/nvcc\n' "$(cd "$here" && pwd -P)"; return 0; fi
  done
  return 1
}
if [ -z "${JSTYLE_CUDA_TOOLKIT+x}" ]; then
  JSTYLE_CUDA_TOOLKIT=""
  if [ "${nvcc_path-unset}" != "" ]; then
    _nvcc="$(jstyle_real_nvcc "${nvcc_path:-}" ${CUDA_HOME:+"$CUDA_HOME/bin/nvcc"} "$(command -v nvcc 2>/dev/null || true)" \
      /usr/local/cuda/bin/nvcc || true)"
    [ -z "$_nvcc" ] || JSTYLE_CUDA_TOOLKIT="$(dirname "$(dirname "$_nvcc")")"
    unset _nvcc
  fi
  JSTYLE_CUDA_DRIVER=0
  if [ "${nvcc_path-unset}" != "" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    JSTYLE_CUDA_DRIVER=1
  fi
fi
# One stable folder per toolkit (Jittor's caches key on the paths in its compile commands).
JSTYLE_CUDA_HOME="${JSTYLE_CUDA_HOME:-$JSTYLE_HOME/cuda-home/$(printf '%s' "${JSTYLE_CUDA_TOOLKIT#/}" | tr '/' '-')}"
export JSTYLE_CUDA_TOOLKIT JSTYLE_CUDA_DRIVER JSTYLE_CUDA_HOME
if [ "${nvcc_path-unset}" != "" ]; then
  if [ -n "$JSTYLE_CUDA_TOOLKIT" ] && [ "$JSTYLE_CUDA_DRIVER" = 1 ] && [ -e "$JSTYLE_CUDA_HOME/.jstyle-cuda-home" ]; then
    export nvcc_path="$JSTYLE_CUDA_HOME/bin/nvcc"
  else
    if [ -z "${JSTYLE_CUDA_NOTE+x}" ]; then  # one line per session
      if [ -z "$JSTYLE_CUDA_TOOLKIT" ] && [ "$JSTYLE_CUDA_DRIVER" = 1 ]; then
        echo "[envs] NVIDIA driver found but no CUDA toolkit (nvcc on PATH, CUDA_HOME or /usr/local/cuda): running on CPU" >&2
      elif [ "$JSTYLE_CUDA_DRIVER" = 1 ]; then
        echo "[envs] CUDA toolkit and driver found, but no CUDA home at $JSTYLE_CUDA_HOME (run bash envs/setup.sh): running on CPU" >&2
      elif [ -n "$JSTYLE_CUDA_TOOLKIT" ]; then
        echo "[envs] CUDA toolkit found ($JSTYLE_CUDA_TOOLKIT) but no working NVIDIA driver (nvidia-smi failed): running on CPU" >&2
      fi
      export JSTYLE_CUDA_NOTE=1
    fi
    export nvcc_path=""
  fi
fi
# Wall-clock seconds for the phase lines of set-up, run_all.sh and tests/run.sh: t0="$(jstyle_now)" ...
# "$(jstyle_since "$t0")".
jstyle_now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
jstyle_since() { awk -v a="$1" -v b="$(jstyle_now)" 'BEGIN { printf "%.0f", b - a }'; }
# Jittor's own downloads (cutt, cutlass, nccl) stay off: no network here or on most clusters.
export use_cutt="${use_cutt:-0}" use_cutlass="${use_cutlass:-0}" use_nccl="${use_nccl:-0}"
# oneDNN: only when its library was wired into the Jittor cache (never downloaded). Its headers, where they are not
# the system's (pip's oneDNN), also reach the kernels jstyle compiles itself (jstyle/models/conv.py) through CPATH.
JSTYLE_ONEDNN_DIR="$JITTOR_HOME/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp"
if [ -z "${use_mkl+x}" ]; then
  if [ -e "$JSTYLE_ONEDNN_DIR/lib/libmkldnn.so" ]; then
    export use_mkl=1
  else
    export use_mkl=0
  fi
fi
if [ "$(readlink "$JSTYLE_ONEDNN_DIR/include" 2>/dev/null)" != /usr/include ] && [ -e "$JSTYLE_ONEDNN_DIR/include/dnnl.hpp" ] \
    && [[ ":${CPATH:-}:" != *":$JSTYLE_ONEDNN_DIR/include:"* ]]; then
  export CPATH="$JSTYLE_ONEDNN_DIR/include${CPATH:+:$CPATH}"
fi
export JSTYLE_ONEDNN_DIR
# MKL for the CPU GEMMs (jstyle/models/linear.py), where envs/setup.sh installed it.
if [ -z "${JSTYLE_MKL_DIR+x}" ] && [ -e "$JSTYLE_HOME/mkl/lib/libmkl_core.so.3" ]; then
  export JSTYLE_MKL_DIR="$JSTYLE_HOME/mkl/lib"
fi
export PYTHONPATH="$JSTYLE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
# glibc malloc backs large blocks with transparent huge pages (both envs): 15-20% faster and steadier SD-size
# runs on CPU (measured by bench/unet_step.py, both sides alike). JSTYLE_THP=0 leaves malloc as it is.
if [ "${JSTYLE_THP:-1}" = 1 ] && [[ ":${GLIBC_TUNABLES:-}:" != *":glibc.malloc.hugetlb="* ]]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
fi
