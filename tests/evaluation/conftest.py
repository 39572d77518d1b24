"""Fixtures of the evaluation tests: four tiny 1-round runs (2 seeds x ISFA/FedAvg) and a trained
synthetic identity encoder, each made once per session."""

from __future__ import annotations

import pytest
import torch

from tests.tinycfg import tiny_config

RUN_OVERRIDES = {
    "fed.rounds": 1,
    "data.num_clients": 3,
    "fed.clients_per_round": 2,
    "fed.eval_clients": 2,
    "train.local_steps": 1,
    "data.frames_per_clip": 4,
    "eval.frames": 3,
    "eval.sample_steps": 1,
}


@pytest.fixture(scope="session")
def one_thread():
    # the test machine's 2 cores are shared: one intra-op thread is several times faster than oversubscription
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def compare_runs(tmp_path_factory, one_thread):
    """``{(method, seed): run_dir}`` of four finished tiny runs under one folder."""
    from pftray.runtime.driver import run_federated

    root = tmp_path_factory.mktemp("cmp")
    runs = {}
    for seed in (0, 1):
        for method in ("isfa", "fedavg"):
            cfg = tiny_config(
                **RUN_OVERRIDES,
                **{"experiment.seed": seed, "fed.strategy": method, "experiment.out_dir": str(root)},
            )
            run, summary = run_federated(cfg, out=str(root / f"{method}-s{seed}"), use_ray=False)
            assert summary["status"] == "done"
            runs[(method, seed)] = run.path
    return runs


@pytest.fixture(scope="session")
def id_encoder_file(tmp_path_factory, one_thread):
    """(path, report) of a SynthIdentityEncoder trained briefly on the tiny config's public identities."""
    from pftray.evaluation.id_encoder import train_public_id_encoder

    enc, report = train_public_id_encoder(tiny_config(**{"data.frames_per_clip": 4}), steps=20)
    path = tmp_path_factory.mktemp("enc") / "id-encoder-synth.pt"
    enc.save(path)
    return path, report
