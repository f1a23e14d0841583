#!/usr/bin/env bash
# Create or update the project's two Python environments (idempotent).
#   bash envs/setup.sh [jstyle|checker|all]      (default: all)
#   bash envs/setup.sh cuda-build                 (CI: Jittor's CUDA core + extern ops build here, no GPU needed)
#   bash envs/setup.sh cuda12-build               (CI: the same against CUDA 12.4 + cuDNN 8.9 from the registries)
# jstyle env: Jittor side, never torch. checker env: PyTorch side, never jittor.
# JSTYLE_REQUIREMENTS=FILE installs the jstyle env from FILE instead of envs/jstyle-requirements.txt
# (bench/gpu_check.sh: the offline subset carried in .whl/, with PIP_NO_INDEX=1 PIP_FIND_LINKS=.whl).
# Both live at stable paths (see envs/env.sh) so Jittor's core build is paid once per machine.
# A second run with unchanged requirements is a no-op.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
user_use_mkl="${use_mkl-unset}"   # a user's own choice wins over the oneDNN auto-detection
user_nvcc_path="${nvcc_path-unset}"   # likewise over the CUDA detection
# shellcheck source=envs/env.sh
source "$here/env.sh"
base_python="${JSTYLE_BASE_PYTHON:-python3}"
which_envs="${1:-all}"
case "$which_envs" in jstyle|checker|all|cuda-build|cuda12-build) ;;
  *) echo "usage: bash envs/setup.sh [jstyle|checker|all|cuda-build|cuda12-build]" >&2; exit 2;; esac

log() { printf '[envs] %s\n' "$*" >&2; }
timed() {  # LABEL CMD...: run CMD; when it did work (took 3 s or more), print "LABEL: N s"
  local label="$1" t0 rc=0 secs
  shift
  t0="$(jstyle_now)"
  set +e
  (set -e; "$@")  # a subshell with errexit of its own (errexit is ignored under `cmd || ...`)
  rc=$?
  set -e
  secs="$(jstyle_since "$t0")"
  [ "$secs" -lt 3 ] || log "$(printf '%-32s %4d s' "$label:" "$secs")"
  return "$rc"
}

stamp_of() {  # requirements file -> hash of (requirements, python version)
  { cat "$1"; "$base_python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16
}

make_env() {  # name dir requirements forbidden_module
  local name="$1" dir="$2" req="$3" forbidden="$4" stamp
  stamp="$(stamp_of "$req")"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.jstyle-stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$name env up to date: $dir"
    return 0
  fi
  mkdir -p "$(dirname "$dir")"
  if [ ! -x "$dir/bin/python" ]; then
    log "creating $name env at $dir"
    "$base_python" -m venv "$dir"
  fi
  log "installing $name requirements ($(basename "$req"))"
  "$dir/bin/python" -m pip install --disable-pip-version-check -q -r "$req" 2>&1 \
    | grep -v "^WARNING: Location 'file:" >&2 || true
  "$dir/bin/python" -m pip check >/dev/null 2>&1 || log "pip check reports conflicts in $name env (continuing)"
  if ! "$dir/bin/python" - "$req" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
bad = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if "==" in line:
        name, want = line.split("==")
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have is None or have.split("+")[0] != want.split("+")[0]:
            bad.append(f"{name}=={want} (have {have})")
if bad:
    print("not installed as pinned: " + ", ".join(bad[:5]), file=sys.stderr)
    sys.exit(1)
PY
  then
    log "ERROR: $name env install failed; see pip output above"; exit 1
  fi
  if "$dir/bin/python" -c "import $forbidden" >/dev/null 2>&1; then
    log "ERROR: '$forbidden' is importable in the $name env ($dir); remove it: $dir/bin/pip uninstall $forbidden"
    exit 1
  fi
  echo "$stamp" > "$dir/.jstyle-stamp.tmp" && mv "$dir/.jstyle-stamp.tmp" "$dir/.jstyle-stamp"
  log "$name env ready: $dir"
}

warm_jittor() {
  if [ ! -e "$JITTOR_HOME/.jstyle-core-built" ]; then
    log "building Jittor's core (about 4 minutes on 2 cores, once per machine)"
  fi
  "$JSTYLE_PYTHON" -c "import jittor as jt; assert float((jt.ones((2, 2)) * 2).sum()) == 8.0" \
    || { log "ERROR: Jittor failed to import; see above (JITTOR_HOME=$JITTOR_HOME)"; exit 1; }
  mkdir -p "$JITTOR_HOME" && touch "$JITTOR_HOME/.jstyle-core-built"
}

# REQ NAME FILE...: REQ's packages (pip, no dependencies, no root) in $JSTYLE_HOME/NAME/<stamp>, installed once; prints
# the folder. Fails (nothing printed, no half-installed folder kept) when pip cannot install them or a FILE is missing.
pip_prefix() {
  local req="$here/$1" dir file
  dir="$JSTYLE_HOME/$2/$(stamp_of "$req")"
  shift 2
  if [ ! -e "$dir/.jstyle-stamp" ]; then
    rm -rf "$dir.tmp"
    "$JSTYLE_PYTHON" -m pip install --disable-pip-version-check -q --no-deps --prefix "$dir.tmp" -r "$req" \
      >/dev/null 2>&1 || { rm -rf "$dir.tmp"; return 1; }
    for file in "$@"; do [ -e "$dir.tmp/$file" ] || { rm -rf "$dir.tmp"; return 1; }; done
    touch "$dir.tmp/.jstyle-stamp" && rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  printf '%s\n' "$dir"
}

# oneDNN for Jittor's conv/matmul on CPU (13x faster at SD size); Jittor never downloads it. Sources, first that
# works: Intel's pip packages (envs/onednn-requirements.txt, no root, any distribution) into a cached folder, then
# Debian's libdnnl-dev (apt-get as root). JSTYLE_ONEDNN_SOURCE=system skips the pip packages; JSTYLE_ONEDNN=0 uses
# none. Jittor skips its own download when its cache holds this folder: include/ and lib/libmkldnn.so (plus
# lib/libdnnl.so.2, the name its ops load through their runpath); env.sh adds a non-system include/ to CPATH.
onednn_from_system() {  # prints "LIB INCLUDE" of the system's oneDNN 2.x, installing Debian's as root where it can
  local cand
  if [ ! -e /usr/include/dnnl.hpp ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's libdnnl-dev (oneDNN) for fast CPU kernels"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libdnnl-dev >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libdnnl-dev >/dev/null 2>&1; } \
      || true
  fi
  [ -e /usr/include/dnnl.hpp ] || return 1
  for cand in /usr/lib/x86_64-linux-gnu/libdnnl.so.2 /usr/lib/aarch64-linux-gnu/libdnnl.so.2 /usr/lib/libdnnl.so.2; do
    [ -e "$cand" ] && { printf '%s /usr/include\n' "$cand"; return 0; }
  done
  return 1
}

wire_onednn() {
  [ "${JSTYLE_ONEDNN:-1}" = 1 ] || { log "oneDNN disabled (JSTYLE_ONEDNN=0): use_mkl=0"; return 0; }
  local lib="" inc="" from dir="$JSTYLE_ONEDNN_DIR"
  if [ "${JSTYLE_ONEDNN_SOURCE:-pip}" != system ] \
      && from="$(pip_prefix onednn-requirements.txt onednn lib/libdnnl.so.2 include/dnnl.hpp)"; then
    lib="$from/lib/libdnnl.so.2" inc="$from/include"
  elif from="$(onednn_from_system)"; then
    read -r lib inc <<<"$from"
  else
    log "oneDNN not available (pip could not install envs/onednn-requirements.txt, no libdnnl-dev): Jittor uses its generic CPU kernels (use_mkl=0)"
    return 0
  fi
  if [ "$(readlink "$dir/lib/libmkldnn.so" 2>/dev/null)" != "$lib" ] || [ "$(readlink "$dir/lib/libdnnl.so.2")" != "$lib" ] \
      || [ "$(readlink "$dir/include")" != "$inc" ]; then
    mkdir -p "$dir/lib"
    ln -sfn "$lib" "$dir/lib/libmkldnn.so"
    ln -sfn "$lib" "$dir/lib/libdnnl.so.2"
    ln -sfn "$inc" "$dir/include"
    log "oneDNN wired into Jittor's cache ($lib): use_mkl=1"
  fi
}

# Intel's MKL for the CPU GEMMs of jstyle/models/linear.py (envs/mkl-requirements.txt): into a cached folder, linked
# as $JSTYLE_HOME/mkl/lib (env.sh exports it as JSTYLE_MKL_DIR). Only the GNU OpenMP / LP64 layers and the per-ISA
# kernels are kept. JSTYLE_MKL=0 skips it (Jittor's oneDNN GEMMs then).
install_mkl() {
  [ "${JSTYLE_MKL:-1}" = 1 ] || { log "MKL disabled (JSTYLE_MKL=0): GEMMs by oneDNN"; return 0; }
  local dir
  dir="$(pip_prefix mkl-requirements.txt mkl lib/libmkl_gnu_thread.so.3)" \
    || { log "MKL not available (pip could not install envs/mkl-requirements.txt): GEMMs by oneDNN"; return 0; }
  find "$dir/lib" -maxdepth 1 -name 'libmkl_*' \( -name '*scalapack*' -o -name '*blacs*' -o -name '*cdft*' \
    -o -name '*tbb_thread*' -o -name '*intel_thread*' -o -name '*sequential*' -o -name '*ilp64*' \
    -o -name 'libmkl_intel_lp64*' \) -delete  # layers jstyle does not load (a no-op once done)
  [ "$(readlink "$JSTYLE_HOME/mkl/lib")" = "$dir/lib" ] || ln -sfn "$dir/lib" "$JSTYLE_HOME/mkl/lib"
}

# Jittor 1.3.11 does not build on CUDA 13 / cuDNN 9 as released: envs/patch_jittor.py (a no-op once applied;
# on a CPU build it costs one object's recompile).
patch_jittor() { "$JSTYLE_PYTHON" "$here/patch_jittor.py"; }

cuda_major() { "$JSTYLE_CUDA_TOOLKIT/bin/nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p'; }

# The pinned cuBLAS/cuDNN/... pip packages in a cached folder (GBs: only where a CUDA toolkit exists).
# Prints the folder.
install_cuda_libs() {
  local req dir
  req="$here/cuda$(cuda_major)-requirements.txt"
  [ -f "$req" ] || { log "ERROR: no $req for this CUDA toolkit; set JSTYLE_CUDA_LIBS to a venv with cuBLAS and cuDNN"; return 1; }
  dir="$JSTYLE_HOME/cuda-libs/$(stamp_of "$req")"
  if [ ! -e "$dir/.jstyle-stamp" ]; then
    log "installing cuBLAS/cuDNN/cuRAND/cuFFT/cuSPARSE ($(basename "$req")) into $dir"
    rm -rf "$dir.tmp"
    "$JSTYLE_PYTHON" -m pip install --disable-pip-version-check -q --no-deps --target "$dir.tmp" -r "$req" 2>&1 \
      | { grep -v "^WARNING: Location 'file:" || true; } >&2; [ "${PIPESTATUS[0]}" = 0 ] \
      || { log "ERROR: pip could not install $(basename "$req") (offline?); set JSTYLE_CUDA_LIBS to a venv with cuBLAS and cuDNN"; return 1; }
    touch "$dir.tmp/.jstyle-stamp" && rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  printf '%s\n' "$dir"
}

# A CUDA toolkit and a working driver: assemble the CUDA home Jittor builds against (envs/cuda_home.py),
# cuBLAS/cuDNN taken from JSTYLE_CUDA_LIBS, the two envs, the active venv or python3's, else pip-installed.
setup_cuda() {
  [ -n "$JSTYLE_CUDA_TOOLKIT" ] && [ "$JSTYLE_CUDA_DRIVER" = 1 ] || return 0
  local roots=() py_venv libs
  IFS=: read -r -a roots <<< "${JSTYLE_CUDA_LIBS:-}"
  py_venv="$(dirname "$(dirname "$(command -v python3 2>/dev/null || echo /)")")"
  [ -e "$py_venv/pyvenv.cfg" ] || py_venv=""
  roots+=("$JSTYLE_ENV" "$JSTYLE_CHECKER_ENV" "${VIRTUAL_ENV:-}" "$py_venv")
  if ! "$JSTYLE_PYTHON" "$here/cuda_home.py" "$JSTYLE_CUDA_TOOLKIT" "$JSTYLE_CUDA_HOME" "${roots[@]}" 2>/dev/null; then
    libs="$(install_cuda_libs)" || { log "CUDA off: Jittor runs on CPU"; return 0; }
    "$JSTYLE_PYTHON" "$here/cuda_home.py" "$JSTYLE_CUDA_TOOLKIT" "$JSTYLE_CUDA_HOME" "${roots[@]}" "$libs" \
      || { log "CUDA off: Jittor runs on CPU"; return 0; }
  fi
}

# CI, on any machine with a CUDA toolkit (no GPU or driver needed): Jittor's CUDA core and its extern ops
# (cuBLAS, cuDNN, cuRAND, cuFFT, cuSPARSE, CUB) compile and load against this toolkit and the pinned pip
# libraries, in a JITTOR_HOME of their own. Without a driver Jittor must then report 0 devices (CPU).
cuda_build_check() {
  [ -n "$JSTYLE_CUDA_TOOLKIT" ] || { log "cuda-build: SKIP: no nvcc found (PATH, CUDA_HOME, /usr/local/cuda)"; exit 3; }
  local libs
  libs="$(install_cuda_libs)"
  jittor_cuda_build "$JSTYLE_CUDA_TOOLKIT" "$libs" "$JSTYLE_HOME/jittor-cuda-build"
}

# CI's second CUDA build: CUDA 12.4 with cuDNN 8.9, wholly from the registries. nvcc, cicc, fatbinary, nvlink and
# libdevice from Debian's nvidia-cuda-toolkit (trixie non-free; PyPI's nvcc wheels carry no nvcc), downloaded
# with a private apt list (the system's sources untouched) and unpacked, not installed; the runtime, headers and
# libraries from pip (envs/cuda12-requirements.txt); envs/cuda12_toolkit.py lays them out as a toolkit.
cuda12_build_check() {
  local dir="$JSTYLE_HOME/cuda12" req="$here/cuda12-requirements.txt" pkg="nvidia-cuda-toolkit=12.4.131~12.4.1-2"
  local pip_dir apt_dir deb_dir apt_opts
  pip_dir="$dir/pip-$(stamp_of "$req")" deb_dir="$dir/deb-${pkg##*=}" apt_dir="$dir/apt"
  if [ ! -e "$pip_dir/.jstyle-stamp" ]; then
    log "cuda12-build: installing $(basename "$req") (cuDNN 8.9, cuBLAS, ... about 2 GB) into $pip_dir"
    rm -rf "$pip_dir.tmp"
    "$JSTYLE_PYTHON" -m pip install --disable-pip-version-check -q --no-deps --target "$pip_dir.tmp" -r "$req" \
      >"$dir.pip.log" 2>&1 || { log "cuda12-build: SKIP: pip could not install $(basename "$req") (see $dir.pip.log)"; exit 3; }
    touch "$pip_dir.tmp/.jstyle-stamp" && rm -rf "$pip_dir" && mv "$pip_dir.tmp" "$pip_dir"
  fi
  if [ ! -e "$deb_dir/.jstyle-stamp" ]; then
    command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 \
      || { log "cuda12-build: SKIP: no apt-get/dpkg here to fetch Debian's $pkg"; exit 3; }
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/get"
    echo "deb http://deb.debian.org/debian trixie non-free" > "$apt_dir/sources.list"
    apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=/dev/null
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
    log "cuda12-build: downloading Debian's $pkg (nvcc 12.4, 87 MB)"
    { apt-get "${apt_opts[@]}" update -qq && (cd "$apt_dir/get" && apt-get "${apt_opts[@]}" download -qq "$pkg"); } \
      >"$dir.apt.log" 2>&1 || { log "cuda12-build: SKIP: apt could not download $pkg (see $dir.apt.log)"; exit 3; }
    rm -rf "$deb_dir.tmp" && mkdir -p "$deb_dir.tmp"
    dpkg -x "$apt_dir"/get/nvidia-cuda-toolkit_*.deb "$deb_dir.tmp"
    rm -rf "$apt_dir/get"
    touch "$deb_dir.tmp/.jstyle-stamp" && rm -rf "$deb_dir" && mv "$deb_dir.tmp" "$deb_dir"
  fi
  "$JSTYLE_PYTHON" "$here/cuda12_toolkit.py" "$deb_dir" "$pip_dir" "$dir/toolkit"
  jittor_cuda_build "$dir/toolkit" "$pip_dir" "$JSTYLE_HOME/jittor-cuda12-build"
}

# TOOLKIT LIBS BUILD: assemble BUILD/cuda-home, build Jittor's CUDA core and extern ops in JITTOR_HOME=BUILD, check
# that a CUB kernel and a Blackwell (sm_120, where nvcc knows it) kernel compile with Jittor's JIT flags.
jittor_cuda_build() {
  local toolkit="$1" libs="$2" build="$3"
  "$JSTYLE_PYTHON" "$here/cuda_home.py" "$toolkit" "$build/cuda-home" "$libs"
  [ -e "$build/.jstyle-core-built" ] || log "cuda-build: compiling Jittor's CUDA core and extern ops (cold: many minutes)"
  JITTOR_HOME="$build" nvcc_path="$build/cuda-home/bin/nvcc" use_mkl=0 "$JSTYLE_PYTHON" - <<'PY'
import jittor as jt
from jittor import compile_extern, compiler

libs = [n for n in ("cublas", "cudnn", "curand", "cufft", "cusparse", "cub")
        if getattr(compile_extern, n + "_ops", None) is not None]
print(f"[envs] cuda-build: cache={compiler.cache_path} devices={jt.core.get_device_count()} "
      f"has_cuda={int(jt.has_cuda)} extern={','.join(libs)}")
assert float((jt.ones((2, 2)) * 2).sum()) == 8.0  # and the CUDA build computes on CPU
# Jittor's CUDA kernels are JIT-compiled on a GPU with these flags: check that they take CUB (CCCL: C++17)
import os, re, shlex, subprocess
src = os.path.join(compiler.cache_path, "jstyle_cub_check.cu")
with open(src, "w") as f:
    f.write('#include <cub/device/device_segmented_radix_sort.cuh>\n#include "helper_cuda.h"\n'
            "void jstyle_sort(float* k, float* o, int n, int* s) { size_t b = 0; checkCudaErrors("
            "cub::DeviceSegmentedRadixSort::SortKeys(nullptr, b, k, o, n, 1, s, s + 1)); }\n"
            "__global__ void jstyle_scale(float* x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; "
            "if (i < n) x[i] *= 2.f; }\n")
flags = [f for f in shlex.split(jt.flags.nvcc_flags) if not f.startswith(("-l", "-L"))]
subprocess.run([jt.flags.nvcc_path, src, *flags, "-c", "-o", src + ".o"], check=True)
print(f"[envs] cuda-build: CUB kernel compiled with Jittor's nvcc flags: {src}.o")
# A Blackwell GPU (sm_120: RTX 50xx; sm_100: B200) gets kernels built for its own arch, not clamped to sm_90
# (envs/patch_jittor.py): Jittor's arch flags for a device list of [120], from the same code a GPU run takes
import jittor_utils
nvcc_version = list(jittor_utils.get_int_version(jt.flags.nvcc_path))
arch = compiler.cuda_arch_flags([120], nvcc_version) if nvcc_version >= [12, 8] else ""
if arch:
    subprocess.run([jt.flags.nvcc_path, src, *flags, *shlex.split(arch), "-cubin", "-o", src + ".cubin"], check=True)
    # the cubin's own arch, from its ELF header's e_flags (bits 8-15 from ELF ABI version 8, nvcc 12.8+; bits 0-7 before)
    head = open(src + ".cubin", "rb").read(52)
    e_flags = int.from_bytes(head[48:52], "little")
    found = [f"sm_{(e_flags >> 8) & 0xFF if head[8] >= 8 else e_flags & 0xFF}"]
    print(f"[envs] cuda-build: sm_120 kernel: flags '{arch.strip()}', cubin arch {found}")
else:
    print(f"[envs] cuda-build: sm_120 not checked: nvcc {nvcc_version} predates CUDA 12.8")
try:
    jt.flags.use_cuda = 1
    raise SystemExit("cuda-build: use_cuda=1 was accepted with no device")
except RuntimeError:
    print("[envs] cuda-build: use_cuda=1 refused (no device): CPU fallback")
PY
  touch "$build/.jstyle-core-built"
}

# Each env has its own lock, so the checker env (mostly unpacking torch) installs in the background while
# the jstyle env's Jittor core compiles; a second set-up on the same machine waits for the first.
setup_checker() {
  exec 8>"$JSTYLE_HOME/setup-checker.lock"
  flock 8
  timed "checker env" make_env checker "$JSTYLE_CHECKER_ENV" "$here/checker-requirements.txt" jittor
}

t_total="$(jstyle_now)"
mkdir -p "$JSTYLE_HOME"
checker_pid=""
if [ "$which_envs" = all ]; then
  setup_checker &
  checker_pid=$!
elif [ "$which_envs" = checker ]; then
  setup_checker
fi
if [ "$which_envs" != checker ]; then
  exec 9>"$JSTYLE_HOME/setup-jstyle.lock"
  flock 9
  timed "jstyle env" make_env jstyle "$JSTYLE_ENV" "${JSTYLE_REQUIREMENTS:-$here/jstyle-requirements.txt}" torch
  timed "Jittor patch" patch_jittor
  if [ "$which_envs" = cuda-build ]; then
    timed "cuda-build" cuda_build_check
    exit 0
  fi
  if [ "$which_envs" = cuda12-build ]; then
    timed "cuda12-build" cuda12_build_check
    exit 0
  fi
  timed "oneDNN" wire_onednn
  timed "MKL" install_mkl
  timed "CUDA home" setup_cuda
  # env.sh picks use_mkl and nvcc_path from the steps above; re-read it now that their files may exist.
  if [ "$user_use_mkl" = unset ]; then unset use_mkl; fi
  if [ "$user_nvcc_path" = unset ]; then unset nvcc_path; fi
  source "$here/env.sh"
  timed "Jittor core" warm_jittor
fi
if [ -n "$checker_pid" ]; then
  wait "$checker_pid" || { log "ERROR: checker env set-up failed (see above)"; exit 1; }
fi
secs="$(jstyle_since "$t_total")"
[ "$secs" -lt 5 ] || log "$(printf '%-32s %4d s' "set-up total:" "$secs")"
