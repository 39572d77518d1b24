"""What a sweep directory holds and which metrics a sweep knows: shared by :mod:`pftray.tune` (which writes sweeps)
and :mod:`pftray.analysis` (which reads them), so that neither imports the other at module level."""

from __future__ import annotations

#: Metrics a sweep can optimise, with the direction that is better ("best/<metric>" in :mod:`pftray.analysis`).
METRIC_MODES: dict[str, str] = {
    "val_loss": "min",
    "train_loss": "min",
    "epsilon": "min",
    "psnr": "max",
    "ssim": "max",
    "mouth_psnr": "max",
    "mouth_ssim": "max",
    "lip_sync": "max",
    "jitter": "min",
    "temp_stab_eval": "max",
}
#: a trial's run directory inside its Tune trial directory: ``<sweep dir>/<trial dir>/run``
RUN_SUBDIR = "run"
#: written into the sweep directory when every trial has ended (absent while it runs or after an interruption)
DONE_MARKER = "sweep_done.json"
