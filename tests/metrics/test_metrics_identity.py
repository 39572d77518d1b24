import numpy as np
import pytest
import torch
from torch import nn

from pftray.metrics import (
    IdentityEmbedder,
    Missing,
    SynthIdentityEncoder,
    TorchScriptEmbedder,
    id_sim,
    train_synth_identity_encoder,
)

SIZE = 32


def _make_identity(rng: np.random.Generator) -> dict:
    """A synthetic 'identity': background, face and eye colours plus face-ellipse radii."""
    return {
        "bg": rng.uniform(0, 1, 3),
        "fg": rng.uniform(0, 1, 3),
        "eye": rng.uniform(0, 1, 3),
        "ry": rng.uniform(0.25, 0.45),
        "rx": rng.uniform(0.2, 0.4),
    }


def _render(ident: dict, rng: np.random.Generator, n: int) -> np.ndarray:
    """n uint8 frames [n, H, W, 3]: the face ellipse jitters in position, the mouth opens and closes."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.empty((n, SIZE, SIZE, 3))
    for t in range(n):
        cy, cx = 0.5 + rng.uniform(-0.06, 0.06, 2)
        img = np.broadcast_to(ident["bg"], (SIZE, SIZE, 3)).copy()
        img[((yy - cy) / ident["ry"]) ** 2 + ((xx - cx) / ident["rx"]) ** 2 <= 1] = ident["fg"]
        mouth_open = rng.uniform(0.01, 0.08)
        img[(np.abs(yy - (cy + 0.5 * ident["ry"])) < mouth_open) & (np.abs(xx - cx) < 0.4 * ident["rx"])] = (
            0.1
        )
        for side in (-1, 1):
            img[(yy - (cy - 0.3 * ident["ry"])) ** 2 + (xx - cx - side * 0.4 * ident["rx"]) ** 2 < 0.003] = (
                ident["eye"]
            )
        out[t] = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def _tensor(clip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    seen = [_make_identity(rng) for _ in range(8)]
    unseen = [_make_identity(rng) for _ in range(4)]
    clips = {f"id{i}": [_render(p, rng, 12) for _ in range(2)] for i, p in enumerate(seen)}
    encoder = train_synth_identity_encoder(clips, steps=100, seed=0, batch_size=32)
    return encoder, seen, unseen, np.random.default_rng(123)


def _similarities(encoder, idents, rng):
    held = [_tensor(_render(p, rng, 8)) for p in idents]  # fresh frames never seen in training
    refs = [_tensor(_render(p, rng, 8)) for p in idents]
    k = len(idents)
    return np.array([[id_sim(encoder, held[i], refs[j]) for j in range(k)] for i in range(k)])


def test_separates_held_out_frames_of_training_identities(trained):
    encoder, seen, _, rng = trained
    sims = _similarities(encoder, seen, rng)
    same, diff = np.diag(sims), sims[~np.eye(len(seen), dtype=bool)]
    assert same.min() > 0.95
    assert diff.mean() < 0.3
    assert same.min() > diff.max() + 0.2  # every same-identity pair beats every different-identity pair


def test_generalises_to_unseen_identities(trained):
    encoder, _, unseen, rng = trained
    sims = _similarities(encoder, unseen, rng)
    same, diff = np.diag(sims), sims[~np.eye(len(unseen), dtype=bool)]
    assert (sims.argmax(axis=1) == np.arange(len(unseen))).all()  # nearest reference is the right identity
    assert same.mean() - diff.mean() > 0.3


def test_save_load_round_trip_and_missing(trained, tmp_path):
    encoder, seen, _, rng = trained
    path = tmp_path / "synth_id.pt"
    encoder.save(path)
    loaded = SynthIdentityEncoder.load(path)
    frames = _tensor(_render(seen[0], rng, 4))
    assert torch.allclose(loaded.embed(frames), encoder.embed(frames))
    norms = loaded.embed(frames).norm(dim=1)
    assert torch.allclose(norms, torch.ones(4), atol=1e-6)
    missing = SynthIdentityEncoder.load(tmp_path / "absent.pt")
    assert isinstance(missing, Missing) and "absent.pt" in missing.reason
    assert id_sim(missing, frames, frames) is missing
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a file written by"):
        SynthIdentityEncoder.load(tmp_path / "bad.pt")


def test_training_is_deterministic_and_validates_input():
    rng = np.random.default_rng(5)
    clips = {n: [_render(_make_identity(rng), rng, 4)] for n in ("a", "b")}
    e1 = train_synth_identity_encoder(clips, steps=3, seed=7, batch_size=8)
    e2 = train_synth_identity_encoder(clips, steps=3, seed=7, batch_size=8)
    assert all(torch.equal(p, q) for p, q in zip(e1.state_dict().values(), e2.state_dict().values()))
    with pytest.raises(ValueError, match="at least 2 identities"):
        train_synth_identity_encoder({"a": clips["a"]}, steps=1, seed=0)
    with pytest.raises(ValueError, match=r"clips_by_identity\['b'\]\[0\] must be uint8"):
        train_synth_identity_encoder(
            {"a": clips["a"], "b": [clips["b"][0].astype(np.float32)]}, steps=1, seed=0
        )


class _MeanColour(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.shape[2] * torch.ones(x.shape[0], 1)], dim=1)


def test_torchscript_embedder(tmp_path):
    path = tmp_path / "embedder.pt"
    torch.jit.script(_MeanColour()).save(str(path))
    emb = TorchScriptEmbedder(path, input_size=(20, 20))
    assert isinstance(emb, IdentityEmbedder)
    frames = torch.full((2, 3, 8, 8), 0.75)
    out = emb.embed(frames)
    # constant 0.75 -> standardised (0.75 - 0.5) / 0.5 = 0.5; the module saw 20x20 inputs
    assert torch.allclose(out, torch.tensor([[0.5, 0.5, 0.5, 20.0]] * 2))
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(3, 3, 16, 16, generator=g)
    assert id_sim(emb, clip, clip) == pytest.approx(1.0, abs=1e-3)
    absent = TorchScriptEmbedder(tmp_path / "nope.pt")
    value = id_sim(absent, clip, clip)
    assert isinstance(value, Missing) and "nope.pt" in value.reason
