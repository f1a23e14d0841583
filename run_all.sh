#!/usr/bin/env bash
# The whole job:  bash run_all.sh --demo   |   bash run_all.sh --model SD_DIR --data DATA --out OUT
# Creates/updates the jstyle env (once per machine), then runs run_all.py in it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
t0="${EPOCHREALTIME/,/.}"  # as envs/env.sh jstyle_now (sourced below)
envs=jstyle
demo= check=1 auto= prev=
for arg in "$@"; do
  case "$arg" in --demo) demo=1;; --no-check) check=;; --method=auto) auto=1;; esac
  [ "$prev $arg" = "--method auto" ] && auto=1
  prev="$arg"
done
# the demo also scores with the checker (unless told not to); --method auto scores with it while it runs
{ [ -n "$demo" ] && [ -n "$check" ]; } || [ -n "$auto" ] && envs=all
bash "$root/envs/setup.sh" "$envs"
export JSTYLE_CUDA_NOTE=1  # set-up said it once (a CUDA toolkit without a driver, ...): not again below
# shellcheck source=envs/env.sh
source "$root/envs/env.sh"
rc=0
"$JSTYLE_PYTHON" "$root/run_all.py" "$@" || rc=$?
# the whole command, set-up included (set-up and the run print their own phases above)
for arg in "$@"; do case "$arg" in -h|--help) exit "$rc";; esac; done
[ "$rc" != 0 ] || echo "run_all.sh done in $(jstyle_since "$t0") s"
exit "$rc"
