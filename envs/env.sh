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
# Without a usable CUDA runtime, a visible nvcc makes `import jittor` crash: hide it.
if [ -z "${nvcc_path+x}" ]; then
  if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; }; then
    export nvcc_path=""
  fi
fi
# oneDNN: only when its library was wired into the Jittor cache (never downloaded).
if [ -z "${use_mkl+x}" ]; then
  if [ -e "$JITTOR_HOME/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp/lib/libmkldnn.so" ]; then
    export use_mkl=1
  else
    export use_mkl=0
  fi
fi
export PYTHONPATH="$JSTYLE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
# glibc malloc backs large blocks with transparent huge pages (both envs): 15-20% faster and steadier SD-size
# runs on CPU (measured by bench/unet_step.py, both sides alike). JSTYLE_THP=0 leaves malloc as it is.
if [ "${JSTYLE_THP:-1}" = 1 ] && [[ ":${GLIBC_TUNABLES:-}:" != *":glibc.malloc.hugetlb="* ]]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
fi
