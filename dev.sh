#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv on first use (and whenever pyproject.toml or the
# constraints change), installs opmeter with its dev extras, then runs the requested job.
#   ./dev.sh report [opmeter report options]   the main job: report on the embedded DeepSeek-OCR default
#   ./dev.sh test [pytest options]              the whole test suite
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
job=${1:-}
[ $# -gt 0 ] && shift
case "$job" in
  report) exec .venv/bin/opmeter report "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  opmeter) exec .venv/bin/opmeter "$@" ;;
  lint) .venv/bin/ruff check src tests manual tracers && exec .venv/bin/mypy ;;
  *) echo "usage: ./dev.sh report|test|opmeter|lint [args...]" >&2; exit 2 ;;
esac
