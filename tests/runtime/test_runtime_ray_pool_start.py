"""Checks at pool start. Dynamic dispatch needs every worker of a tier to see the driver's run directory: checked
with a marker file (local Ray: one node, passes) and refused with a one-line message when a worker cannot read
it. A tier asking fp16 with DP-SGD is refused before any worker starts."""

from __future__ import annotations

import pytest

from pftray.errors import ConfigError, RuntimeFailure
from pftray.runtime.ray_pool import MARKER_PREFIX, RayPool, SharedRunDirError, check_marker_replies
from tests.tinycfg import tiny_config


def test_marker_replies_pass_only_when_every_worker_read_the_token():
    check_marker_replies("abc", {"cpu-0": "abc", "cpu-1": "abc"}, "runs/x")
    check_marker_replies("abc", {}, "runs/x")
    with pytest.raises(SharedRunDirError) as err:
        check_marker_replies("abc", {"cpu-0": "abc", "cpu-1": None, "gpu-0": "other"}, "runs/x")
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, RuntimeError) and isinstance(err.value, RuntimeFailure)
    assert msg.startswith("runtime.dispatch: dynamic needs the run directory runs/x on storage every worker sees")
    assert "cpu-1, gpu-0 could not read" in msg and "cpu-0," not in msg  # the missing file and the other one
    assert "runtime.dispatch: static" in msg and "shared storage" in msg


@pytest.mark.ray
def test_pool_start_checks_the_run_directory_with_local_ray(ray_session, tmp_path, monkeypatch):
    cfg = tiny_config(**{"runtime.tiers": [{"name": "cpu", "num_workers": 2, "num_cpus": 0.5}]})
    pool = RayPool(cfg, str(tmp_path))  # one node: both workers read the marker
    try:
        assert not list(tmp_path.glob(f"{MARKER_PREFIX}*"))  # the marker is removed once read
        # a worker that cannot see the driver's file (another node without shared storage): here the driver
        # writes its marker where it says, the workers are asked about a path that does not exist for them
        import pftray.runtime.ray_pool as pool_mod

        real = pool_mod.Path

        class Elsewhere(type(real())):
            def write_text(self, text, *a, **k):
                return real(str(self).replace(str(tmp_path), str(tmp_path / "driver-only"))).write_text(text)

        (tmp_path / "driver-only").mkdir()
        monkeypatch.setattr(pool_mod, "Path", Elsewhere)
        with pytest.raises(SharedRunDirError, match=r"worker\(s\) cpu-0, cpu-1 could not read"):
            pool.check_shared_run_dir()
    finally:
        pool.shutdown()


def test_a_tier_asking_fp16_with_dp_sgd_is_refused_before_any_worker_starts():
    cfg = tiny_config(**{"privacy.dp_sgd": True, "runtime.tiers": [{"name": "gpu", "precision": "fp16"}]})
    with pytest.raises(ConfigError, match=r"runtime.tiers\[gpu\].precision: 'fp16'"):
        RayPool(cfg, "unused", timeout_s=1.0)  # refused by the check, so Ray is never asked for workers
