"""The report of a tiny run: titles that fit, ground-truth unreliable clients, labelled sample grids; the sweep
report's notes on noise and on an untrained backbone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pftray.evaluation import report as R
from pftray.evaluation.ground_truth import UNRELIABLE_COL, unreliable_clients
from tests.tinycfg import tiny_config

OVERRIDES = {"fed.rounds": 2, "fed.eval_every": 1, "data.num_clients": 4, "fed.clients_per_round": 4,
             "fed.eval_clients": 4, "train.local_steps": 1, "data.frames_per_clip": 4, "eval.frames": 3,
             "eval.sample_steps": 1, "data.unreliable_fraction": 0.5}


# ------------------------------------------------------------------------------------------ ground truth
def _generator_labels(cfg) -> dict[int, str]:
    from pftray.data import make_client
    from pftray.fed.host import ClientProvider

    kw = ClientProvider(cfg).synthetic_kwargs()
    clients = [make_client(k, **kw) for k in range(cfg.data.num_clients)]
    return {c.client_id: c.unreliable for c in clients if c.unreliable is not None}


@pytest.mark.parametrize("seed", [0, 3])
def test_unreliable_clients_match_the_data_generator(seed):
    cfg = tiny_config(**{"data.num_clients": 6, "data.unreliable_fraction": 0.5, "data.frames_per_clip": 2,
                         "data.clips_per_client": 1, "experiment.seed": seed})
    labels = unreliable_clients(cfg)
    assert labels == _generator_labels(cfg)
    assert len(labels) == 3 and set(labels.values()) == {"offset", "noise", "frozen"}
    assert unreliable_clients(cfg.to_dict()) == labels  # the run directory's config.yaml, as a dict
    assert unreliable_clients(cfg.replace(**{"data.unreliable_fraction": 0.0})) == {}


def test_unreliable_clients_of_prepared_shards_come_from_their_metadata(tmp_path):
    from pftray.data import make_client
    from pftray.data.dataset import save_client_shard
    from pftray.fed.host import ClientProvider

    cfg = tiny_config(**{"data.num_clients": 4, "data.unreliable_fraction": 0.5, "data.frames_per_clip": 2,
                         "data.clips_per_client": 1})
    kw = ClientProvider(cfg).synthetic_kwargs()
    for k in range(4):
        save_client_shard(make_client(k, **kw), tmp_path / f"client-{k}.parquet")
    shard_cfg = cfg.to_dict()
    shard_cfg["data"]["source"] = str(tmp_path)
    assert unreliable_clients(shard_cfg) == _generator_labels(cfg)


# ------------------------------------------------------------------------------------------- run report
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import torch

    from pftray.runtime.driver import run_federated

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    try:
        run, summary = run_federated(tiny_config(**OVERRIDES, **{"experiment.out_dir": str(root)}),
                                     out=str(root / "run"), use_ray=False)
    finally:
        torch.set_num_threads(before)
    assert summary["status"] == "done"
    return run.path


@pytest.fixture(scope="module")
def rendered(tiny_run):
    """``(figures, index)``: every matplotlib figure the run report drew (left open) and the page."""
    figures = []
    plt = R._plt()

    class KeepOpen:
        def __getattr__(self, name):
            return getattr(plt, name)

        def close(self, fig):
            figures.append(fig)

    mp = pytest.MonkeyPatch()
    mp.setattr(R, "_plt", lambda: KeepOpen())
    try:
        index = R.make_report(tiny_run)
    finally:
        mp.undo()
    yield figures, index
    for f in figures:
        plt.close(f)


def _titles(fig) -> list[str]:
    out = [ax.get_title() for ax in fig.axes]
    return out + ([fig._suptitle.get_text()] if fig._suptitle is not None else [])


def test_every_text_of_every_run_plot_lies_inside_its_figure(rendered):
    figures, _ = rendered
    assert len(figures) >= 4
    for fig in figures:
        assert R.text_outside(fig) == [], _titles(fig)


def test_plot_titles(rendered):
    figures, _ = rendered
    titles = [t for fig in figures for t in _titles(fig)]
    assert "training and validation loss" in titles
    assert "training loss" not in titles
    isfa = next(t for t in titles if t.startswith("aggregation weight per client"))
    assert "normalised" in isfa and "unreliable" in isfa


def test_text_outside_catches_a_title_that_does_not_fit():
    plt = R._plt()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_title("a title far too long for a figure only three inches wide, so it runs off both edges")
    assert R.text_outside(fig)
    R._fit_titles(fig)
    fig.tight_layout()
    assert R.text_outside(fig) == []
    plt.close(fig)


def test_unreliable_clients_are_marked_in_plots_and_tables(tiny_run, rendered):
    figures, index = rendered
    truth = unreliable_clients(yaml.safe_load((tiny_run / "config.yaml").read_text()))
    assert len(truth) == 2
    spread = next(f for f in figures if any(t in ("psnr", "ssim") for t in _titles(f)) and len(f.axes) >= 3
                  and "server round" not in f.axes[0].get_xlabel())
    labels = [lab for ax in spread.axes for lab in ax.get_legend_handles_labels()[1]]
    assert "unreliable (ground truth)" in labels
    weights = next(f for f in figures if any(t.startswith("aggregation weight") for t in _titles(f)))
    legend = weights.axes[0].get_legend_handles_labels()[1]
    for cid, kind in truth.items():
        assert f"client {cid} (unreliable: {kind})" in legend
    page = index.read_text()
    assert UNRELIABLE_COL in page
    assert "never given to the server" in page


def test_run_sample_grids_get_row_labels(tiny_run, rendered):
    _, index = rendered
    raw = sorted((tiny_run / "samples").glob("*.png"))
    assert raw
    for p in raw:
        src = np.asarray(Image.open(p).convert("RGB"))
        out = np.asarray(Image.open(index.parent / "samples" / p.name).convert("RGB"))
        rows = src.shape[0] // 32
        assert rows == 3  # ground truth, backbone, personalised
        scale = out.shape[0] // src.shape[0]
        assert out.shape[1] == 96 + src.shape[1] * scale
        label_col = out[:, :96]
        for i in range(rows):  # white text in each row's band of the black label column
            band = label_col[i * out.shape[0] // rows:(i + 1) * out.shape[0] // rows]
            assert (band > 200).any()
        assert not (label_col[:, :2] > 0).any()  # a label column, not the picture shifted


def test_label_rows_refuses_rows_of_unequal_height():
    from pftray.evaluation.video import label_rows

    img = np.zeros((10, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="equal rows"):
        label_rows(img, ["a", "b", "c"])
    out = label_rows(img, ["ground truth", "personalised"], scale=2)
    assert out.shape == (20, 96 + 16, 3)
    assert (out[:10, :96] > 200).any() and (out[10:, :96] > 200).any()


def test_run_summary_names_the_unreliable_clients(tiny_run, capsys):
    from pftray.summary import print_run_summary

    print_run_summary(tiny_run, {"status": "done", "rounds": 2, "wall_s": 1.0})
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ground truth"))
    truth = unreliable_clients(yaml.safe_load((tiny_run / "config.yaml").read_text()))
    for cid, kind in truth.items():
        assert f"{cid} ({kind})" in line


# ------------------------------------------------------------------------------------------ sweep report
def _sweep(tmp_path, tiny_run, psnr, *, backbone=""):
    d = tmp_path / "sweep"
    d.mkdir()
    run_dirs = []
    for i in range(len(psnr)):  # each trial's run: the tiny run's tables, its config with model.backbone
        rd = d / f"trial-{i}" / "run"
        rd.mkdir(parents=True)
        for p in tiny_run.iterdir():
            if p.is_file():
                (rd / p.name).write_bytes(p.read_bytes())
            elif p.name in ("eval", "rounds", "clients") or p.suffix == ".parquet":
                import shutil

                shutil.copytree(p, rd / p.name)
        cfg = yaml.safe_load((rd / "config.yaml").read_text())
        cfg["model"]["backbone"] = backbone
        (rd / "config.yaml").write_text(yaml.safe_dump(cfg))
        run_dirs.append(str(rd))
    pd.DataFrame({"trial_id": [f"t{i}" for i in range(len(psnr))], "status": "done", "final/psnr": psnr,
                  "epsilon": np.linspace(1.0, 3.0, len(psnr)), "config/lora.shared_rank": [1, 2, 1][: len(psnr)],
                  "run_dir": run_dirs}).to_parquet(d / "trials.parquet")
    return d


def test_sweep_without_backbone_says_machinery_test_on_every_plot(tmp_path, tiny_run):
    d = _sweep(tmp_path, tiny_run, [9.5980, 9.5983, 9.5977])
    assert R.untrained_backbone(pd.read_parquet(d / "trials.parquet"))
    index = R.make_report(d)
    pngs = sorted(index.parent.glob("*.png"))
    assert len(pngs) >= 2
    for p in pngs:
        top = np.asarray(Image.open(p).convert("RGB"))[:18]
        assert (top == (255, 235, 235)).all(axis=-1).mean() > 0.5  # the banner strip
        assert ((top[..., 0] > 120) & (top[..., 1] < 60)).any()  # with red text on it
    page = index.read_text()
    assert "machinery test only: untrained backbone" in page
    assert "final/psnr: across 3 trials std 0.0003" in page
    assert "is within its evaluation noise" in page


def test_sweep_with_backbone_has_no_banner(tmp_path, tiny_run):
    d = _sweep(tmp_path, tiny_run, [9.0, 12.0, 15.0], backbone="checkpoints/backbone-tiny64.pt")
    assert not R.untrained_backbone(pd.read_parquet(d / "trials.parquet"))
    index = R.make_report(d)
    for p in index.parent.glob("*.png"):
        top = np.asarray(Image.open(p).convert("RGB"))[:18]
        assert (top == (255, 235, 235)).all(axis=-1).mean() < 0.5
    page = index.read_text()
    assert "machinery test only" not in page
    assert "is within its evaluation noise" not in page
    assert "final/psnr: across 3 trials std 3" in page
