"""Identity similarity: cosine similarity of face embeddings of generated frames and reference frames.

Two embedders share the :class:`IdentityEmbedder` protocol:

* :class:`TorchScriptEmbedder` — a user's pretrained face recogniser (FaceNet / ArcFace exported to
  TorchScript, e.g. from facenet-pytorch or insightface); metric name ``id_sim``. Absent file -> ``Missing``.
* :class:`SynthIdentityEncoder` — a small CNN trained on the synthetic benchmark's identities with
  :func:`train_synth_identity_encoder`; metric name ``id_sim_synth``. It is a *different* metric from
  ``id_sim`` (not a stand-in for a face recogniser) and is reported under its own name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pftray.metrics.base import Missing, check_frames


@runtime_checkable
class IdentityEmbedder(Protocol):
    """Maps frames ``[N, 3, H, W]`` in [0, 1] to embeddings ``[N, D]`` (or ``Missing`` when unavailable)."""

    def embed(self, frames: torch.Tensor) -> torch.Tensor | Missing: ...


def id_sim(
    encoder: IdentityEmbedder | Missing, pred_frames: torch.Tensor, ref_frames: torch.Tensor
) -> float | Missing:
    """Identity similarity: mean over generated frames of cos(e(pred_i), ē_ref), in [-1, 1].

    e(.) is the encoder's embedding, L2-normalised here; ē_ref = normalise(mean_j e(ref_j)) is the identity
    prototype of the reference frames (any number, e.g. the identity's reference images or the ground-truth
    clip). Returns ``Missing`` when the encoder is missing.
    """
    if isinstance(encoder, Missing):
        return encoder
    pred_frames = check_frames(pred_frames, "pred_frames")
    ref_frames = check_frames(ref_frames, "ref_frames")
    e_pred = encoder.embed(pred_frames)
    if isinstance(e_pred, Missing):
        return e_pred
    e_ref = encoder.embed(ref_frames)
    assert not isinstance(e_ref, Missing)
    proto = F.normalize(F.normalize(e_ref.double(), dim=1).mean(dim=0), dim=0)
    return float((F.normalize(e_pred.double(), dim=1) @ proto).mean())


class TorchScriptEmbedder:
    """A pretrained face-recognition network stored as a TorchScript file.

    Frames are resized to ``input_size`` (bilinear, antialiased) and standardised as
    ``(x - mean) / std`` with x in [0, 1]; the defaults (0.5, 0.5) give the [-1, 1] input that facenet-pytorch
    (``fixed_image_standardization`` ≈ (255x − 127.5)/128) and insightface ArcFace ((255x − 127.5)/127.5)
    expect. FaceNet (InceptionResnetV1) uses 160x160, ArcFace 112x112. Frames should be aligned face crops.
    A missing file makes :meth:`embed` return ``Missing``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input_size: tuple[int, int] = (160, 160),
        mean: float = 0.5,
        std: float = 0.5,
        device: str | torch.device = "cpu",
    ):
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (height, width) with positive entries, got {input_size}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.path = Path(path)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean, self.std = mean, std
        self.device = torch.device(device)
        self._module: torch.jit.ScriptModule | None = None
        self.missing = (
            None
            if self.path.is_file()
            else Missing(
                f"face embedder TorchScript file not found at {self.path} (export FaceNet/ArcFace weights)"
            )
        )

    @torch.no_grad()
    def embed(self, frames: torch.Tensor) -> torch.Tensor | Missing:
        if self.missing is not None:
            return self.missing
        frames = check_frames(frames, "frames")
        if self._module is None:
            self._module = torch.jit.load(str(self.path), map_location=self.device).eval()
        x = F.interpolate(frames, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        out = self._module(((x - self.mean) / self.std).to(self.device))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != frames.shape[0]:
            raise ValueError(
                f"{self.path}: the module must return embeddings [N, D], got {getattr(out, 'shape', out)}"
            )
        return out.float().cpu()


class SynthIdentityEncoder(nn.Module):
    """Small CNN identity encoder for the synthetic benchmark: 4 stride-2 conv blocks + linear -> L2-normalised.

    Input frames are resized to ``input_size`` x ``input_size``. Output: ``embed_dim``-d unit vectors.
    """

    def __init__(self, *, embed_dim: int = 64, input_size: int = 32, width: int = 32):
        super().__init__()
        if embed_dim < 2 or input_size < 16 or width < 4:
            raise ValueError(
                f"need embed_dim >= 2, input_size >= 16, width >= 4; got {embed_dim}, {input_size}, {width}"
            )
        self.config = {"embed_dim": embed_dim, "input_size": input_size, "width": width}
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(4, c_out), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], embed_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        size = self.config["input_size"]
        x = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        h = self.features(2 * x - 1).mean(dim=(2, 3))
        return F.normalize(self.head(h), dim=1)

    @torch.no_grad()
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``[N, embed_dim]`` of frames in [0, 1] (eval mode, no grad)."""
        frames = check_frames(frames, "frames")
        was_training = self.training
        self.eval()
        out = self(frames.to(next(self.parameters()).device)).cpu()
        self.train(was_training)
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save config + weights (a plain dict, loadable with ``weights_only=True``)."""
        torch.save(
            {
                "format": "pftray.SynthIdentityEncoder/1",
                "config": self.config,
                "state_dict": self.state_dict(),
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SynthIdentityEncoder | Missing:
        """Load an encoder saved by :meth:`save`; ``Missing`` if the file does not exist."""
        path = Path(path)
        if not path.is_file():
            return Missing(
                f"synthetic identity encoder not found at {path} (train it with train_synth_identity_encoder)"
            )
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != "pftray.SynthIdentityEncoder/1":
            raise ValueError(f"{path}: not a file written by SynthIdentityEncoder.save")
        model = cls(**blob["config"])
        model.load_state_dict(blob["state_dict"])
        return model.eval()


def _clips_to_tensor(clip: np.ndarray, identity: str, index: int) -> torch.Tensor:
    arr = np.asarray(clip)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"clips_by_identity[{identity!r}][{index}] must be uint8 [T, H, W, 3], got {arr.dtype} {arr.shape}"
        )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild appearance noise so the encoder keys on identity, not on exact pixels: random translation by up to
    1/8 of the frame (replicate-padded), brightness x[0.9, 1.1], and Gaussian noise (sigma 0.02)."""
    n, _, h, w = x.shape
    pad_y, pad_x = max(1, h // 8), max(1, w // 8)
    padded = F.pad(x, (pad_x, pad_x, pad_y, pad_y), mode="replicate")
    dy = torch.randint(0, 2 * pad_y + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad_x + 1, (n,), generator=generator)
    shifted = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    gain = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=generator)
    noise = 0.02 * torch.randn(shifted.shape, generator=generator)
    return (shifted * gain + noise).clamp(0.0, 1.0)


def train_synth_identity_encoder(
    clips_by_identity: Mapping[str, Sequence[np.ndarray]],
    *,
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    embed_dim: int = 64,
    input_size: int = 32,
    scale: float = 16.0,
    margin: float = 0.2,
) -> SynthIdentityEncoder:
    """Train a :class:`SynthIdentityEncoder` to tell the synthetic identities apart.

    Objective: large-margin cosine softmax over identities (CosFace, Wang et al. 2018, eq. 4):
    L = −log( e^{s(cos θ_y − m)} / (e^{s(cos θ_y − m)} + Σ_{j≠y} e^{s cos θ_j}) ) with cos θ_j the cosine of
    the normalised embedding to the normalised class weight j. The margin makes same-identity embeddings
    cluster tightly on the sphere, which is what cosine identity similarity needs and what transfers to
    identities not seen in training. Frames are sampled uniformly over all clips of an identity
    (identities balanced per batch), with the mild augmentation of :func:`_augment`. Deterministic for a
    given ``seed`` on CPU.

    ``clips_by_identity`` maps identity name -> list of uint8 clips ``[T, H, W, 3]``; needs >= 2 identities.
    """
    if len(clips_by_identity) < 2:
        raise ValueError(f"clips_by_identity needs at least 2 identities, got {len(clips_by_identity)}")
    if steps < 1 or batch_size < 2:
        raise ValueError(
            f"steps must be >= 1 and batch_size >= 2, got steps={steps}, batch_size={batch_size}"
        )
    names = sorted(clips_by_identity)
    frames_per_id: list[torch.Tensor] = []
    for name in names:
        clips = clips_by_identity[name]
        if len(clips) == 0:
            raise ValueError(f"clips_by_identity[{name!r}] is empty")
        frames_per_id.append(torch.cat([_clips_to_tensor(c, name, i) for i, c in enumerate(clips)]))
    shapes = {tuple(f.shape[1:]) for f in frames_per_id}
    if len(shapes) != 1:
        raise ValueError(f"all clips must share one frame size, got {sorted(shapes)}")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SynthIdentityEncoder(embed_dim=embed_dim, input_size=input_size)
    class_weights = nn.Parameter(F.normalize(torch.randn(len(names), embed_dim, generator=gen), dim=1))
    opt = torch.optim.AdamW([*model.parameters(), class_weights], lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for _ in range(steps):
        labels = torch.randint(0, len(names), (batch_size,), generator=gen)
        batch = torch.stack(
            [
                frames_per_id[int(k)][
                    int(torch.randint(0, frames_per_id[int(k)].shape[0], (1,), generator=gen))
                ]
                for k in labels
            ]
        )
        emb = model(_augment(batch, gen))
        cos = emb @ F.normalize(class_weights, dim=1).T
        logits = scale * (cos - margin * F.one_hot(labels, len(names)))
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()
