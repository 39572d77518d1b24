"""Input paths of a config resolve against the config file's folder, then the repository root; a missing one is an
input error (exit 2, one line naming the key and the path) raised when the config loads, before any run starts."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pftray.config import ConfigError, load_config
from tests.tinycfg import TINY

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, **sections) -> Path:
    data = copy.deepcopy(TINY)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_quickstart_from_another_cwd_resolves_the_backbone_to_the_repository_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    assert cfg.model.backbone == str((REPO / "checkpoints" / "backbone-warp64.pt").resolve())
    assert Path(cfg.model.backbone).is_file()
    assert cfg.data.source == "synthetic"  # not a path


def test_the_config_folder_comes_before_the_repository_root(tmp_path, monkeypatch):
    # a file of the same relative name exists in the repository (checkpoints/backbone-tiny64.pt): the one next
    # to the config wins
    mine = tmp_path / "exp" / "checkpoints" / "backbone-tiny64.pt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"")
    cfg_path = _write(tmp_path / "exp" / "c.yaml", model={"backbone": "checkpoints/backbone-tiny64.pt"})
    monkeypatch.chdir(REPO)
    assert load_config(cfg_path).model.backbone == str(mine.resolve())
    mine.unlink()  # gone next to the config: the repository's file
    assert load_config(cfg_path).model.backbone == str((REPO / "checkpoints" / "backbone-tiny64.pt").resolve())


def test_a_set_path_is_looked_for_in_the_working_directory_first(tmp_path, monkeypatch):
    (tmp_path / "here.pt").write_bytes(b"")
    cfg_path = _write(tmp_path / "exp" / "c.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_path, ["model.backbone=here.pt"])
    assert cfg.model.backbone == str((tmp_path / "here.pt").resolve())


def test_missing_input_paths_name_the_key_and_the_path(tmp_path):
    cfg_path = _write(tmp_path / "c.yaml", model={"backbone": "checkpoints/typo.pt"})
    with pytest.raises(ConfigError) as err:
        load_config(cfg_path)
    msg = str(err.value)
    assert msg.startswith(f"{cfg_path}: model.backbone: 'checkpoints/typo.pt': no such file (looked for ")
    assert str(tmp_path / "checkpoints" / "typo.pt") in msg and str(REPO / "checkpoints" / "typo.pt") in msg
    cfg_path = _write(tmp_path / "d.yaml", data={"source": "prepared/none"})
    with pytest.raises(ConfigError, match=r"data\.source: 'prepared/none': no such folder"):
        load_config(cfg_path)
    # an output-to-be (pftray pretrain writes model.backbone) loads with check_paths=False, in the config folder
    cfg = load_config(_write(tmp_path / "e.yaml", model={"backbone": "new.pt"}), check_paths=False)
    assert cfg.model.backbone == str((tmp_path / "new.pt").resolve())


def test_run_with_a_missing_backbone_exits_2_before_ray_or_a_run_directory(tmp_path, monkeypatch, capsys):
    import pftray.runtime.driver as driver
    from pftray.cli import main

    out_dir = tmp_path / "runs"
    cfg_path = _write(tmp_path / "c.yaml", model={"backbone": "checkpoints/typo.pt"},
                      experiment={"out_dir": str(out_dir)})
    started = []
    monkeypatch.setattr(driver, "init_ray", lambda cfg: started.append("ray"))
    monkeypatch.setattr(driver, "prepare_run", lambda cfg, run: started.append("run dir"))
    code = main(["run", str(cfg_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "model.backbone: 'checkpoints/typo.pt': no such file" in err, err
    assert started == []
    assert not out_dir.exists()


def test_run_with_a_missing_backbone_in_a_subprocess_creates_nothing(tmp_path):
    out_dir = tmp_path / "runs"
    ray_tmp = tmp_path / "ray"
    cfg_path = _write(tmp_path / "c.yaml", model={"backbone": "typo.pt"}, experiment={"out_dir": str(out_dir)})
    res = subprocess.run([sys.executable, "-m", "pftray", "run", str(cfg_path)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env={**__import__("os").environ, "RAY_TMPDIR": str(ray_tmp)})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"pftray: error: {cfg_path}: model.backbone: 'typo.pt': no such file "
        f"(looked for {tmp_path / 'typo.pt'}, {REPO / 'typo.pt'})"
    ]
    assert not out_dir.exists() and not ray_tmp.exists()
