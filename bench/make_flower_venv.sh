#!/usr/bin/env bash
# Build the separate virtualenv that runs Flower's side of the benchmarks (Flower 1.42 pins its own Ray, which
# must not replace the Ray of pftray's environment). Idempotent: does nothing when the venv already imports flwr.
#   bash bench/make_flower_venv.sh [VENV_DIR]      (default .flwr-venv in the repository, git-ignored)
set -euo pipefail
VENV="${1:-${FLWR_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.flwr-venv}}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import flwr, ray, torch" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
# torch first: the CPU wheel lies on local disk; installed afterwards, flwr would pull a CUDA build instead
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q "flwr[simulation]==1.42.*" numpy
"$VENV/bin/python" -c "import flwr, ray; print('flwr', flwr.__version__, 'ray', ray.__version__)"
