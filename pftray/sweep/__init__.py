"""Sweeps (Ray Tune + Optuna), one module per job: :mod:`.spec` (the sweep file), :mod:`.trial` (the trainable),
:mod:`.search` (the Tune wiring) and :mod:`.command` (``pftray sweep``). :mod:`pftray.tune` re-exports them."""
