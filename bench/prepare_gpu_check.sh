#!/usr/bin/env bash
# Run on a CPU machine with a package index, before lending a GPU machine bench/gpu_check.sh:
#   bash bench/prepare_gpu_check.sh
# Downloads into .whl/ (ignored by git, carried to the GPU machine) every wheel the offline GPU run needs:
# the jstyle env's pins (envs/jstyle-requirements.txt without ray and its dependencies, without ruff) for
# CPython 3.12 x86-64, the Jittor sdist, setuptools+wheel (to build it offline) and the diffusers wheel
# (the torch side) with what it needs beyond torch/transformers. Writes .whl/requirements.txt (what gpu_check.sh
# installs into the jstyle env) and .whl/ref-requirements.txt, checks that every pin has its file and the size,
# and prints the exact device call to make. Any failed step stops it with an "error:" line and exit status 1.
# JSTYLE_PREPARE_PYTHON: the python whose pip downloads (default python3).
set -euo pipefail
trap 'echo "error: bench/prepare_gpu_check.sh stopped at line $LINENO ($BASH_COMMAND); not ready" >&2' ERR
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
whl="$root/.whl"
py="${JSTYLE_PREPARE_PYTHON:-python3}"
limit_mib=56   # the run's carry holds 64 MiB with the working tree
# Not needed on the GPU machine: ray (run_all.py --backend ray) and its dependencies, ruff (lint only).
skip='^(ray|attrs|certifi|charset-normalizer|click|filelock|idna|jsonschema|jsonschema-specifications|msgpack|protobuf|PyYAML|referencing|requests|rpds-py|urllib3|ruff)=='
# The torch side: diffusers and those of its requirements a bare torch venv may lack, at the checker env's pins
# (gpu_check.sh unpacks those the GPU machine's torch venv does not have next to it: .whl/ref-requirements.txt).
ref_names='^(diffusers|requests|urllib3|certifi|charset-normalizer|idna|importlib_metadata|zipp|filelock)=='
ref_pins=()
while IFS= read -r pin; do ref_pins+=("$pin"); done < <(grep -E "$ref_names" envs/checker-requirements.txt || true)
[ "${#ref_pins[@]}" = 9 ] || { echo "error: expected 9 pins matching $ref_names in envs/checker-requirements.txt" >&2; exit 1; }
build_pins=(setuptools==80.9.0 wheel==0.45.1 pip==25.2)   # pip: for a base python whose venv has no ensurepip

mkdir -p "$whl"
printf '%s\n' "${ref_pins[@]}" > "$whl/ref-requirements.txt"
{ grep -v '^\s*#' envs/jstyle-requirements.txt || true; } | sed 's/\s*#.*//; /^\s*$/d' | { grep -Ev "$skip" || true; } \
  > "$whl/requirements.txt.tmp"
mv "$whl/requirements.txt.tmp" "$whl/requirements.txt"
jittor_pin="$(grep '^jittor==' "$whl/requirements.txt" || true)"
[ -n "$jittor_pin" ] || { echo "error: no jittor== pin in envs/jstyle-requirements.txt" >&2; exit 1; }
pins=()
while IFS= read -r pin; do pins+=("$pin"); done < <(grep -v '^jittor==' "$whl/requirements.txt" || true)

dl() {  # (a pip.conf's find-links folder that is not there: one warning per package, naming its path, dropped)
  local rc=0
  "$py" -m pip download --disable-pip-version-check -q --no-deps -d "$whl" "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; } >&2 || rc=$?
  [ "$rc" = 0 ] || {
    echo "error: pip download failed (see above); run this where a package index is reachable; not ready" >&2
    exit 1
  }
}
dl --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any "${pins[@]}" "${build_pins[@]}" \
  "${ref_pins[@]}"
dl --no-binary=:all: "$jittor_pin"

# Every pin present, once.
missing=0
files="$(find "$whl" -maxdepth 1 -type f -printf "%f\n" | tr 'A-Z.-' 'a-z__')"
while read -r pin; do
  name="${pin%%==*}" ver="${pin#*==}"
  norm="$(printf '%s' "$name" | tr 'A-Z.-' 'a-z__')" ver_norm="$(printf '%s' "$ver" | tr '.' '_')"
  grep -q "^${norm}_${ver_norm}_" <<< "$files" || { echo "error: $pin not in $whl" >&2; missing=1; }
done < <(cat "$whl/requirements.txt"; printf '%s\n' "${build_pins[@]}" "${ref_pins[@]}")
[ "$missing" = 0 ] || { echo "error: pins without a file in .whl/ (above); not ready" >&2; exit 1; }

echo "wheels in .whl/:"
find "$whl" -mindepth 1 -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' \) -printf '%k %f\n' | sort -k2 \
  | awk '{printf "  %8s KiB  %s\n", $1, $2}'
whl_kib="$(du -sk "$whl" | cut -f1)"
tree_kib="$( { git ls-files -z --cached --others --exclude-standard 2>/dev/null || true; } \
  | { du -ck --files0-from=- 2>/dev/null || true; } | tail -n 1 | cut -f1)"   # (a deleted tracked file: du warns)
[ -n "$tree_kib" ] || tree_kib=0
total_mib=$(( (whl_kib + tree_kib + 1023) / 1024 ))
echo "size: .whl ${whl_kib} KiB + working tree ${tree_kib} KiB = ${total_mib} MiB (carry limit 64 MiB, kept under ${limit_mib})"
[ "$total_mib" -le "$limit_mib" ] || { echo "error: ${total_mib} MiB is too much to carry; drop wheels or files" >&2; exit 1; }
cat <<MSG
ready. On a session lent a GPU, make this one call (then give_back):
  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
It writes \$OUT/gpu_check.json and \$OUT/gpu_check.log (every phase: status, seconds, figures).
If the budget ran out before the benchmarks, a second call on the still-warm machine reuses the build
(.gpu-check-home/ stays in its tree) and runs only what is named, e.g.:
  run(command="JSTYLE_GPU_CHECK_PHASES=machine,refsite,build,sd21,bench_unet,bench_txt2img,bench_train,bench_styleid,runner bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
MSG
