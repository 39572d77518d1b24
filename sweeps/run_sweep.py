#!/usr/bin/env python
"""Entry script of a pftray sweep on a Ray cluster; same arguments as ``pftray sweep``.

    ray submit cluster.yaml sweeps/run_sweep.py -- ~/pftray/sweeps/privfedtalk.yaml --address auto \
        --out /mnt/shared/pftray-sweeps
    ray job submit --address http://127.0.0.1:8265 -- python sweeps/run_sweep.py sweeps/smoke.yaml
    python sweeps/run_sweep.py sweeps/smoke.yaml --smoke-test          # local Ray instance

Inside ``ray job submit`` the job's RAY_ADDRESS makes the sweep join that cluster. A relative sweep path is
tried against the working directory, then the repository root (so ``ray submit``, which copies only this script
to the head's home directory, can name ``sweeps/<file>.yaml`` relative to ``~/pftray``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _args(argv: list[str]) -> list[str]:
    if argv and not argv[0].startswith("-") and not Path(argv[0]).exists():
        for root in (ROOT, Path.home() / "pftray"):
            if (root / argv[0]).exists():
                return [str(root / argv[0]), *argv[1:]]
    return argv


if __name__ == "__main__":
    try:
        import pftray  # noqa: F401 - installed by scripts/install.sh
    except ImportError:  # a checkout that is not installed: use the package next to this script
        sys.path.insert(0, str(ROOT))
    from pftray.tune import main

    sys.exit(main(_args(sys.argv[1:])))
