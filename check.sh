#!/usr/bin/env bash
# Run the jstyle checker (pure PyTorch, never Jittor) in the checker environment:
#   ./check.sh --submission DIR --data DIR --out result.json [--weights DIR] [...]
# Python: $JSTYLE_CHECKER_PYTHON if set, else the one envs/env.sh names, else python3 (warned).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${JSTYLE_CHECKER_PYTHON:-}"
if [ -z "$PY" ] && [ -f "$ROOT/envs/env.sh" ]; then
  # shellcheck disable=SC1091
  source "$ROOT/envs/env.sh"
  PY="${JSTYLE_CHECKER_PYTHON:-}"
fi
if [ -z "$PY" ] || ! command -v "$PY" >/dev/null 2>&1; then
  echo "check.sh: warning: checker env python '${PY:-unset}' not found; falling back to python3 (run envs/setup.sh)" >&2
  PY=python3
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m checker "$@"
