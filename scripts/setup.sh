#!/usr/bin/env bash
# Set up the project's virtual environment: CPU-only PyTorch, then esta-export with its dev extras,
# every version pinned by constraints.txt (what CI tested last). Idempotent: a second run with an
# unchanged pyproject.toml/constraints.txt returns at once. Sourced by demo.sh and test.sh.
#
#   ESTA_VENV=DIR      the environment to create or reuse (default .venv)
#   PYTHON=python3.X   the interpreter to build it from (3.10 or newer)
#   TORCH_INDEX_URL    where CPU torch comes from (default: this machine's local wheel when pip can
#                      see one, else PyTorch's CPU index https://download.pytorch.org/whl/cpu)
#   ESTA_EXTRAS=dev    which extras of the project to install (comma list)
#   ESTA_CONSTRAINTS=  install the newest releases instead of the pins (scripts/lock.sh does this)
#   ESTA_NO_SETUP=1    use the environment that is already active, install nothing
set -euo pipefail
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "${ESTA_NO_SETUP:-0}" = 1 ]; then
  return 0 2>/dev/null || exit 0
fi
VENV=${ESTA_VENV:-"$_root/.venv"}
PY=${PYTHON:-python3}
CONSTRAINTS=${ESTA_CONSTRAINTS-"$_root/constraints.txt"}
EXTRAS=${ESTA_EXTRAS:-dev}
TORCH_VERSION=${TORCH_VERSION:-$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' "$_root/constraints.txt" | head -n 1)}
want=$( (cat "$_root/pyproject.toml" ${CONSTRAINTS:+"$CONSTRAINTS"}; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)
stamp="$VENV/.esta-setup"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/esta-export" ]; then
  . "$VENV/bin/activate"
else
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null || {
    echo "setup: esta-export needs Python 3.10 or newer ($PY is $("$PY" --version 2>&1)); set PYTHON=python3.11" >&2
    exit 2; }
  echo "setup: creating $VENV (CPU torch $TORCH_VERSION + esta-export[$EXTRAS]${CONSTRAINTS:+, pinned by $(basename "$CONSTRAINTS")})"
  "$PY" -m venv "$VENV"
  . "$VENV/bin/activate"
  python -m pip install -q --upgrade "pip>=23.1"
  # A plain 'torch' from PyPI is the CUDA build (several GB). Machines like ours carry a local CPU
  # wheel that pip finds through its configured find-links; elsewhere PyTorch's CPU index serves it.
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    python -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple
  elif python -m pip download -q --no-index --no-deps -d "$(mktemp -d)" "torch==$TORCH_VERSION" >/dev/null 2>&1 \
       || [ "$(uname -s)" = Darwin ]; then
    python -m pip install -q "torch==$TORCH_VERSION"
  else
    python -m pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
  fi
  python -m pip install -q ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e "$_root[$EXTRAS]"
  # timm is the tests' reference for ViT anchors (tests/test_stitch.py), installed without its
  # dependencies: its torchvision is a CUDA build that does not load beside CPU torch (tests/timm_shim.py).
  case ",$EXTRAS," in *,dev,*) python -m pip install -q --no-deps ${CONSTRAINTS:+-c "$CONSTRAINTS"} "timm>=1.0" ;; esac
  echo "$want" > "$stamp"
fi
