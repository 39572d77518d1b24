"""The two baselines beside the federated methods, in the same run-directory format:

* ``fed.strategy: local`` (local only): each sampled client trains both adapters on its own clips and keeps
  them; nothing reaches the server, whose global shared adapter stays at its initialisation;
* ``fed.strategy: pooled``: the same adapters trained centrally on all clients' clips (non-private upper bound).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pftray.errors import ConfigError
from pftray.fed.client import ClientTrainer
from pftray.fed.heldout import sample_heldout
from pftray.fed.host import ClientHost, ClientStateStore
from pftray.fed.pool import LocalPool
from pftray.fed.server import FederatedServer, RunError
from pftray.results import RunDir
from pftray.runtime.driver import initial_shared, make_pool, prepare_run
from tests.tinycfg import tiny_config


def _run(cfg, path, pool=None):
    run = RunDir(path)
    prepare_run(cfg, run)
    pool = pool if pool is not None else make_pool(cfg, run.path, kind="local")
    server = FederatedServer(cfg, run, pool, initial_shared(cfg), num_registered=cfg.data.num_clients)
    summary = server.run_rounds()
    return run, server, pool, summary


def test_local_only_sends_nothing_and_each_client_keeps_its_own_shared_adapter(tmp_path):
    cfg = tiny_config(**{"fed.strategy": "local", "fed.rounds": 2, "fed.clients_per_round": 2})
    run = RunDir(tmp_path / "run")
    prepare_run(cfg, run)
    pool = make_pool(cfg, run.path, kind="local")
    sent = []
    for name in ("contribute", "secagg_stage"):  # the only ways an update can reach the server
        orig = getattr(pool, name)
        setattr(pool, name, lambda *a, _o=orig, _n=name, **k: sent.append(_n) or _o(*a, **k))
    server = FederatedServer(cfg, run, pool, initial_shared(cfg), num_registered=cfg.data.num_clients)
    assert server.run_rounds()["status"] == "done"
    assert sent == []
    assert all(not h.pending for h in pool.hosts)  # no update waits on a host for a sum either
    rounds = run.table("rounds")
    assert (rounds["status"] == "ok").all() and (rounds["bytes_up"] == 0).all() and (rounds["bytes_down"] == 0).all()
    init = initial_shared(cfg)
    np.testing.assert_array_equal(server.state.global_shared, init)

    store = ClientStateStore(run.clients, resident=0)
    trained = sorted(set(run.table("clients").query("status == 'ok'")["client_id"]))
    assert len(trained) >= 2
    own = {cid: store.load(cid, before_round=99).shared for cid in trained}
    for cid, vec in own.items():
        assert vec is not None and vec.shape == init.shape and np.linalg.norm(vec - init) > 0, cid
    a, b = trained[:2]
    assert np.linalg.norm(own[a] - own[b]) > 0  # each its own, not a shared average

    # a client trained twice continued from its own copy: its rounds_trained counts both rounds
    twice = [c for c in trained if (run.table("clients").query("status == 'ok'")["client_id"] == c).sum() == 2]
    for cid in twice:
        assert store.load(cid, before_round=99).rounds_trained == 2

    # the personalised evaluation uses the client's own shared adapter, not the (untouched) global one
    cid = trained[0]
    trainer = ClientTrainer(cfg)
    client = pool.hosts[0].data.get(cid)
    state = store.load(cid, before_round=99)
    eval_cfg = cfg.replace(**{"eval.frames": 2, "eval.sample_steps": 2})
    with_own = sample_heldout(trainer, client, state, init, cfg=eval_cfg, baseline=False)[0].outputs["personalised"]
    state.shared = None
    with_global = sample_heldout(trainer, client, state, init, cfg=eval_cfg, baseline=False)[0].outputs["personalised"]
    assert float((with_own - with_global).abs().max()) > 1e-4


def test_pooled_trains_one_shared_adapter_on_every_clients_clips(tmp_path, monkeypatch):
    drawn: list[int] = []
    batch = ClientTrainer._batch

    def spy(self, client, rng, clips=None):
        if self.model.training:  # a training step (reliability and validation batches run in eval mode)
            drawn.append(client.client_id)
        return batch(self, client, rng, clips)

    monkeypatch.setattr(ClientTrainer, "_batch", spy)
    cfg = tiny_config(**{"fed.strategy": "pooled", "fed.rounds": 1, "fed.clients_per_round": 2,
                         "train.local_steps": 12})
    run, server, pool, summary = _run(cfg, tmp_path / "run")
    assert summary["status"] == "done"
    # the federated methods' compute: clients_per_round x local_steps steps, drawn over ALL registered clients
    assert len(drawn) == 2 * 12
    assert set(drawn) == set(range(cfg.data.num_clients))
    clients = run.table("clients")
    assert sorted(clients["client_id"]) == list(range(cfg.data.num_clients)) and set(clients["status"]) == {"ok"}
    # every client reports the same pooled delta, so the weighted average of the round is that delta
    assert clients["update_norm"].nunique() == 1
    init = initial_shared(cfg)
    moved = float(np.linalg.norm(server.state.global_shared - init))
    assert moved == pytest.approx(float(clients["update_norm"].iloc[0]), rel=1e-5)
    rounds = run.table("rounds")
    assert (rounds["bytes_up"] == 0).all() and (rounds["bytes_down"] == 0).all()
    # each drawn client's identity adapter was trained (it differs from its fresh initialisation)
    from pftray.model.factory import initial_identity_state

    store = ClientStateStore(run.clients, resident=0)
    model = pool.hosts[0].trainer.model
    for cid in set(drawn):
        fresh = initial_identity_state(model, cid, cfg.experiment.seed)
        got = store.load(cid, before_round=2).identity
        assert any(not torch.equal(got[k], fresh[k]) for k in fresh), cid


def test_pooled_needs_one_host_and_baselines_refuse_privacy(tmp_path):
    cfg = tiny_config(**{"fed.strategy": "pooled"})
    run = RunDir(tmp_path / "run")
    prepare_run(cfg, run)
    pool = LocalPool([ClientHost(cfg, str(run.path), worker=f"h{i}") for i in range(2)])
    with pytest.raises(RunError, match="pooled.*one host"):
        FederatedServer(cfg, run, pool, initial_shared(cfg), num_registered=cfg.data.num_clients)
    for strategy in ("local", "pooled"):
        with pytest.raises(ConfigError, match=rf"^fed.strategy: '{strategy}' is a baseline.*privacy.noise_multiplier"):
            tiny_config(**{"fed.strategy": strategy, "privacy.noise_multiplier": 1.0, "privacy.clipping_norm": 1.0,
                           "fed.sample_rate": 0.5})
        with pytest.raises(ConfigError, match="privacy.secagg"):
            tiny_config(**{"fed.strategy": strategy, "privacy.secagg": True})


def test_local_baseline_shadow_equals_a_local_only_run_of_the_same_client(tmp_path):
    """``eval.local_baseline``: each evaluated client's local-only shadow, trained beside a federated run, is the
    very model a ``fed.strategy: local`` run trains for that client (same batches, same start), and its
    evaluation is that run's personalised evaluation."""
    over = {"fed.rounds": 2, "fed.clients_per_round": 4, "fed.eval_clients": 1, "eval.frames": 2,
            "eval.sample_steps": 2}
    fed_run, fed_server, fed_pool, _ = _run(tiny_config(**over, **{"fed.strategy": "fedavg",
                                                                   "eval.local_baseline": True}), tmp_path / "fed")
    loc_run, _, _, _ = _run(tiny_config(**over, **{"fed.strategy": "local"}), tmp_path / "loc")
    shadow = ClientStateStore(fed_run.path / "clients-local", resident=0).load(0, before_round=99)
    local = ClientStateStore(loc_run.clients, resident=0).load(0, before_round=99)
    assert shadow.rounds_trained == local.rounds_trained == 2
    np.testing.assert_allclose(shadow.shared, local.shared, rtol=1e-5, atol=1e-7)
    for k in local.identity:
        torch.testing.assert_close(shadow.identity[k], local.identity[k], rtol=1e-5, atol=1e-7)
    # the federated model really is another model
    assert np.linalg.norm(fed_server.state.global_shared - shadow.shared) > 0
    ev_fed, ev_loc = fed_run.table("eval"), loc_run.table("eval")
    assert set(ev_fed["model"]) == {"personalised", "local", "backbone", "copy"}
    a = ev_fed[(ev_fed["model"] == "local") & (ev_fed["server_round"] == 2)]["psnr"].to_numpy()
    b = ev_loc[(ev_loc["model"] == "personalised") & (ev_loc["server_round"] == 2)]["psnr"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4)
    # a client never sampled still has a 'local' row: its untrained start, as a local-only run evaluates it
    host = fed_pool.hosts[0]
    never = host._shadow_for_eval(3, server_round=0)
    assert never.rounds_trained == 0 and np.array_equal(never.shared, initial_shared(fed_run_cfg := host.cfg))
    assert fed_run_cfg.eval.local_baseline
    # nothing of the shadow reached the server: the federated sum is over the 4 federated updates only
    assert (fed_run.table("clients").groupby("server_round").size() == 4).all()


def test_global_model_is_the_shared_adapter_with_a_fresh_identity_adapter(tmp_path):
    """``eval.global_model``: model 'global' = the global shared adapter with the client's data-independent identity
    adapter, whatever that client trained: what a client gets from the federation alone."""
    cfg = tiny_config(**{"fed.strategy": "fedavg", "fed.rounds": 2, "fed.clients_per_round": 2,
                         "eval.global_model": True, "fed.eval_every": 2})
    run, server, pool, summary = _run(cfg, tmp_path / "run")
    assert summary["status"] == "done"
    ev = run.table("eval")
    last = ev[ev["server_round"] == 2]
    assert set(last["model"]) >= {"personalised", "global", "backbone"}
    assert sorted(last[last["model"] == "global"]["client_id"]) == sorted(last[last["model"] == "personalised"]
                                                                          ["client_id"])
    store = ClientStateStore(run.clients, resident=0)
    trained = sorted(set(run.table("clients").query("status == 'ok'")["client_id"]))
    cid = trained[0]
    trainer = ClientTrainer(cfg)
    client = pool.hosts[0].data.get(cid)
    state = store.load(cid, before_round=99)
    g = server.state.global_shared
    ecfg = cfg.replace(**{"eval.frames": 2, "eval.sample_steps": 2})
    out = sample_heldout(trainer, client, state, g, cfg=ecfg)[0].outputs
    fresh = sample_heldout(trainer, client, None, g, cfg=ecfg.replace(**{"eval.global_model": False}),
                           baseline=False)[0].outputs
    assert set(fresh) == {"personalised"}
    torch.testing.assert_close(out["global"], fresh["personalised"], rtol=0, atol=0)  # fresh identity adapter
    assert float((out["global"] - out["personalised"]).abs().max()) > 1e-4  # the trained one differs
    assert float((out["global"] - out["backbone"]).abs().max()) > 1e-4  # the trained shared adapter acts
    # the evaluation restores the client's own adapters afterwards: personalised is unchanged by global_model
    alone = sample_heldout(trainer, client, state, g, cfg=ecfg.replace(**{"eval.global_model": False}))[0].outputs
    torch.testing.assert_close(alone["personalised"], out["personalised"], rtol=0, atol=0)
    # at the shared adapter's initialisation (B = 0) the global model is the backbone
    init = sample_heldout(trainer, client, state, initial_shared(cfg), cfg=ecfg)[0].outputs
    torch.testing.assert_close(init["global"], init["backbone"], rtol=0, atol=1e-5)
