"""Patch the installed Jittor 1.3.11 for CUDA 13, cuDNN 9, Blackwell GPUs and its config.json race (idempotent; a
quick no-op once applied).

    python envs/patch_jittor.py [--check]

Run by envs/setup.sh with the jstyle env's python, before Jittor's first import. Each change is an
exact source edit; an expected line that is missing (another Jittor version) is a one-line error.
The CPU build is unaffected: helper_cuda.h is outside Jittor's cache keys, cuda_flags.cc recompiles
alone (one object and a relink), the Python edits for CUDA only act when nvcc 13, cuDNN 9 or a Blackwell GPU
are in use, and the config.json one only where several JITTOR_HOMEs are in use.
Paths are relative to the jittor package.
--check exits 1 when a change is still to be applied, without writing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import NamedTuple


class Change(NamedTuple):
    path: str  # relative to the jittor package
    old: str
    new: str
    why: str


_COMPUTE_MODE = "cudaDevAttrComputeMode"
_HELPER = (
    "// jstyle: CUDA 13 removed cudaDeviceProp.computeMode and .clockRate; ask cudaDeviceGetAttribute\n"
    "inline int jt_device_attr(cudaDeviceAttr attr, int dev) {\n"
    "  int value = 0;\n"
    "  cudaDeviceGetAttribute(&value, attr, dev);\n"
    "  return value;\n"
    "}\n\n"
)
_COMPILE_CULIB = ("    # compile and get operators\n"
                  "    culib = compile_custom_ops(culib_src_files, return_module=True,\n"
                  '        extra_flags=f" -I\\"{jt_cuda_include}\\" -I\\"{jt_culib_include}\\" '
                  '{link_flags} {extra_flags} ")\n')
_CUDNN9 = 'os.path.isfile(os.path.join(os.path.dirname(cuda_include_name), "cudnn_graph.h"))'

_ARCH_OLD = """\
if has_cuda and is_cuda:
    nvcc_flags = " " + os.environ.get("nvcc_flags", "") + " "
    nvcc_flags += convert_nvcc_flags(cc_flags)
    nvcc_version = list(jit_utils.get_int_version(nvcc_path))
    max_arch = 90
    if nvcc_version < [11,]:
        max_arch = 75
    elif nvcc_version < [11,1]:
        max_arch = 80
    elif nvcc_version < [11,8]:
        max_arch = 86
    if len(flags.cuda_archs):
        min_arch = 30
        archs = []
        for arch in flags.cuda_archs:
            if arch<min_arch:
                LOG.w(f"CUDA arch({arch})<{min_arch} is not supported")
                continue
            if arch>max_arch:
                LOG.w(f"CUDA arch({arch})>{max_arch} will be backward-compatible")
                arch = max_arch
            archs.append(arch)
        flags.cuda_archs = archs
        nvcc_flags += f" -arch=compute_{min(archs)} "
        nvcc_flags += ''.join(map(lambda x:f' -code=sm_{x} ', archs))
"""
_ARCH_NEW = """\
# jstyle: Jittor 1.3.11 clamped every GPU arch to sm_90 at most, so a Blackwell GPU (sm_100 B200, sm_120 RTX 50xx)
# got sm_90 cubins it cannot run; nvcc 12.8 builds for sm_100/sm_120, 12.9 and 13 also sm_103/sm_121
def cuda_supported_archs(cuda_archs, nvcc_version):
    max_arch = 90
    if nvcc_version < [11,]:
        max_arch = 75
    elif nvcc_version < [11,1]:
        max_arch = 80
    elif nvcc_version < [11,8]:
        max_arch = 86
    elif nvcc_version >= [12,9]:
        max_arch = 121
    elif nvcc_version >= [12,8]:
        max_arch = 120
    min_arch = 30
    archs = []
    for arch in cuda_archs:
        if arch<min_arch:
            LOG.w(f"CUDA arch({arch})<{min_arch} is not supported")
            continue
        if arch>max_arch:
            LOG.w(f"CUDA arch({arch})>{max_arch} will be backward-compatible")
            arch = max_arch
        archs.append(arch)
    return archs

def cuda_arch_flags(cuda_archs, nvcc_version):
    archs = cuda_supported_archs(cuda_archs, nvcc_version)
    return f" -arch=compute_{min(archs)} " + ''.join(map(lambda x:f' -code=sm_{x} ', archs))

if has_cuda and is_cuda:
    nvcc_flags = " " + os.environ.get("nvcc_flags", "") + " "
    nvcc_flags += convert_nvcc_flags(cc_flags)
    nvcc_version = list(jit_utils.get_int_version(nvcc_path))
    if len(flags.cuda_archs):
        flags.cuda_archs = cuda_supported_archs(flags.cuda_archs, nvcc_version)
        nvcc_flags += cuda_arch_flags(flags.cuda_archs, nvcc_version)
"""

CHANGES: tuple[Change, ...] = (
    Change("extern/cuda/inc/helper_cuda.h",
           "inline int gpuDeviceInit(int devID) {",
           _HELPER + "inline int gpuDeviceInit(int devID) {",
           "CUDA 13: cudaDeviceProp.computeMode/.clockRate removed (helper)"),
    Change("extern/cuda/inc/helper_cuda.h",
           "  if (deviceProp.computeMode == cudaComputeModeProhibited) {",
           f"  if (jt_device_attr({_COMPUTE_MODE}, devID) == cudaComputeModeProhibited) {{",
           "CUDA 13: cudaDeviceProp.computeMode removed"),
    Change("extern/cuda/inc/helper_cuda.h",
           "    if (deviceProp.computeMode != cudaComputeModeProhibited) {",
           f"    if (jt_device_attr({_COMPUTE_MODE}, current_device) != cudaComputeModeProhibited) {{",
           "CUDA 13: cudaDeviceProp.computeMode removed"),
    Change("extern/cuda/inc/helper_cuda.h",
           "sm_per_multiproc * deviceProp.clockRate;",
           "sm_per_multiproc * jt_device_attr(cudaDevAttrClockRate, current_device);",
           "CUDA 13: cudaDeviceProp.clockRate removed"),
    Change("extern/cuda/inc/helper_cuda.h",
           "        (deviceProp.computeMode != cudaComputeModeProhibited)) {",
           f"        (jt_device_attr({_COMPUTE_MODE}, current_device) != cudaComputeModeProhibited)) {{",
           "CUDA 13: cudaDeviceProp.computeMode removed"),
    Change("src/misc/cuda_flags.cc",
           "    if (count==-1)\n        cudaGetDeviceCount(&count);\n",
           "    // jstyle: without a driver (cudaErrorInsufficientDriver) count stayed -1 and array_op's init\n"
           "    // created a stream and aborted; no driver means 0 devices, and Jittor falls back to CPU\n"
           "    if (count==-1 && cudaGetDeviceCount(&count) != cudaSuccess) {\n"
           "        count = 0;\n"
           "        cudaGetLastError();\n"
           "    }\n",
           "CUDA 13 without a driver: get_device_count() returned -1"),
    Change("src/mem/allocator.cc",
           "    if (use_cuda_host_allocator)\n        allocator = &cuda_host_allocator;\n",
           "    // jstyle: with no device (no driver) there is no pinned host memory: "
           "plain CPU memory, as without CUDA\n"
           "    if (use_cuda_host_allocator && get_device_count())\n        allocator = &cuda_host_allocator;\n",
           "CUDA build without a driver: cudaMallocHost fails"),
    Change("compiler.py",
           '        nvcc_flags = nvcc_flags.replace("-Wall", "")\n',
           "        # jstyle: CUDA 13's CCCL (cub, thrust) requires C++17; g++'s CPU flags keep -std=c++14\n"
           '        if nvcc_version >= [13]:\n'
           '            nvcc_flags = nvcc_flags.replace("-std=c++14", "-std=c++17")\n'
           '        nvcc_flags = nvcc_flags.replace("-Wall", "")\n',
           "CUDA 13: CCCL requires C++17"),
    Change("compiler.py", _ARCH_OLD, _ARCH_NEW, "Blackwell: sm_100 / sm_120 were clamped to sm_90"),
    Change("compile_extern.py",
           '                libs = ["libcudnn_ops_infer.so", "libcudnn_ops_train.so", '
           '"libcudnn_cnn_infer.so", "libcudnn_cnn_train.so"]\n',
           '                libs = ["libcudnn_ops_infer.so", "libcudnn_ops_train.so", '
           '"libcudnn_cnn_infer.so", "libcudnn_cnn_train.so"]\n'
           "                # jstyle: cuDNN 9 renamed its sub-libraries (Jittor issue 666)\n"
           f"                if {_CUDNN9}:\n"
           '                    libs = ["libcudnn_graph.so", "libcudnn_ops.so", "libcudnn_cnn.so", "libcudnn_adv.so"]\n'
           '                    prefer_version = ("9",)\n',
           "cuDNN 9: sub-library names"),
    Change("compile_extern.py",
           _COMPILE_CULIB,
           "    # jstyle: cuDNN 9 removed the legacy RNN API (cudnnRNNForwardTraining, cudnnSetRNNDescriptor_v6):\n"
           "    # leave Jittor's cudnn_rnn ops out (nn.RNN/LSTM/GRU then run Jittor's own kernels)\n"
           f'    if lib_name == "cudnn" and link and {_CUDNN9}:\n'
           '        culib_src_files = [f for f in culib_src_files if "cudnn_rnn" not in os.path.basename(f)]\n'
           + _COMPILE_CULIB,
           "cuDNN 9: legacy RNN API removed"),
    Change("nn.py",
           "        if jt.flags.use_cuda and jt.cudnn and jt.compiler.is_cuda:\n",
           "        # jstyle: cuDNN 9 builds have no cudnn_rnn ops (legacy RNN API removed)\n"
           '        if jt.flags.use_cuda and getattr(jt.cudnn, "cudnn_rnn_weight_offset", None) '
           "and jt.compiler.is_cuda:\n",
           "cuDNN 9: legacy RNN API removed"),
    # Every process whose JITTOR_HOME differs from the one in ~/.cache/jittor/config.json rewrites that file in
    # place (truncate, then write), and every kernel compile starts jittor/utils/asm_tuner.py, which reads it: a
    # read between the two saw an empty file and the compile failed (JSONDecodeError; seen with two JITTOR_HOMEs in
    # use, as a cold-cache test or a second clone makes). jstyle always sets JITTOR_HOME, so the file's value is
    # never needed: written whole through a rename, and a broken one read as empty.
    Change("../jittor_utils/__init__.py",
           '        with open(src_path_file,"r") as f:\n'
           "            data = json.load(f)\n",
           "        try:  # jstyle: another process may be writing it\n"
           '            with open(src_path_file,"r") as f:\n'
           "                data = json.load(f)\n"
           "        except ValueError:\n"
           "            data = {}\n",
           "config.json read while another process rewrites it"),
    Change("../jittor_utils/__init__.py",
           '        with open(src_path_file,"w") as f:\n'
           "            data['JITTOR_HOME'] = _home_path\n"
           "            json.dump(data,f)\n",
           "        data['JITTOR_HOME'] = _home_path  # jstyle: whole, through a rename\n"
           '        with open(f"{src_path_file}.{os.getpid()}.tmp","w") as f:\n'
           "            json.dump(data,f)\n"
           '        os.replace(f"{src_path_file}.{os.getpid()}.tmp", src_path_file)\n',
           "config.json written in place while others read it"),
    Change("nn.py",
           "        if jt.flags.use_cuda and jt.cudnn and self.proj_size == 0 and jt.compiler.is_cuda:\n",
           '        if jt.flags.use_cuda and getattr(jt.cudnn, "cudnn_rnn_weight_offset", None) '
           "and self.proj_size == 0 and jt.compiler.is_cuda:  # jstyle: cuDNN 9\n",
           "cuDNN 9: legacy RNN API removed"),
)


def jittor_dir() -> Path:
    """The installed jittor package's folder, found without importing it (no build is triggered)."""
    spec = importlib.util.find_spec("jittor")
    if spec is None or not spec.origin:
        raise SystemExit(f"{__file__}: jittor is not installed in {sys.executable}'s env; "
                         "run bash envs/setup.sh jstyle")
    return Path(spec.origin).parent


def patch(root: Path, check: bool = False) -> list[Change]:
    """Apply the changes still missing under `root`; return them. Exits with one line if a source line is missing."""
    todo: list[Change] = []
    texts: dict[str, str] = {}
    for ch in CHANGES:
        text = texts.setdefault(ch.path, (root / ch.path).read_text())
        if ch.new in text:
            continue
        if text.count(ch.old) != 1:
            raise SystemExit(f"{__file__}: expected source line not found in {root / ch.path} ({ch.why}; "
                             f"found {text.count(ch.old)}x): this patch is for Jittor 1.3.11; pin jittor==1.3.11.0")
        texts[ch.path] = text.replace(ch.old, ch.new)
        todo.append(ch)
    if not check:
        for path in sorted({ch.path for ch in todo}):
            target = root / path
            tmp = target.with_name(target.name + ".jstyle-tmp")
            tmp.write_text(texts[path])
            os.replace(tmp, target)
    return todo


def main(argv: list[str]) -> int:
    """CLI: patch (or with --check, report) the jittor of this interpreter's env."""
    check = "--check" in argv
    root = jittor_dir()
    todo = patch(root, check=check)
    if todo:
        verb = "to apply" if check else "applied"
        files = ", ".join(sorted({ch.path for ch in todo}))
        print(f"[envs] Jittor patch (CUDA 13, cuDNN 9, Blackwell, config.json): {len(todo)} changes {verb} "
              f"({files})",
              file=sys.stderr)
    return 1 if (check and todo) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
