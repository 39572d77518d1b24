"""The conditional latent-diffusion talking-head generator.

Read top to bottom:

* ``AutoencoderKL`` maps a frame to a small latent (downsampling ``2^(len(vae_channels)-1)``) in a **residual
  space**: it encodes ``(frame - reference) / 2``, the difference between the frame and the identity's reference
  frame, and a latent decodes to ``reference + 2 * D(z)``. Talking-head frames differ from their reference only
  where the mouth, eyes and head move, so the autoencoder spends its capacity there; flat skin, hair and
  background come from the reference at full resolution. (A plain frame autoencoder of this size is the quality
  cap: on the synthetic faces it reconstructs below the copy-the-reference baseline after a CPU-sized training.)
* With ``pose_warp`` a small :class:`PoseWarp` first warps the reference by a flow field predicted from the head
  pose, and the residual is taken against that warped reference. On the synthetic heads the warp alone (400 steps,
  seconds on a CPU) raises the copy-the-reference PSNR from 25.9 dB to 31.2 dB: most of a frame's difference to
  its reference is head motion, which a warp renders at full resolution and an autoencoder of the residual does
  not.
* ``UNet2DConditionModel`` denoises the latent of one frame. Its input is the noisy latent concatenated with
  features of the **reference frame** (pixel-unshuffled to the latent grid, projected by a 1x1 conv) and with the
  head **pose** broadcast as constant maps (so that plain convolutions can move the face); its cross-attention
  reads **condition tokens**: one token per mel frame of the audio window around the frame (the mouth follows
  these), one pose token and one identity token.
* A diffusers ``DDPMScheduler`` gives the forward process and training targets (v-prediction by default);
  ``DDIMScheduler`` samples.

The backbone (VAE, UNet, condition encoder) is pre-trained on public identities and then frozen; federated
training only touches the two LoRA adapters on the UNet (see :mod:`pftray.model.adapters`).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from pftray.config import DataConfig, ModelConfig

POSE_DIM = 4  # yaw, pitch, roll, blink


def _groups(channels: tuple[int, ...]) -> int:
    """GroupNorm groups with at least 4 channels each: with one channel per group (instance norm) the first
    blocks of a narrow VAE lose every frame's global colour, which caps reconstruction quality."""
    g = 32
    while g > 1 and any(c % g or c // g < 4 for c in channels):
        g //= 2
    return g


def _widen_conv_in(conv: nn.Conv2d, extra: int) -> nn.Conv2d:
    """``conv`` with ``extra`` more input channels whose weights start at zero (the InstructPix2Pix way of adding
    inputs to a trained network: it computes exactly what it did until training moves the new weights)."""
    new = nn.Conv2d(conv.in_channels + extra, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : conv.in_channels].copy_(conv.weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def build_vae(mcfg: ModelConfig, resolution: int) -> AutoencoderKL:
    """The diffusers autoencoder. With ``vae_reference`` its encoder reads ``[residual, reference]`` (6 channels)
    and its decoder reads ``[z, pixel_unshuffle(reference)]``: both ``conv_in`` layers are widened with zero-initialised
    channels, so a pretrained diffusers VAE loads unchanged and learns to use the reference in pre-training."""
    n = len(mcfg.vae_channels)
    if mcfg.pretrained:
        vae = AutoencoderKL.from_pretrained(Path(mcfg.pretrained) / "vae", local_files_only=True)
    else:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(mcfg.vae_channels), layers_per_block=mcfg.vae_layers_per_block,
            latent_channels=mcfg.latent_channels, norm_num_groups=_groups(tuple(mcfg.vae_channels)),
            sample_size=resolution, mid_block_add_attention=False,
        )
    if mcfg.vae_reference:
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.encoder.conv_in = _widen_conv_in(vae.encoder.conv_in, 3)
        vae.decoder.conv_in = _widen_conv_in(vae.decoder.conv_in, 3 * down * down)
    return vae


REF_CHANNELS = 16  # reference-frame feature maps fed to the UNet next to the noisy latent


def build_unet(mcfg: ModelConfig, latent_size: int, latent_channels: int) -> UNet2DConditionModel:
    if mcfg.pretrained:
        return UNet2DConditionModel.from_pretrained(Path(mcfg.pretrained) / "unet", local_files_only=True)
    n = len(mcfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels + REF_CHANNELS + POSE_DIM,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(mcfg.unet_channels),
        layers_per_block=mcfg.unet_layers_per_block,
        cross_attention_dim=mcfg.cross_attention_dim,
        attention_head_dim=mcfg.attention_head_dim,
        norm_num_groups=_groups(tuple(mcfg.unet_channels)),
    )


class ConditionEncoder(nn.Module):
    """Audio window, pose and reference features -> cross-attention tokens ``[B, A + 2, D]``."""

    def __init__(self, *, n_mels: int, audio_window: int, ref_channels: int, dim: int, null_audio: bool = False):
        super().__init__()
        self.audio_in = nn.Sequential(nn.Linear(n_mels, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.audio_mix = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.audio_pos = nn.Parameter(torch.randn(audio_window, dim) * 0.02)
        # learned "no audio" tokens (model.audio_dropout > 0): the unconditional branch of classifier-free guidance
        self.null_audio = nn.Parameter(torch.randn(audio_window, dim) * 0.02) if null_audio else None
        self.pose = nn.Sequential(nn.Linear(POSE_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.identity = nn.Sequential(
            nn.Conv2d(ref_channels, dim, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(dim, dim),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, audio_feats: torch.Tensor, pose: torch.Tensor, ref_feat: torch.Tensor,
                drop_audio: torch.Tensor | None = None) -> torch.Tensor:
        """``drop_audio`` (bool ``[B]``): rows whose audio tokens become the null tokens."""
        a = self.audio_in(audio_feats)  # [B, A, D]
        a = a + self.audio_mix(a.transpose(1, 2)).transpose(1, 2) + self.audio_pos
        if drop_audio is not None:
            if self.null_audio is None:
                raise ValueError("dropping the audio needs null tokens: build the model with model.audio_dropout > 0")
            a = torch.where(drop_audio.to(a.device)[:, None, None], self.null_audio.to(a.dtype), a)
        tokens = torch.cat([a, self.pose(pose)[:, None], self.identity(ref_feat)[:, None]], dim=1)
        return self.norm(tokens)


class PoseWarp(nn.Module):
    """Head pose -> a coarse flow field (``grid x grid``, upsampled bilinearly) that warps the reference frame.

    On the synthetic faces the pose shifts, rotates and parallax-shifts the head; a warp of the reference renders
    that at full resolution for a few thousand parameters, which a latent autoencoder of the residual cannot (it
    would have to redraw every displaced edge). The last layer starts at zero: the identity warp."""

    def __init__(self, grid: int = 8, hidden: int = 128):
        super().__init__()
        self.grid = grid
        self.net = nn.Sequential(nn.Linear(POSE_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * grid * grid))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, reference: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        n, _, h, w = reference.shape
        flow = self.net(pose.to(reference.dtype)).view(n, 2, self.grid, self.grid)
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=reference.device, dtype=reference.dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=reference.device, dtype=reference.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        ident = torch.stack([gx, gy], dim=-1)[None]  # pixel centres: the zero flow reproduces the reference
        return F.grid_sample(reference, ident + flow, mode="bilinear", padding_mode="border", align_corners=False)


class TalkingHeadModel(nn.Module):
    """VAE + conditional UNet + condition encoder + schedulers, with the latent scale learned at pre-training."""

    def __init__(self, mcfg: ModelConfig, dcfg: DataConfig):
        super().__init__()
        self.mcfg, self.resolution = mcfg, dcfg.resolution
        self.s2d = mcfg.autoencoder == "space_to_depth"
        if self.s2d:  # no autoencoder to learn: the latent is the residual itself, rearranged onto the grid
            self.vae = None
            down = 2 ** (len(mcfg.vae_channels) - 1)
            self.latent_channels = 3 * down * down
        else:
            self.vae = build_vae(mcfg, dcfg.resolution)
            down = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.latent_channels = self.vae.config.latent_channels
        self.down = down
        self.latent_size = dcfg.resolution // down
        self.unet = build_unet(mcfg, self.latent_size, self.latent_channels)
        self.ref_proj = nn.Conv2d(3 * down * down, REF_CHANNELS, 1)
        self.warp = PoseWarp(mcfg.warp_grid) if mcfg.pose_warp else None
        self.cond = ConditionEncoder(n_mels=dcfg.n_mels, audio_window=dcfg.audio_window, ref_channels=REF_CHANNELS,
                                     dim=self.unet.config.cross_attention_dim,
                                     null_audio=mcfg.audio_dropout > 0)
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.register_buffer("latent_shift", torch.zeros(self.latent_channels))
        self.scheduler = DDPMScheduler(num_train_timesteps=mcfg.num_train_timesteps,
                                       beta_schedule=mcfg.beta_schedule, prediction_type=mcfg.prediction_type,
                                       clip_sample=False)
        if mcfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    # ------------------------------------------------------------------------------------------- latents
    def base(self, reference: torch.Tensor, n: int, pose: torch.Tensor | None = None) -> torch.Tensor:
        """What the residual is taken against, ``[n, 3, H, W]``: the reference frame(s) (``[3, H, W]``,
        ``[1, ...]`` or ``[n, ...]``), warped by ``pose`` ``[n, 4]`` when the model has a pose warp."""
        if reference.dim() == 3:
            reference = reference[None]
        if reference.shape[0] != n:
            reference = reference.expand(n, -1, -1, -1)
        if self.warp is None:
            return reference
        if pose is None:
            raise ValueError("this model warps the reference by the head pose (model.pose_warp): pass pose")
        return self.warp(reference, pose)

    @staticmethod
    def _residual(frames: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return (frames - base) / 2

    def _posterior(self, frames: torch.Tensor, base: torch.Tensor):
        x = self._residual(frames, base)
        if self.mcfg.vae_reference:
            x = torch.cat([x, base], dim=1)
        return self.vae.encode(x).latent_dist

    def _vae_decode(self, z: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> the residual ``D(z)`` (the base's pixels reach the decoder when ``vae_reference``)."""
        if self.s2d:
            return F.pixel_shuffle(z, self.down)
        if not self.mcfg.vae_reference:
            return self.vae.decode(z).sample
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        return self.vae.decoder(torch.cat([z, F.pixel_unshuffle(base, self.down).to(z.dtype)], dim=1))

    def _latent_mean(self, frames: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        if self.s2d:
            return F.pixel_unshuffle(self._residual(frames, base), self.down)
        return self._posterior(frames, base).mean

    def encode(self, frames: torch.Tensor, reference: torch.Tensor, pose: torch.Tensor | None = None) -> torch.Tensor:
        """Frames ``[N, 3, H, W]`` in [-1, 1], their reference (``[N|1, 3, H, W]`` or ``[3, H, W]``) and, for a
        pose-warping model, their pose ``[N, 4]`` -> normalised residual latents (posterior mean: deterministic)."""
        mean = self._latent_mean(frames, self.base(reference, frames.shape[0], pose))
        return (mean - self.latent_shift[None, :, None, None]) * self.latent_scale

    def decode(self, latents: torch.Tensor, reference: torch.Tensor, pose: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised residual latents -> frames in [-1, 1]: ``base + 2 * D(z)``."""
        z = latents / self.latent_scale + self.latent_shift[None, :, None, None]
        base = self.base(reference, latents.shape[0], pose)
        return (base + 2 * self._vae_decode(z, base)).clamp(-1, 1)

    def reference_features(self, reference: torch.Tensor) -> torch.Tensor:
        """Reference frames ``[N, 3, H, W]`` -> feature maps on the latent grid ``[N, REF_CHANNELS, h, w]``."""
        return self.ref_proj(F.pixel_unshuffle(reference, self.down))

    def identity_embedding(self, frames: torch.Tensor) -> torch.Tensor:
        """Identity embedding of frames (the identity-token encoder applied to their reference features)."""
        return self.cond.identity(self.reference_features(frames))

    @torch.no_grad()
    def fit_latent_stats(self, frames: torch.Tensor, references: torch.Tensor,
                         pose: torch.Tensor | None = None) -> None:
        """Per-channel shift and one global scale so that latents have zero mean and unit variance."""
        mean = self._latent_mean(frames, self.base(references, frames.shape[0], pose))
        self.latent_shift.copy_(mean.mean(dim=(0, 2, 3)))
        self.latent_scale.fill_(1.0 / float((mean - self.latent_shift[None, :, None, None]).std()))

    # --------------------------------------------------------------------------------------------- UNet
    def unet_input(self, noisy: torch.Tensor, ref_feat: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        pose_maps = pose[:, :, None, None].expand(-1, -1, noisy.shape[-2], noisy.shape[-1])
        return torch.cat([noisy, ref_feat, pose_maps.to(noisy.dtype)], dim=1)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, ref_feat: torch.Tensor, audio_feats: torch.Tensor,
                pose: torch.Tensor, drop_audio: torch.Tensor | None = None) -> torch.Tensor:
        """Raw UNet output (the scheduler's ``prediction_type``) for a batch of single frames; ``ref_feat`` from
        :meth:`reference_features`; ``drop_audio`` (bool ``[B]``) replaces those rows' audio by the null tokens."""
        tokens = self.cond(audio_feats, pose, ref_feat, drop_audio)
        return self.unet(self.unet_input(noisy, ref_feat, pose), t, encoder_hidden_states=tokens).sample

    def to_x0_eps(self, noisy: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a model output to (x0, eps) predictions (Salimans & Ho 2022 for v)."""
        ac = self.scheduler.alphas_cumprod.to(noisy.device, noisy.dtype)[t]
        a, s = ac.sqrt()[:, None, None, None], (1 - ac).sqrt()[:, None, None, None]
        ptype = self.scheduler.config.prediction_type
        if ptype == "v_prediction":
            return a * noisy - s * out, a * out + s * noisy
        if ptype == "epsilon":
            return (noisy - s * out) / a, out
        return out, (noisy - a * out) / s

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, reference: torch.Tensor, audio_feats: torch.Tensor, pose: torch.Tensor, *, steps: int = 10,
               generator: torch.Generator | None = None, shared_noise: bool = True,
               guidance: float | None = None, temperature: float | None = None) -> torch.Tensor:
        """Generate frames ``[T, 3, H, W]`` in [-1, 1] for one clip with DDIM.

        ``reference`` is ``[3, H, W]``; ``audio_feats`` ``[T, A, M]``; ``pose`` ``[T, 4]``. With ``shared_noise``
        every frame starts from the same initial noise, which removes most sampling flicker. ``guidance``
        (default ``model.audio_guidance``) != 1 applies classifier-free guidance on the audio (Ho & Salimans 2022):
        ``out = out(null audio) + guidance * (out(audio) - out(null audio))``, same reference and pose.
        ``temperature`` (default ``model.sample_temperature``) scales the initial noise (1 = the model's sample).
        """
        guidance = self.mcfg.audio_guidance if guidance is None else guidance
        guided = guidance != 1.0
        if guided and self.cond.null_audio is None:
            raise ValueError("audio guidance needs null audio tokens: pre-train with model.audio_dropout > 0")
        n = audio_feats.shape[0]
        device = reference.device
        ddim = DDIMScheduler.from_config(self.scheduler.config, clip_sample=False, set_alpha_to_one=True)
        ddim.set_timesteps(steps, device=device)
        ref_feat = self.reference_features(reference[None]).expand(n, -1, -1, -1)
        shape = (1 if shared_noise else n, self.latent_channels, self.latent_size, self.latent_size)
        temperature = self.mcfg.sample_temperature if temperature is None else temperature
        x = torch.randn(shape, generator=generator, device="cpu").to(device).expand(n, -1, -1, -1).contiguous()
        if temperature != 1.0:
            x = x * temperature
        tokens, ref_in, pose_in = self.cond(audio_feats, pose, ref_feat), ref_feat, pose
        if guided:  # one batched UNet call per step: [conditional; null audio]
            null = self.cond(audio_feats, pose, ref_feat, torch.ones(n, dtype=torch.bool, device=device))
            tokens, ref_in, pose_in = torch.cat([tokens, null]), torch.cat([ref_feat, ref_feat]), torch.cat([pose, pose])
        for t in ddim.timesteps:
            x_in = torch.cat([x, x]) if guided else x
            tt = torch.full((x_in.shape[0],), int(t), device=device, dtype=torch.long)
            out = self.unet(self.unet_input(x_in, ref_in, pose_in), tt, encoder_hidden_states=tokens).sample
            if guided:
                cond, uncond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            x = ddim.step(out, t, x).prev_sample
        return self.decode(x, reference, pose)

    # ---------------------------------------------------------------------------------------- persistence
    def backbone_state(self) -> dict[str, Any]:
        """Base weights only (no LoRA): what `pftray pretrain` ships."""
        sd = {k: v for k, v in self.state_dict().items() if "lora_" not in k}
        return {"state_dict": sd, "model_config": asdict(self.mcfg), "resolution": self.resolution}

    def load_backbone(self, path: str | Path) -> None:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        sd = blob["state_dict"] if "state_dict" in blob else blob
        own = {k for k in self.state_dict() if "lora_" not in k}
        missing, unexpected = own - set(sd), set(sd) - own
        if missing or unexpected:
            raise ValueError(f"{path}: backbone does not match the model config "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        for k, v in sd.items():
            if self.state_dict()[k].shape != v.shape:
                raise ValueError(f"{path}: backbone tensor {k} has shape {tuple(v.shape)}, the config builds "
                                 f"{tuple(self.state_dict()[k].shape)}; use the model section it was trained with")
        self.load_state_dict(sd, strict=False)


def num_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def vae_loss(model: TalkingHeadModel, frames: torch.Tensor, references: torch.Tensor,
             kl_weight: float, pose: torch.Tensor | None = None,
             l1_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE + ``l1_weight`` * L1 reconstruction (of the residual to the reference) of the posterior mean, plus
    ``kl_weight`` * KL.

    The decoder is trained on the posterior *mean*: with the tiny KL weight we want (a sharp autoencoder whose
    latents the diffusion model learns), sampling the posterior only injects noise that slows learning several
    fold on a CPU budget; the KL term still keeps the latent scale bounded. Returns ``(loss, recon)``.
    """
    base = model.base(references, frames.shape[0], pose)
    target = model._residual(frames, base)
    post = model._posterior(frames, base)
    recon = model._vae_decode(post.mean, base)
    rec = F.mse_loss(recon, target)
    if l1_weight:
        # L1's constant-magnitude gradient drives small residuals to exactly zero: with the pose warp in place the
        # mouth is most of what is left, and a VAE trained with L1 learns to drop it (pretrain.vae_l1 = 0).
        rec = rec + l1_weight * F.l1_loss(recon, target)
    kl = post.kl().mean() / math.prod(frames.shape[1:])
    return rec + kl_weight * kl, recon
