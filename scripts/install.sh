#!/usr/bin/env bash
# Create ./.venv (or $PFTRAY_VENV) and install pftray with its dev extras.
# torch is installed FIRST and pinned, so that resolving the other dependencies never pulls a second,
# multi-GB torch build. Override the torch line with PFTRAY_TORCH, e.g. PFTRAY_TORCH="torch==2.13.0"
# (CPU wheel; then LPIPS/FID record themselves as missing because torchvision is absent).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${PFTRAY_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
TORCH_SPEC="${PFTRAY_TORCH:-torch==2.14.1 torchvision==0.29.1}"
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q --disable-pip-version-check $TORCH_SPEC
fi
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__)" > "$VENV/torch-version.txt"
CONSTRAINT="$(mktemp)"
"$VENV/bin/pip" freeze --disable-pip-version-check | grep -iE '^(torch|torchvision)==' > "$CONSTRAINT" || true
"$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINT" -e ".[dev]"
rm -f "$CONSTRAINT"
export VENV
