"""Shared fixtures: a tiny config that trains in seconds on CPU, and one Ray instance per test session."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from tests.tinycfg import TINY, tiny_config  # noqa: E402,F401


@pytest.fixture
def tiny_cfg(tmp_path):
    return tiny_config(**{"experiment.out_dir": str(tmp_path)})


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session: 2 CPUs and 2 logical GPUs (no real GPU needed)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="pftray-ray-")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()
