#!/usr/bin/env bash
# Install pftray into ./.venv (created if missing) and run the linters and the test suite.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
export RAY_AUTH_MODE=disabled
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
