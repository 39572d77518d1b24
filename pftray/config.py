"""Typed, validated experiment configuration.

A config is a tree of frozen dataclasses. YAML goes in (``load_config``), ``--set section.key=value`` overrides
are applied on top, and every value is checked against its declared type, range or choices. An unknown key, a
wrong type or an out-of-range value raises one :class:`ConfigError` that names the key path, the value and what
is allowed; nothing is silently corrected.

Each field's default carries a one-line reason in its ``help`` metadata (``pftray config --explain`` prints it).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pftray.errors import ConfigError  # re-exported: `from pftray.config import ConfigError` keeps working


def _f(default: Any, help: str, *, range: tuple[float | None, float | None] | None = None,  # noqa: A002
       choices: tuple[Any, ...] | None = None) -> Any:
    meta = {"help": help, "range": range, "choices": choices}
    if isinstance(default, (list, dict, tuple)) and not isinstance(default, tuple):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = _f("quickstart", "run name, used in the run directory name")
    seed: int = _f(0, "master seed: data, sampling, init and noise streams derive from it", range=(0, None))
    out_dir: str = _f("runs", "parent folder of run directories")


#: = pftray.data.types.UNRELIABLE_KINDS (repeated so that reading a config imports no data code; a test keeps them equal)
UNRELIABLE_KINDS = ("offset", "noise", "frozen", "heavy_offset", "swapped_audio", "wrong_identity",
                    "channel_swap", "blur", "occluded")


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("synthetic", "'synthetic' (embedded, no download) or a folder made by `pftray data prepare`")
    resolution: int = _f(64, "frame size in pixels; 32/64/128 for synthetic", choices=(32, 48, 64, 96, 128, 256))
    num_clients: int = _f(8, "registered clients, one identity each", range=(1, 10_000_000))
    clips_per_client: int = _f(6, "training clips per client (mean under quantity skew)", range=(1, 10_000))
    heldout_clips: int = _f(2, "held-out clips per client for personalised evaluation", range=(1, 1000))
    frames_per_clip: int = _f(16, "frames per clip at 25 fps", range=(2, 10_000))
    quantity_skew: float = _f(0.0, "lognormal sigma of clip counts across clients (0 = equal)", range=(0.0, 5.0))
    unreliable_fraction: float = _f(0.25, "share of clients with corrupted training clips (the ISFA case)",
                                    range=(0.0, 1.0))
    unreliable_kinds: tuple[str, ...] = _f(("offset", "noise", "frozen"), "corruptions cycled over unreliable clients: "
                                           "offset, noise, frozen (mild), heavy_offset, swapped_audio, wrong_identity "
                                           "(break the audio-mouth / reference link), channel_swap (BGR frames); "
                                           "see data.synthetic.corrupt_clip")
    shift_severity: float = _f(0.0, "synthetic 'shifted' scenario: 0 = client identities drawn like the public ones "
                               "(i.i.d., bit-for-bit the old data); s in (0, 1] gives every client visible teeth "
                               "(shared shift, opacity s) and its own mouth gain and teeth colour (traits scaled by "
                               "s), ground truth in clip extras; public clips never shift", range=(0.0, 1.0))
    n_mels: int = _f(32, "mel bands of the audio features", range=(4, 256))
    audio_window: int = _f(16, "mel frames (10 ms each) in the audio window around a video frame", range=(2, 256))
    public_identities: int = _f(32, "disjoint identities for backbone pre-training", range=(1, 100_000))
    public_clips_per_identity: int = _f(4, "clips per public identity", range=(1, 10_000))
    public_source: str = _f("", "folder made by `pftray data prepare` whose speakers are the public identities of "
                            "`pftray pretrain` ('' = the embedded synthetic ones above; public_identities and "
                            "public_clips_per_identity then do not apply): one identity per shard, its reference "
                            "frame the shard's, its train and held-out clips all pre-train; its resolution must be "
                            "data.resolution and its speakers disjoint from data.source's")


@dataclass(frozen=True)
class ModelConfig:
    pretrained: str = _f("", "local diffusers folder with vae/ and unet/ subfolders ('' = build from the sizes below)")
    backbone: str = _f("", "checkpoint made by `pftray pretrain` ('' = none: random backbone)")
    vae_channels: tuple[int, ...] = _f((16, 32, 64), "AutoencoderKL block widths; len-1 = log2 downsampling")
    vae_layers_per_block: int = _f(1, "resnet layers per VAE block", range=(1, 4))
    latent_channels: int = _f(8, "VAE latent channels", range=(1, 64))
    pose_warp: bool = _f(False, "warp the reference frame by a flow field predicted from the head pose before taking "
                         "the residual (the latent then only carries what a warp cannot: mouth, blinks)")
    warp_grid: int = _f(8, "pose warp: flow field resolution (grid x grid, upsampled bilinearly)", range=(1, 256))
    autoencoder: str = _f("vae", "latent space of the residual to the reference: 'vae' (diffusers AutoencoderKL, "
                          "pre-trained) or 'space_to_depth' (pixel-unshuffled to the latent grid: lossless, no VAE "
                          "stage)", choices=("vae", "space_to_depth"))
    vae_reference: bool = _f(False, "also feed the reference frame to the VAE encoder and decoder (see generator.py)")
    unet_channels: tuple[int, ...] = _f((32, 64), "UNet block widths")
    unet_layers_per_block: int = _f(1, "resnet layers per UNet block", range=(1, 4))
    attention_head_dim: int = _f(8, "channels per attention head", range=(1, 512))
    cross_attention_dim: int = _f(64, "width of the audio/pose/identity condition tokens", range=(8, 4096))
    prediction_type: str = _f("v_prediction", "diffusion target", choices=("epsilon", "v_prediction", "sample"))
    num_train_timesteps: int = _f(1000, "DDPM training timesteps", range=(10, 10_000))
    beta_schedule: str = _f("squaredcos_cap_v2", "noise schedule", choices=("linear", "scaled_linear",
                                                                          "squaredcos_cap_v2"))
    audio_dropout: float = _f(0.0, "share of training clips whose audio tokens are replaced by learned null tokens "
                              "(pre-training and clients), which lets sampling use classifier-free guidance on the "
                              "audio; > 0 adds the null tokens to the backbone", range=(0.0, 1.0))
    audio_guidance: float = _f(1.0, "classifier-free guidance on the audio when sampling: out = uncond + s * (cond - "
                               "uncond); 1 = off (one UNet call per step), > 1 strengthens what the audio drives (the "
                               "mouth); needs audio_dropout > 0", range=(0.0, 50.0))
    sample_temperature: float = _f(1.0, "scale of the initial DDIM noise when sampling: 1 = a sample of the model, < 1 "
                                   "trades diversity for fidelity towards the model's most likely frames, 0 = the "
                                   "deterministic trajectory from zero noise", range=(0.0, 1.0))
    gradient_checkpointing: bool = _f(False, "trade compute for memory on GPUs")


@dataclass(frozen=True)
class LoraConfigSpec:
    shared_rank: int = _f(8, "rank of the federated 'shared' adapter", range=(1, 512))
    identity_rank: int = _f(4, "rank of the private 'identity' adapter", range=(1, 512))
    alpha_ratio: float = _f(1.0, "lora_alpha = alpha_ratio * rank (scale 1 at any rank)", range=(0.0, 64.0))
    target_modules: tuple[str, ...] = _f(("to_q", "to_k", "to_v", "to_out.0"), "UNet attention projections to adapt")
    include_conv: bool = _f(False, "also adapt the resnet convs (conv1, conv2)")
    dropout: float = _f(0.0, "LoRA dropout", range=(0.0, 0.9))


@dataclass(frozen=True)
class TrainConfig:
    local_steps: int = _f(8, "optimiser steps per client per round", range=(1, 100_000))
    batch_clips: int = _f(2, "clips per local batch", range=(1, 4096))
    window: int = _f(4, "consecutive frames per clip in a batch (TDC needs >= 2)", range=(1, 256))
    lr_shared: float = _f(2e-3, "client learning rate of the shared adapter", range=(0.0, 10.0))
    lr_identity: float = _f(2e-3, "client learning rate of the identity adapter", range=(0.0, 10.0))
    lambda_tdc: float = _f(0.1, "weight of the temporal-denoising-consistency loss", range=(0.0, 100.0))
    tdc_space: str = _f("x0", "TDC on x0-predictions (default, see README) or eps-predictions", choices=("x0", "eps"))
    grad_clip: float = _f(1.0, "per-step gradient norm clip (0 = off)", range=(0.0, 1e6))
    precision: str = _f("fp32", "autocast dtype on GPU", choices=("fp32", "bf16", "fp16"))


@dataclass(frozen=True)
class PretrainConfig:
    vae_steps: int = _f(1500, "VAE optimiser steps on public identities", range=(0, 10_000_000))
    unet_steps: int = _f(1000, "UNet optimiser steps on public identities", range=(0, 10_000_000))
    warp_steps: int = _f(400, "pose-warp optimiser steps (model.pose_warp), before the VAE", range=(0, 10_000_000))
    lr_warp: float = _f(3e-3, "pose-warp learning rate", range=(0.0, 10.0))
    batch_frames: int = _f(16, "frames per VAE batch", range=(1, 65536))
    batch_clips: int = _f(6, "clips per UNet batch", range=(1, 4096))
    lr_vae: float = _f(2e-3, "VAE learning rate", range=(0.0, 10.0))
    lr_unet: float = _f(1e-3, "UNet learning rate", range=(0.0, 10.0))
    kl_weight: float = _f(1e-6, "VAE KL weight (tiny: we want a sharp autoencoder)", range=(0.0, 10.0))
    vae_l1: float = _f(1.0, "weight of the L1 term in the VAE reconstruction loss, beside MSE (0 = MSE only: "
                       "keeps small residuals such as the mouth, which L1 pushes to zero)", range=(0.0, 100.0))
    checkpoint_every: int = _f(200, "steps between resumable checkpoints", range=(1, 10_000_000))


@dataclass(frozen=True)
class FedConfig:
    strategy: str = _f("isfa", "aggregation rule, or a baseline: 'local' (each client trains both adapters on its own "
                       "clips, nothing aggregated) or 'pooled' (the same adapters trained centrally on all clips)",
                       choices=("fedavg", "fedprox", "isfa", "local", "pooled"))
    rounds: int = _f(10, "federated rounds", range=(1, 1_000_000))
    clients_per_round: int = _f(4, "clients sampled per round (fixed-size sampling)", range=(0, 1_000_000))
    sample_rate: float = _f(0.0, "Poisson sampling rate; >0 replaces clients_per_round", range=(0.0, 1.0))
    min_clients: int = _f(1, "a round with fewer successful clients is recorded as failed", range=(1, 1_000_000))
    mu: float = _f(0.0, "FedProx proximal weight (strategy fedprox needs mu > 0)", range=(0.0, 1e6))
    isfa_alpha: float = _f(0.65, "ISFA: weight of identity similarity vs temporal stability", range=(0.0, 1.0))
    isfa_gamma: float = _f(1.0, "ISFA: temperature of exp(gamma * score)", range=(0.0, 100.0))
    isfa_weighting: str = _f("raw", "ISFA: 'raw' = exp(gamma * score) as in the paper (scores near 1 differ by ~1e-3, "
                             "so the weights are near uniform); 'round_z' = exp(gamma * z), z the score's robust "
                             "z-score among the round's clients (median / MAD, clipped to [-3, 3]); needs every "
                             "client's score at the server, so not with client-level DP or secure aggregation",
                             choices=("raw", "round_z"))
    server_lr: float = _f(1.0, "server learning rate on the aggregated delta", range=(0.0, 100.0))
    server_optimizer: str = _f("sgd", "server optimiser on the aggregated delta", choices=("sgd", "adam"))
    server_beta1: float = _f(0.9, "FedAdam beta1", range=(0.0, 1.0))
    server_beta2: float = _f(0.99, "FedAdam beta2", range=(0.0, 1.0))
    server_tau: float = _f(1e-3, "FedAdam tau (adaptivity; was fed.server_eps)", range=(0.0, 1.0))
    max_update_norm: float = _f(1e3, "updates with a larger L2 norm are rejected as absurd", range=(0.0, None))
    eval_every: int = _f(5, "personalised evaluation every k rounds (0 = only at the end)", range=(0, 1_000_000))
    eval_clients: int = _f(4, "clients evaluated at each evaluation", range=(1, 1_000_000))
    checkpoint_every: int = _f(1, "checkpoint every k rounds", range=(1, 1_000_000))


@dataclass(frozen=True)
class PrivacyConfig:
    noise_multiplier: float = _f(0.0, "client-level DP noise multiplier z (0 = no DP)", range=(0.0, 1000.0))
    clipping_norm: float = _f(0.0, "client update clip C (0 = no clipping)", range=(0.0, 1e9))
    adaptive_clipping: bool = _f(False, "adapt C toward the target quantile (Andrew et al. 2021)")
    target_quantile: float = _f(0.5, "adaptive clipping: target fraction of unclipped updates", range=(0.0, 1.0))
    clip_lr: float = _f(0.2, "adaptive clipping: geometric learning rate", range=(0.0, 10.0))
    clipped_count_stddev: float = _f(0.0, "adaptive clipping: noise on the unclipped count (0 = m/20)",
                                     range=(0.0, 1e6))
    noise_placement: str = _f("central", "where the noise is added: 'central' (trusted driver, Gaussian) or "
                              "'distributed' (clients add Skellam shares under SecAgg)", choices=("central", "distributed"))
    example_cap: int = _f(0, "on-device weight under DP or SecAgg: min(n, cap)/cap (0 = every client weighs 1)",
                          range=(0, 1_000_000_000))
    target_delta: float = _f(1e-5, "delta of the (epsilon, delta) guarantee", range=(0.0, 1.0))
    target_epsilon: float = _f(0.0, "stop before exceeding this epsilon (0 = no budget)", range=(0.0, 1e6))
    accountant: str = _f("rdp", "privacy accountant", choices=("rdp", "prv"))
    secagg: bool = _f(False, "secure aggregation (SecAgg+) of the shared-adapter updates")
    secagg_degree: int = _f(0, "SecAgg+ neighbours per client (0 = complete graph, classic SecAgg)",
                            range=(0, 100_000))
    secagg_threshold: float = _f(0.5, "fraction of sampled clients that must survive", range=(0.0, 1.0))
    secagg_modulus_bits: int = _f(32, "fixed-point modulus 2^k (k <= 53: the fixed-point grid is exact in float64)",
                                  range=(8, 53))
    noise_scalars: float = _f(0.0, "stddev of noise on the ISFA scalars sent to the server", range=(0.0, 10.0))
    dp_sgd: bool = _f(False, "sample-level DP-SGD inside clients on the LoRA parameters (was train.dp_sgd)")
    dp_sgd_noise_multiplier: float = _f(1.0, "DP-SGD noise multiplier (was train.dp_sgd_noise_multiplier)",
                                        range=(0.0, 100.0))
    dp_sgd_max_grad_norm: float = _f(1.0, "DP-SGD per-clip gradient clip (was train.dp_sgd_max_grad_norm)",
                                     range=(1e-6, 1e6))


@dataclass(frozen=True)
class TierConfig:
    name: str = _f("cpu", "tier name")
    num_workers: int = _f(1, "worker actors in this tier", range=(1, 100_000))
    num_cpus: float = _f(1.0, "CPUs per worker actor", range=(0.0, 1024.0))
    num_gpus: float = _f(0.0, "GPUs per worker actor (fractions allowed)", range=(0.0, 64.0))
    resources: dict[str, float] = _f({}, "custom resources per worker, e.g. {'accelerator_type:A100': 0.001}")
    batch_clips: int = _f(0, "override of train.batch_clips for this tier (0 = keep)", range=(0, 4096))
    precision: str = _f("", "override of train.precision for this tier ('' = keep)",
                        choices=("", "fp32", "bf16", "fp16"))
    client_share: float = _f(1.0, "relative share of clients mapped to this tier", range=(0.0, 1e6))


@dataclass(frozen=True)
class RuntimeConfig:
    address: str = _f("", "Ray address ('' = start a local instance, 'auto' = join a cluster)")
    num_cpus: int = _f(0, "CPUs for a local Ray instance (0 = all)", range=(0, 4096))
    num_gpus: int = _f(-1, "GPUs for a local Ray instance (-1 = detect)", range=(-1, 4096))
    tiers: tuple[TierConfig, ...] = _f((TierConfig(),), "worker tiers of a heterogeneous cluster")
    round_timeout_s: float = _f(3600.0, "a client not done by then counts as failed", range=(1.0, None))
    dispatch: str = _f("dynamic", "clients to workers of their tier: 'dynamic' (a free worker takes the next chunk; "
                       "needs the run directory on storage all of a tier's workers see) or 'static' (client id mod "
                       "workers)", choices=("dynamic", "static"))
    resident_clients: int = _f(8, "client states kept in a worker's memory; the rest spill to disk",
                               range=(0, 1_000_000))


@dataclass(frozen=True)
class EvalConfig:
    clips: int = _f(1, "held-out clips per client in evaluation", range=(1, 1000))
    frames: int = _f(8, "frames generated per evaluated clip", range=(1, 10_000))
    sample_steps: int = _f(10, "DDIM steps when evaluating", range=(1, 1000))
    id_encoder: str = _f("", "SynthIdentityEncoder file for id_sim_synth ('' = not computed)")
    baseline: bool = _f(True, "also sample the pre-trained backbone alone (model 'backbone') and copy the reference "
                        "(model 'copy') in each evaluation; off halves its cost when another run on the same "
                        "clients already gives those rows")
    global_model: bool = _f(False, "also sample the global shared adapter with a data-independent identity adapter "
                            "(model 'global': what the federation gives a client before its own training, and "
                            "the only part unreliable clients can damage for the others)")
    local_baseline: bool = _f(False, "also train a local-only shadow of each evaluated client (both adapters on its "
                              "own clips, the same steps whenever it is sampled, nothing sent) and evaluate it as "
                              "model 'local' beside the personalised one")


@dataclass(frozen=True)
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfigSpec = field(default_factory=LoraConfigSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def replace(self, **overrides: Any) -> Config:
        """Return a copy with dotted-key overrides applied and validated: ``cfg.replace(**{"fed.rounds": 3})``."""
        return apply_overrides(self, {k: v for k, v in overrides.items()})


# ----------------------------------------------------------------------------------------------- validation


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; only lossless coercions (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for section '{_type_name(tp)}', got {value!r}")
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 3e-4 as a string; YAML 1.2 and users read a number
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        inner = args[0]
        return tuple(_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {_coerce(k, kt, f"{path}.<key>"): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    raise ConfigError(f"{path}: unsupported annotation {tp!r}")  # a programming error in this module


def _check_field(f: dataclasses.Field, value: Any, path: str) -> None:
    rng, choices = f.metadata.get("range"), f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {list(choices)}")
    if rng is not None:
        lo, hi = rng
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            raise ConfigError(f"{path}: {value!r} is out of range; allowed [{lo_s}, {hi_s}]")


def _build(cls: type, data: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key; allowed keys here: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            value = _coerce(data[name], hints[name], key)
            _check_field(f, value, key)
            kwargs[name] = value
    obj = cls(**kwargs)
    _cross_checks(obj, path)
    return obj


def _cross_checks(obj: Any, path: str) -> None:
    p = f"{path}." if path else ""
    if isinstance(obj, FedConfig):
        if obj.strategy == "fedprox" and obj.mu <= 0:
            raise ConfigError(f"{p}mu: {obj.mu!r} with strategy 'fedprox'; FedProx needs mu > 0")
        if obj.clients_per_round == 0 and obj.sample_rate == 0:
            raise ConfigError(f"{p}clients_per_round: 0 with sample_rate 0; set one of them")
    if isinstance(obj, DataConfig):
        bad = [k for k in obj.unreliable_kinds if k not in UNRELIABLE_KINDS]
        if bad:
            raise ConfigError(f"{p}unreliable_kinds: {bad[0]!r} is not allowed; choose from {list(UNRELIABLE_KINDS)}")
        if obj.unreliable_fraction > 0 and not obj.unreliable_kinds:
            raise ConfigError(f"{p}unreliable_kinds: empty with unreliable_fraction {obj.unreliable_fraction!r}; "
                              f"choose from {list(UNRELIABLE_KINDS)}")
        if obj.public_source and obj.public_source == obj.source:
            raise ConfigError(f"{p}public_source: {obj.public_source!r} is also {p}source; the public speakers of "
                              "pre-training must be disjoint from the federated clients")
        if obj.shift_severity > 0 and obj.source != "synthetic":
            raise ConfigError(f"{p}shift_severity: {obj.shift_severity!r} with source {obj.source!r}; the shifted "
                              "scenario exists only for synthetic data")
    if isinstance(obj, ModelConfig):
        if len(obj.vae_channels) < 1 or len(obj.unet_channels) < 1:
            raise ConfigError(f"{p}vae_channels/unet_channels: need at least one block")
        for c in obj.unet_channels:
            if c % obj.attention_head_dim:
                raise ConfigError(f"{p}attention_head_dim: {obj.attention_head_dim} must divide every "
                                  f"unet_channels entry, got {list(obj.unet_channels)}")
        if obj.audio_guidance != 1.0 and obj.audio_dropout == 0.0:
            raise ConfigError(f"{p}audio_guidance: {obj.audio_guidance!r} with audio_dropout 0; guidance needs the "
                              "null audio tokens that audio_dropout > 0 trains")
    if isinstance(obj, TrainConfig) and obj.lambda_tdc > 0 and obj.window < 2:
        raise ConfigError(f"{p}window: {obj.window} with lambda_tdc > 0; TDC needs window >= 2")
    if isinstance(obj, Config):
        if obj.fed.strategy in ("local", "pooled"):
            pr = obj.privacy
            used = [k for k, on in (("privacy.noise_multiplier", pr.noise_multiplier > 0), ("privacy.secagg", pr.secagg),
                                    ("privacy.dp_sgd", pr.dp_sgd and obj.fed.strategy == "pooled")) if on]
            if used:
                raise ConfigError(f"fed.strategy: {obj.fed.strategy!r} is a baseline without aggregation; it cannot "
                                  f"be combined with {used[0]}")
        if obj.fed.isfa_weighting == "round_z" and (obj.privacy.noise_multiplier > 0 or obj.privacy.secagg):
            raise ConfigError("fed.isfa_weighting: 'round_z' compares each client's score with the round's other "
                              "clients at the server; under client-level DP or secure aggregation a client's weight "
                              "may depend on its own report only, so use 'raw' there")
        if obj.privacy.noise_multiplier > 0 and obj.privacy.clipping_norm <= 0:
            raise ConfigError("privacy.clipping_norm: 0 with noise_multiplier > 0; DP needs a clipping norm > 0")
        if obj.privacy.noise_multiplier > 0 and obj.fed.sample_rate <= 0:
            q = obj.fed.clients_per_round / max(obj.data.num_clients, 1)
            raise ConfigError(f"fed.sample_rate: 0 (fixed-size sampling of fed.clients_per_round) with "
                              f"privacy.noise_multiplier > 0; client-level DP is accounted for Poisson sampling, so "
                              f"set fed.sample_rate (e.g. {q:.4g} = clients_per_round / num_clients)")
        if obj.privacy.noise_multiplier > 0 and obj.privacy.noise_placement == "distributed" and not obj.privacy.secagg:
            raise ConfigError("privacy.noise_placement: 'distributed' without privacy.secagg; without secure "
                              "aggregation the driver sees each client's noise share, so set privacy.secagg: true")
        if obj.fed.min_clients > max(obj.fed.clients_per_round, 1) and obj.fed.sample_rate == 0:
            raise ConfigError(f"fed.min_clients: {obj.fed.min_clients} exceeds fed.clients_per_round "
                              f"{obj.fed.clients_per_round}")
        if obj.fed.clients_per_round > obj.data.num_clients:
            raise ConfigError(f"fed.clients_per_round: {obj.fed.clients_per_round} exceeds data.num_clients "
                              f"{obj.data.num_clients}")
        res, n_down = obj.data.resolution, len(obj.model.vae_channels) - 1
        if res % (2 ** (n_down + len(obj.model.unet_channels) - 1)):
            raise ConfigError(f"data.resolution: {res} is not divisible by the model's total downsampling "
                              f"{2 ** (n_down + len(obj.model.unet_channels) - 1)}")


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a plain mapping (e.g. parsed YAML) into a frozen :class:`Config`."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"<root>: expected a mapping of sections, got {type(data).__name__}")
    return _build(Config, _drop_removed(data), "")


#: keys that once existed but never did anything; old run directories still carry them in config.yaml, so they are
#: dropped (not rejected) when read. Sampling steps live in eval.sample_steps.
REMOVED_KEYS = {"model": ("sample_steps",), "eval": ("save_videos",), "data": ("cache_dir",)}
#: keys renamed or moved (old dotted path -> new dotted path). Old run directories, old config files and ``--set``
#: overrides are read under the old name; giving both names is an error.
RENAMED_KEYS = {
    "fed.server_eps": "fed.server_tau",
    "train.dp_sgd": "privacy.dp_sgd",
    "train.dp_sgd_noise_multiplier": "privacy.dp_sgd_noise_multiplier",
    "train.dp_sgd_max_grad_norm": "privacy.dp_sgd_max_grad_norm",
}


def renamed_key(key: str) -> str:
    """The current dotted path of ``key`` (itself unless it was renamed)."""
    return RENAMED_KEYS.get(key, key)


def _drop_removed(data: Mapping[str, Any]) -> Mapping[str, Any]:
    touched = set(REMOVED_KEYS) | {k.split(".")[0] for k in RENAMED_KEYS}
    if not any(isinstance(data.get(sec), Mapping) for sec in touched):
        return data
    out = {k: (dict(v) if k in touched and isinstance(v, Mapping) else v) for k, v in data.items()}
    for sec, keys in REMOVED_KEYS.items():
        if isinstance(out.get(sec), dict):
            for k in keys:
                out[sec].pop(k, None)
    for old, new in RENAMED_KEYS.items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        if not (isinstance(out.get(osec), dict) and okey in out[osec]):
            continue
        target = out.get(nsec)
        if target is None:
            target = out[nsec] = {}
        elif not isinstance(target, dict):
            continue  # the section's own type error is reported by the validation
        if nkey in target:
            raise ConfigError(f"{old}: renamed to {new}; give only {new}")
        target[nkey] = out[osec].pop(okey)
    return out


_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(cfg: Config | Mapping[str, Any], overrides: Mapping[str, Any] | list[str]) -> Config:
    """Apply ``{"a.b": v}`` or ``["a.b=v", ...]`` overrides to a config (or a raw mapping) and validate the
    whole tree; unknown keys are rejected by the validation, naming the dotted path."""
    items = [_parse_override(s) for s in overrides] if isinstance(overrides, list) else list(overrides.items())
    data = cfg.to_dict() if isinstance(cfg, Config) else copy.deepcopy(dict(cfg))
    for key, value in items:
        _set_dotted(data, renamed_key(key), value)
    return config_from_dict(data)


#: config keys holding input paths, with what each must name. A relative value in a config file is resolved
#: against the file's folder, then the repository root (:func:`path_roots`); a relative ``--set`` value against the
#: working directory first. Missing inputs are a :class:`ConfigError` when the config loads.
INPUT_PATH_KEYS: dict[str, str] = {"data.public_source": "folder",  # first: a preset's first step makes it
                                   "model.backbone": "file", "model.pretrained": "folder", "data.source": "folder",
                                   "eval.id_encoder": "file"}
#: the checkout this package runs from (only a root when it is one: an installed wheel has no pyproject.toml)
REPO_ROOT = Path(__file__).resolve().parent.parent


def path_roots(*folders: str | Path | None) -> list[Path]:
    """``folders`` (absolute, duplicates and Nones dropped), then the repository root when running from a checkout."""
    roots: list[Path] = []
    for f in (*folders, REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else None):
        if f is not None and Path(f).resolve() not in roots:
            roots.append(Path(f).resolve())
    return roots


def _input_path(key: str, value: str) -> bool:
    return bool(value) and not (key == "data.source" and value == "synthetic")


def resolve_input_paths(cfg: Config, roots: list[Path], *, check: bool = True,
                        roots_for: Mapping[str, list[Path]] | None = None) -> Config:
    """Make every input path of ``cfg`` absolute: the first of ``root / value`` that exists (``roots_for[key]``
    replaces ``roots`` for a key). A path found nowhere is a :class:`ConfigError` naming the key, the value and
    the places looked in; with ``check=False`` (e.g. ``pftray pretrain``, which writes ``model.backbone``) it
    becomes the first candidate whose folder exists."""
    fixes = {}
    for key, kind in INPUT_PATH_KEYS.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not _input_path(key, value):
            continue
        p = Path(value).expanduser()
        tried = [p] if p.is_absolute() else [r / p for r in (roots_for or {}).get(key, roots)]
        found = next((t for t in tried if (t.is_file() if kind == "file" else t.is_dir())), None)
        if found is None:
            if check:
                raise ConfigError(f"{key}: {value!r}: no such {kind} (looked for {', '.join(map(str, tried))})")
            found = next((t for t in tried if t.parent.is_dir()), tried[0])
        if str(found.resolve()) != value:
            fixes[key] = str(found.resolve())
    return cfg.replace(**fixes) if fixes else cfg


def load_config(path: str | Path, overrides: list[str] | None = None, *, check_paths: bool = True) -> Config:
    """Load a YAML preset, apply ``--set`` overrides, validate. Errors name the file or the key.

    Input paths (:data:`INPUT_PATH_KEYS`) come back absolute, so the config works from any working directory:
    a relative path in the file is looked for in the file's folder, then the repository root; a relative path
    given by an override in the working directory first. ``check_paths=False`` accepts paths that do not exist
    yet (an output such as ``pftray pretrain``'s backbone)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    try:
        cfg = apply_overrides(data or {}, overrides or [])
        roots = path_roots(path.parent)
        overridden = {_parse_override(o)[0] for o in overrides or []}
        with_cwd = path_roots(Path.cwd(), path.parent)
        return resolve_input_paths(cfg, roots, check=check_paths,
                                   roots_for={k: with_cwd for k in INPUT_PATH_KEYS if k in overridden})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def explain(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per key: ``path = default  # reason [allowed]``."""
    lines = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hints = typing.get_type_hints(cls)
        if dataclasses.is_dataclass(hints[f.name]):
            lines += explain(hints[f.name], key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = f.metadata.get("choices") or f.metadata.get("range") or ""
        lines.append(f"{key} = {_to_plain(default)!r}  # {f.metadata.get('help', '')} {allowed or ''}".rstrip())
    return lines
