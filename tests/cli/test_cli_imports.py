"""No import cycles between the layers: evaluation does not import the CLI, analysis does not import the sweep
runner, and pftray.errors imports nothing of pftray (every layer may import it)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("pftray.errors", ["pftray.config", "pftray.cli", "ray", "torch"]),
        ("pftray.analysis", ["pftray.tune", "ray"]),
        ("pftray.evaluation", ["pftray.cli"]),
        ("pftray.config", ["pftray.cli", "pftray.tune"]),
    ],
)
def test_importing_a_module_leaves_the_layers_above_unimported(module, absent):
    code = f"import sys, {module}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", f"{module} imports {res.stdout.strip()}"
