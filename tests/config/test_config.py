import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pftray.config import Config, ConfigError, apply_overrides, config_from_dict, explain, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_frozen():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.fed.rounds = 3  # type: ignore[misc]
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(preset):
    """Every preset validates; its input paths exist, except the data folders a real-faces preset is about to
    have prepared (`pftray data prepare`) and the backbone it is about to pre-train, which are refused with one
    line naming the file and the key."""
    try:
        cfg = load_config(preset)
    except ConfigError as err:
        assert preset.name.startswith("real_faces") and re.search(r"yaml: (data\.(public_)?source|model\.backbone): ", str(err)), err
        cfg = load_config(preset, check_paths=False)
    assert isinstance(cfg, Config)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"fed": {"roundz": 3}}, "fed.roundz: unknown key"),
        ({"feed": {}}, "feed: unknown key"),
        ({"fed": {"rounds": "ten"}}, "fed.rounds: expected an integer, got 'ten'"),
        ({"fed": {"rounds": 2.5}}, "fed.rounds: expected an integer, got 2.5"),
        ({"privacy": {"dp_sgd": "yes"}}, "privacy.dp_sgd: expected true/false"),
        ({"fed": {"rounds": 0}}, "fed.rounds: 0 is out of range; allowed [1, 1000000]"),
        ({"privacy": {"target_delta": 2.0}}, "privacy.target_delta: 2.0 is out of range"),
        ({"fed": {"strategy": "fedsgd"}}, "fed.strategy: 'fedsgd' is not allowed; choose one of"),
        ({"fed": {"strategy": "fedprox", "mu": 0.0}}, "fed.mu: 0.0 with strategy 'fedprox'"),
        ({"privacy": {"noise_multiplier": 1.0}}, "privacy.clipping_norm: 0 with noise_multiplier > 0"),
        ({"runtime": {"tiers": [{"name": "a", "num_gpus": -1}]}}, "runtime.tiers[0].num_gpus: -1.0 is out of range"),
        ({"runtime": {"tiers": [{"name": "a", "gpus": 1}]}}, "runtime.tiers[0].gpus: unknown key"),
        ({"data": {"unreliable_kinds": ["offset", "smudge"]}}, "data.unreliable_kinds: 'smudge' is not allowed"),
        ({"data": {"num_clients": 2}, "fed": {"clients_per_round": 3}}, "fed.clients_per_round: 3 exceeds"),
    ],
)
def test_each_kind_of_error_names_key_value_and_allowed(data, fragment):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    assert fragment in str(exc.value)


def test_set_overrides_parse_yaml_values_and_revalidate():
    cfg = apply_overrides(Config(), ["fed.rounds=7", "privacy.secagg=true", "lora.target_modules=[to_q, to_v]",
                                     "fed.strategy=fedavg"])
    assert cfg.fed.rounds == 7 and cfg.privacy.secagg is True and cfg.lora.target_modules == ("to_q", "to_v")
    with pytest.raises(ConfigError, match="fed.nope: unknown key"):
        apply_overrides(Config(), ["fed.nope=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides(Config(), ["fed.rounds"])
    with pytest.raises(ConfigError, match="fed.rounds: expected an integer"):
        apply_overrides(Config(), ["fed.rounds=abc"])
    # PyYAML reads 3e-4 as a string (YAML 1.1); a float key takes it as the number it is, an int key does not
    cfg = apply_overrides(Config(), ["pretrain.lr_vae=3e-4", "fed.mu=1E2"])
    assert cfg.pretrain.lr_vae == 3e-4 and cfg.fed.mu == 100.0
    with pytest.raises(ConfigError, match="fed.rounds: expected an integer, got '1e2'"):
        apply_overrides(Config(), ["fed.rounds=1e2"])
    with pytest.raises(ConfigError, match="fed.mu: expected a number, got '3e'"):
        apply_overrides(Config(), ["fed.mu=3e"])


def test_load_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fed:\n  rounds: [1, 2\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_explain_lists_every_leaf_with_a_reason():
    lines = explain()
    assert any(line.startswith("fed.isfa_alpha = 0.65  # ISFA") for line in lines)
    assert all("#" in line for line in lines)


def test_cli_bad_config_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"fed": {"rounds": -1}}))
    res = subprocess.run([sys.executable, "-m", "pftray.cli", "run", str(bad), "--local"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert "fed.rounds: -1 is out of range" in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "pftray.cli", "run", str(bad), "--set", "fed.rounds=2",
                          "--set", "fed.mu=x", "--local"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "fed.mu: expected a number, got 'x'" in res.stderr


def test_removed_keys_are_gone_but_old_run_configs_still_load():
    from pftray.config import REMOVED_KEYS, config_from_dict

    cfg = config_from_dict({"model": {"sample_steps": 7}, "eval": {"save_videos": False, "sample_steps": 3},
                            "data": {"cache_dir": "x"}})
    assert cfg.eval.sample_steps == 3
    for sec, keys in REMOVED_KEYS.items():
        for k in keys:
            assert not hasattr(getattr(cfg, sec), k)


def test_renamed_key_server_eps_reads_as_server_tau():
    from pftray.config import config_from_dict

    assert config_from_dict({"fed": {"server_eps": 0.01}}).fed.server_tau == 0.01
    with pytest.raises(ConfigError, match="server_tau"):
        config_from_dict({"fed": {"server_eps": 0.01, "server_tau": 0.02}})


def test_dp_sgd_keys_moved_to_privacy_and_old_names_still_read():
    from pftray.config import apply_overrides, config_from_dict

    old = config_from_dict({"train": {"dp_sgd": True, "dp_sgd_noise_multiplier": 1.7, "dp_sgd_max_grad_norm": 0.3}})
    assert (old.privacy.dp_sgd, old.privacy.dp_sgd_noise_multiplier, old.privacy.dp_sgd_max_grad_norm) == (
        True, 1.7, 0.3)
    assert not hasattr(old.train, "dp_sgd")
    assert "dp_sgd" not in old.to_dict()["train"] and old.to_dict()["privacy"]["dp_sgd"] is True
    # an old --set name lands on the new key (also on top of a config that already has the new key)
    assert apply_overrides(old, ["train.dp_sgd_noise_multiplier=2.5"]).privacy.dp_sgd_noise_multiplier == 2.5
    assert config_from_dict(old.to_dict()) == old
    with pytest.raises(ConfigError, match=r"^train.dp_sgd: renamed to privacy.dp_sgd; give only privacy.dp_sgd"):
        config_from_dict({"train": {"dp_sgd": True}, "privacy": {"dp_sgd": False}})
