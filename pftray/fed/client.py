"""What one client runs in a round (no Ray): local training of the shared + identity adapters, the ISFA
reliability scalars on its own data, and the update delta of the shared adapter.

The identity adapter and its optimiser state are the client's private state (:class:`ClientState`); they are
saved with the client and never returned to the server. Only :class:`ClientUpdate` leaves, and of it only the
scalars (``num_examples``, ``id_sim``, ``temp_stab``, ``loss``) and later the weighted, clipped, noised and
possibly masked delta.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pftray.config import Config
from pftray.data import ClientData, clips_to_batch
from pftray.errors import ConfigError
from pftray.model.adapters import (
    adapter_parameters,
    flatten_state,
    get_adapter_state,
    load_adapter_state,
    set_trainable,
    unflatten_state,
)
from pftray.model.factory import build_model, check_precision, initial_identity_state
from pftray.model.generator import TalkingHeadModel
from pftray.model.losses import diffusion_losses, proximal_term

#: diffusion timestep at which the reliability scalars are measured (moderate noise: the prediction is
#: informative about identity and motion, yet the model must still do real work)
RELIABILITY_TIMESTEP = 300


@dataclass
class ClientState:
    """A client's private state: identity adapter, its optimiser state, and how many rounds it trained.

    ``shared`` is set only in the *local-only* baseline (``fed.strategy: local``): the client's own copy of the
    shared adapter (flattened), which it trains and never sends. Loading a state with it uses it in place of the
    global shared adapter."""

    identity: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    rounds_trained: int = 0
    privacy: dict[str, Any] | None = None  # sample-level DP-SGD ledger of this client (when privacy.dp_sgd)
    shared: np.ndarray | None = None  # local-only baseline: the client's own shared adapter, never uploaded

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"identity": self.identity, "optimizer": self.optimizer, "rounds_trained": self.rounds_trained,
                    "privacy": self.privacy, "shared": self.shared}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientState:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        return cls(blob["identity"], blob["optimizer"], int(blob["rounds_trained"]), blob.get("privacy"),
                   blob.get("shared"))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ClientState:
        return cls.from_bytes(Path(path).read_bytes())


@dataclass
class ClientUpdate:
    client_id: int
    num_examples: int
    loss: float
    diffusion_loss: float
    tdc_loss: float
    id_sim: float
    temp_stab: float
    update_norm: float
    val_loss: float = float("nan")
    status: str = "ok"
    message: str = ""
    delta: np.ndarray | None = field(default=None, repr=False)
    sample_epsilon: float = float("nan")  # sample-level DP-SGD epsilon of this client so far (NaN without DP-SGD)

    def scalars(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("client_id", "num_examples", "loss", "diffusion_loss", "tdc_loss",
                                              "id_sim", "temp_stab", "update_norm", "val_loss", "status",
                                              "message", "sample_epsilon")}


def identity_signal(cfg: Config) -> str:
    """Which embedder ISFA's on-device ``id_sim`` uses: ``"dlib"`` (dlib's 128-D face descriptor, as the ``csim``
    metric) for real faces (a ``data.source`` made by ``pftray data prepare``) when dlib and its weights are
    installed, else ``"backbone"`` (the backbone's identity-token encoder over VAE latents; the synthetic faces
    always use it, dlib's descriptors of cartoon faces mean nothing). Same formula and range either way."""
    from pftray import faces
    from pftray.metrics.suite import face_metrics_for_source

    return "dlib" if face_metrics_for_source(cfg.data.source) and faces.available() is None else "backbone"


def optimizer_step(loss: torch.Tensor, optimizers: list[torch.optim.Optimizer], params: list[torch.Tensor], *,
                   scaler: torch.amp.GradScaler, grad_clip: float) -> bool:
    """Backward, gradient clip and step of every optimiser through ``scaler`` (fp16 on CUDA; a disabled
    scaler is a plain backward/step). Gradients are unscaled before the clip, so ``grad_clip`` is in true
    units; a step whose gradients overflowed is skipped by the scaler. Returns whether the step was applied."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for opt in optimizers:
        scaler.unscale_(opt)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for opt in optimizers:
        scaler.step(opt)
    if not scaler.is_enabled():
        return True
    before = scaler.get_scale()
    scaler.update()
    return scaler.get_scale() >= before  # the scale backs off exactly when the step found inf/NaN and skipped


class ClientTrainer:
    """Runs local training for any client on one model instance (a worker hosts many clients)."""

    def __init__(self, cfg: Config, *, device: str | torch.device = "cpu", model: TalkingHeadModel | None = None):
        check_precision(cfg.train.precision, cfg.privacy.dp_sgd)
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model if model is not None else build_model(cfg, device=self.device)
        self.template = get_adapter_state(self.model.unet, "shared")
        self.identity_signal = identity_signal(cfg)

    # ------------------------------------------------------------------------------------------- helpers
    def _autocast(self):
        prec = self.cfg.train.precision
        if self.device.type == "cuda" and prec in ("bf16", "fp16"):
            return torch.autocast("cuda", dtype=torch.bfloat16 if prec == "bf16" else torch.float16)
        return torch.autocast("cpu", enabled=False)

    def _grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 autocast on CUDA needs loss scaling (fp16 gradients underflow); bf16, fp32 and CPU do not. A fresh
        scaler per fit: a client's training does not depend on which clients its worker trained before."""
        enabled = self.device.type == "cuda" and self.cfg.train.precision == "fp16"
        return torch.amp.GradScaler(self.device.type, enabled=enabled)

    def _batch(self, client: ClientData, rng: np.random.Generator, clips: list | None = None) -> dict:
        clips = client.train if clips is None else clips
        pick = rng.choice(len(clips), size=min(self.cfg.train.batch_clips, len(clips)), replace=False)
        window = min(self.cfg.train.window, min(clips[i].frames.shape[0] for i in pick))
        batch = clips_to_batch([clips[i] for i in pick], frames=window, rng=rng, reference=client.reference)
        return {k: v.to(self.device) for k, v in batch.items()}

    def load(self, global_shared: np.ndarray, state: ClientState) -> None:
        """Put ``state``'s identity adapter and the shared adapter into the model: the global one, or the client's
        own copy when the state carries one (local-only baseline)."""
        shared = state.shared if state.shared is not None else global_shared
        load_adapter_state(self.model.unet, "shared", unflatten_state(shared, self.template))
        load_adapter_state(self.model.unet, "identity", state.identity)

    # --------------------------------------------------------------------------------------------- train
    def fit(self, client: ClientData, state: ClientState | None, global_shared: np.ndarray, *, server_round: int,
            mu: float = 0.0, local_steps: int | None = None, train_shared: bool = True,
            local_shared: bool = False) -> tuple[ClientUpdate, ClientState]:
        """Local training: E steps of diffusion + lambda_tdc * TDC (+ mu/2 ||w - w_global||^2), then scalars.

        ``local_shared`` (local-only baseline): the shared adapter starts from the client's own copy in ``state``
        (``global_shared`` the first time) and the trained copy is kept in the new state; the returned delta is
        relative to where it started and is never aggregated."""
        cfg = self.cfg
        if local_shared and state is not None and state.shared is not None:
            global_shared = state.shared
        seed = (cfg.experiment.seed, server_round, client.client_id)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if state is None:
            state = ClientState(initial_identity_state(self.model, client.client_id, cfg.experiment.seed))
        self.load(global_shared, state)
        global_params = {k: v.to(self.device) for k, v in unflatten_state(global_shared, self.template).items()}

        shared = list(adapter_parameters(self.model.unet, "shared").values())
        identity = list(adapter_parameters(self.model.unet, "identity").values())
        set_trainable(self.model.unet, ["shared", "identity"] if train_shared else ["identity"])
        # two optimisers: the identity optimiser's moments are private state that persists across rounds; the
        # shared optimiser restarts every round from the new global weights (standard FL practice)
        opt_id = torch.optim.Adam(identity, lr=cfg.train.lr_identity)
        if state.optimizer:
            opt_id.load_state_dict(state.optimizer)
        opt_sh = torch.optim.Adam(shared, lr=cfg.train.lr_shared) if train_shared else None
        trainable = identity + (shared if train_shared else [])

        self.model.train()
        losses, diffs, tdcs = [], [], []
        steps = cfg.train.local_steps if local_steps is None else local_steps
        scaler, skipped = self._grad_scaler(), 0
        for _ in range(steps):
            if cfg.privacy.dp_sgd:
                loss_v, diff_v, tdc_v = self._dp_sgd_step(client, rng, gen, [opt_id] + ([opt_sh] if opt_sh else []),
                                                          train_shared, mu, global_params)
            else:
                batch = self._batch(client, rng)
                with self._autocast():
                    # audio dropout keeps the adapters' null-audio branch (classifier-free guidance) trained too;
                    # the DP-SGD path leaves it out (its per-sample losses are drawn from given noise only)
                    out = diffusion_losses(self.model, batch, lambda_tdc=cfg.train.lambda_tdc,
                                           tdc_space=cfg.train.tdc_space, generator=gen,
                                           audio_dropout=cfg.model.audio_dropout)
                    loss = out["loss"]
                    if mu > 0 and train_shared:
                        loss = loss + proximal_term(adapter_parameters(self.model.unet, "shared"), global_params, mu)
                applied = optimizer_step(loss, [opt_id] + ([opt_sh] if opt_sh is not None else []), trainable,
                                         scaler=scaler, grad_clip=cfg.train.grad_clip)
                skipped += not applied
                loss_v = float(loss.detach())
                diff_v, tdc_v = float(out["diffusion"].detach()), float(out["tdc"].detach())
            losses.append(loss_v)
            diffs.append(diff_v)
            tdcs.append(tdc_v)
        sample_eps = math.nan
        if cfg.privacy.dp_sgd:
            from pftray.privacy.accounting import PrivacyLedger
            from pftray.privacy.dpsgd import dp_sgd_event

            ledger = PrivacyLedger()
            if state.privacy:
                ledger.load_state_dict(state.privacy)
            n = len(client.train)
            ledger.record(dp_sgd_event(noise_multiplier=cfg.privacy.dp_sgd_noise_multiplier,
                                       batch_clips=min(cfg.train.batch_clips, n), num_train_clips=n,
                                       local_steps=steps))
            state.privacy = ledger.state_dict()
            sample_eps = ledger.epsilon(cfg.privacy.target_delta, accountant=cfg.privacy.accountant)
        self.model.eval()
        set_trainable(self.model.unet, [])

        id_sim, temp_stab = self.reliability(client, np.random.default_rng((*seed, 1)))
        val_loss = self.validation_loss(client)
        new_shared = flatten_state(get_adapter_state(self.model.unet, "shared"))
        delta = (new_shared - global_shared).astype(np.float32) if train_shared else np.zeros_like(global_shared)
        norm = float(np.linalg.norm(delta))
        new_state = ClientState(get_adapter_state(self.model.unet, "identity"), opt_id.state_dict(),
                                state.rounds_trained + 1, state.privacy,
                                new_shared.astype(np.float32) if local_shared else None)
        status, message = "ok", ""
        if skipped:
            message = f"fp16: {skipped} of {steps} steps skipped by the GradScaler (gradients overflowed)"
        if not np.all(np.isfinite(delta)) or not all(math.isfinite(x) for x in losses):
            status, message = "nonfinite", "update or loss contains NaN/Inf"
        update = ClientUpdate(client.client_id, client.num_examples, float(np.mean(losses)), float(np.mean(diffs)),
                              float(np.mean(tdcs)), id_sim, temp_stab, norm, val_loss, status, message,
                              delta, sample_eps)
        return update, new_state

    def fit_pooled(self, clients: list[ClientData], states: list[ClientState | None], global_shared: np.ndarray, *,
                   server_round: int, steps: int) -> tuple[list[ClientUpdate], list[ClientState]]:
        """The *pooled* baseline (``fed.strategy: pooled``): the same adapters trained centrally, on all the given
        clients' clips together, for ``steps`` optimiser steps.

        Each step draws one client with probability proportional to its training clips (so every training clip is
        equally likely), loads that client's identity adapter and trains it together with the one shared adapter
        on a batch of the client's clips: diffusion + lambda_tdc * TDC, as :meth:`fit`. The shared adapter has one
        optimiser for the round (as a client's in :meth:`fit`); each identity adapter keeps its own optimiser state
        across rounds. No privacy applies (a central trainer sees every clip): this is the non-private upper bound.

        Returns one update per client, each carrying the same pooled delta of the shared adapter (so any weighted
        average of the round's updates is that delta), and each client's new state (unchanged for a client that
        was never drawn)."""
        cfg = self.cfg
        if cfg.privacy.dp_sgd:
            raise ConfigError("fed.strategy: 'pooled' is the non-private central baseline; it cannot use "
                              "privacy.dp_sgd")
        rng = np.random.default_rng((cfg.experiment.seed, server_round, 0x900D))
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        states = [st if st is not None else ClientState(initial_identity_state(self.model, c.client_id,
                                                                               cfg.experiment.seed))
                  for c, st in zip(clients, states)]
        load_adapter_state(self.model.unet, "shared", unflatten_state(global_shared, self.template))
        shared = list(adapter_parameters(self.model.unet, "shared").values())
        identity = adapter_parameters(self.model.unet, "identity")
        set_trainable(self.model.unet, ["shared", "identity"])
        opt_sh = torch.optim.Adam(shared, lr=cfg.train.lr_shared)
        id_values = [dict(st.identity) for st in states]
        id_opts: dict[int, torch.optim.Adam] = {}
        counts = np.array([len(c.train) for c in clients], dtype=float)
        p = counts / counts.sum()
        losses: list[list[float]] = [[] for _ in clients]
        diffs, tdcs = [], []
        scaler = self._grad_scaler()
        self.model.train()
        for _ in range(steps):
            k = int(rng.choice(len(clients), p=p))
            load_adapter_state(self.model.unet, "identity", id_values[k])
            if k not in id_opts:  # each client's Adam moments, over the same parameter tensors
                id_opts[k] = torch.optim.Adam(list(identity.values()), lr=cfg.train.lr_identity)
                if states[k].optimizer:
                    id_opts[k].load_state_dict(states[k].optimizer)
            batch = self._batch(clients[k], rng)
            with self._autocast():
                out = diffusion_losses(self.model, batch, lambda_tdc=cfg.train.lambda_tdc,
                                       tdc_space=cfg.train.tdc_space, generator=gen,
                                       audio_dropout=cfg.model.audio_dropout)
            optimizer_step(out["loss"], [id_opts[k], opt_sh], list(identity.values()) + shared, scaler=scaler,
                           grad_clip=cfg.train.grad_clip)
            id_values[k] = get_adapter_state(self.model.unet, "identity")
            losses[k].append(float(out["loss"].detach()))
            diffs.append(float(out["diffusion"].detach()))
            tdcs.append(float(out["tdc"].detach()))
        self.model.eval()
        set_trainable(self.model.unet, [])
        new_shared = flatten_state(get_adapter_state(self.model.unet, "shared"))
        delta = (new_shared - global_shared).astype(np.float32)
        norm = float(np.linalg.norm(delta))
        mean_loss = float(np.mean([x for ls in losses for x in ls])) if steps else math.nan
        updates, new_states = [], []
        for k, (client, st) in enumerate(zip(clients, states)):
            drawn = k in id_opts
            new_st = ClientState(id_values[k], id_opts[k].state_dict() if drawn else st.optimizer,
                                 st.rounds_trained + int(drawn), st.privacy)
            self.load(new_shared, new_st)
            id_sim, temp_stab = self.reliability(client, np.random.default_rng((cfg.experiment.seed, server_round,
                                                                               client.client_id, 1)))
            val_loss = self.validation_loss(client)
            status, message = "ok", "" if drawn else "pooled: no step drew this client this round"
            if not np.all(np.isfinite(delta)) or not math.isfinite(mean_loss):
                status, message = "nonfinite", "update or loss contains NaN/Inf"
            updates.append(ClientUpdate(client.client_id, client.num_examples,
                                        float(np.mean(losses[k])) if losses[k] else mean_loss,
                                        float(np.mean(diffs)) if diffs else math.nan,
                                        float(np.mean(tdcs)) if tdcs else math.nan, id_sim, temp_stab, norm,
                                        val_loss, status, message, delta))
            new_states.append(new_st)
        return updates, new_states

    def _dp_sgd_step(self, client, rng, gen, optimizers, train_shared: bool, mu: float,
                     global_params) -> tuple[float, float, float]:
        """One sample-level DP-SGD step (opacus per-clip gradients, Poisson sampling of clips)."""
        from pftray.privacy.dpsgd import dp_sgd_step, poisson_clip_indices

        cfg = self.cfg
        n = len(client.train)
        q = min(1.0, cfg.train.batch_clips / n)
        idx = poisson_clip_indices(n, sample_rate=q, rng=rng)
        batch = None
        if len(idx):
            window = min(cfg.train.window, min(client.train[i].num_frames for i in idx))
            b = clips_to_batch([client.train[i] for i in idx], frames=window, rng=rng, reference=client.reference)
            batch = {k: v.to(self.device) for k, v in b.items()}
        params = dict(adapter_parameters(self.model.unet, "identity"))
        if train_shared:
            params.update(adapter_parameters(self.model.unet, "shared"))
        out = dp_sgd_step(self.model, batch, params, optimizers, noise_multiplier=cfg.privacy.dp_sgd_noise_multiplier,
                          max_grad_norm=cfg.privacy.dp_sgd_max_grad_norm, expected_batch_size=q * n, generator=gen,
                          lambda_tdc=cfg.train.lambda_tdc, tdc_space=cfg.train.tdc_space,
                          mu=mu if train_shared else 0.0, global_params=global_params if train_shared else None)
        loss = float(out["loss"]) if out.get("loss") is not None else math.nan
        return loss, loss, math.nan

    @torch.no_grad()
    def validation_loss(self, client: ClientData) -> float:
        """Denoising loss on the client's held-out clips with fixed noise and timesteps (comparable across
        rounds): the personalised model's validation loss."""
        rng = np.random.default_rng((self.cfg.experiment.seed, client.client_id, 5))
        gen = torch.Generator().manual_seed(self.cfg.experiment.seed * 7919 + client.client_id)
        batch = self._batch(client, rng, clips=client.heldout)
        out = diffusion_losses(self.model, batch, lambda_tdc=0.0, generator=gen)
        return float(out["diffusion"])

    # ----------------------------------------------------------------------------------------- scalars
    @torch.no_grad()
    def reliability(self, client: ClientData, rng: np.random.Generator) -> tuple[float, float]:
        """ISFA reliability scalars on the client's own training clips (DESIGN.md).

        * ``temp_stab = 1 / (1 + J)``, ``J = mean |(x̂_{f+1} - x̂_f) - (x_{f+1} - x_f)|`` in pixel space (frames in
          [0, 1]) where ``x̂`` is the model's x0-prediction at timestep ``RELIABILITY_TIMESTEP``.
        * ``id_sim = (1 + cos(φ(x̂), φ(ref))) / 2`` in [0, 1], with φ the backbone's identity-token encoder over
          VAE latents, averaged over frames: how well the personalised model's predictions keep the identity of
          the client's reference frame.
        """
        batch = self._batch(client, rng)
        b, f = batch["frames"].shape[:2]
        refs = batch["reference"].repeat_interleave(f, dim=0)
        poses = batch["pose"].flatten(0, 1)
        x0 = self.model.encode(batch["frames"].flatten(0, 1), refs, poses)
        ref = self.model.reference_features(refs)
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        t = torch.full((b * f,), RELIABILITY_TIMESTEP, dtype=torch.long, device=self.device)
        eps = torch.randn(x0.shape, generator=g).to(self.device)
        noisy = self.model.scheduler.add_noise(x0, eps, t)
        out = self.model.predict(noisy, t, ref, batch["audio_feats"].flatten(0, 1), poses)
        x0_pred, _ = self.model.to_x0_eps(noisy, t, out.float())
        frames_pred = self.model.decode(x0_pred, refs, poses)
        img_pred = (frames_pred + 1) / 2
        img = (batch["frames"].flatten(0, 1) + 1) / 2
        p, y = img_pred.reshape(b, f, -1), img.reshape(b, f, -1)
        if f >= 2:
            jitter = float(((p[:, 1:] - p[:, :-1]) - (y[:, 1:] - y[:, :-1])).abs().mean())
        else:
            jitter = 0.0
        temp_stab = 1.0 / (1.0 + jitter)
        if self.identity_signal == "dlib":  # real faces: dlib's face descriptor, the embedder of the csim metric
            from pftray.errors import RuntimeFailure
            from pftray.metrics.base import is_missing
            from pftray.metrics.face import isfa_identity_consistency

            v = isfa_identity_consistency(img_pred.clamp(0, 1).float().cpu(), ((refs[:1] + 1) / 2).clamp(0, 1).float().cpu(),
                                          max_frames=8)
            if is_missing(v):  # decided once per run (identity_signal): never a silent mix of two scales
                raise RuntimeFailure(f"ISFA identity scalar (dlib): {v.reason}")
            return float(v), temp_stab
        phi = self.model.identity_embedding
        cos = F.cosine_similarity(phi(frames_pred), phi(refs), dim=1).mean()
        return float((1 + cos) / 2), temp_stab
