#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv on first use (and whenever pyproject.toml or the
# constraints change), installs opmeter with its dev extras, then runs the requested job.
#   ./dev.sh report [opmeter report options]   the main job: report on the embedded DeepSeek-OCR default
#   ./dev.sh test [pytest options]              the whole test suite
#   ./dev.sh test-compat [pytest options]       the suite again on the users' stack (torch 2.6 + transformers 4.46),
#                                               in a venv cached under ~/.cache/opmeter-ci (about 3 GB, built once)
#   ./dev.sh opmeter ...                        any opmeter subcommand
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv/.opmeter-installed
want=$(cat pyproject.toml constraints-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[dev.sh] setting up .venv (first run or dependencies changed)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints-dev.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi
compat_env() {
  # A cached venv with the compat pins; opmeter itself is (re)installed from this checkout on every run.
  local venv=${OPMETER_COMPAT_VENV:-$HOME/.cache/opmeter-ci/compat-venv}
  local want_c
  want_c=$(cat pyproject.toml constraints-compat.txt | sha256sum | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.opmeter-deps" 2>/dev/null)" != "$want_c" ]; then
    echo "[dev.sh] setting up $venv (torch 2.6 + transformers 4.46; first run or pins changed)" >&2
    mkdir -p "$(dirname "$venv")"
    [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -c constraints-compat.txt -e '.[dev]'
    echo "$want_c" > "$venv/.opmeter-deps"
  fi
  "$venv/bin/python" -m pip install -q --no-deps -e . >/dev/null
  COMPAT_PY="$venv/bin/python"
}
job=${1:-}
[ $# -gt 0 ] && shift
case "$job" in
  report) exec .venv/bin/opmeter report "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  test-compat) compat_env; exec "$COMPAT_PY" -m pytest "$@" ;;
  opmeter) exec .venv/bin/opmeter "$@" ;;
  lint) .venv/bin/ruff check src tests manual tracers && exec .venv/bin/mypy ;;
  *) echo "usage: ./dev.sh report|test|test-compat|opmeter|lint [args...]" >&2; exit 2 ;;
esac
