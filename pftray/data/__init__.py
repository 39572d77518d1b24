"""pftray data layer: synthetic talking heads, client partitions, real-video ingestion, batches and shards."""

from pftray.data.audio import (
    frame_energy,
    log_mel_features,
    log_mel_spectrogram,
    mel_filterbank,
    power_spectrogram,
)
from pftray.data.dataset import clips_to_batch, load_client_shard, sample_batch, save_client_shard
from pftray.data.ingest import (
    IngestReport,
    PreparedClient,
    SkippedFile,
    load_prepared_dataset,
    prepare_dataset,
)
from pftray.data.partition import (
    make_client,
    make_public_clips,
    make_synthetic_federation,
    num_train_clips,
    public_reference,
    unreliable_assignment,
)
from pftray.data.synthetic import (
    IdentityParams,
    corrupt_clip,
    estimate_mouth_openness,
    reference_frame,
    render_clip,
    render_frames,
    sample_identity,
)
from pftray.data.types import (
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    UNRELIABLE_KINDS,
    VIDEO_FPS,
    ClientData,
    Clip,
    DataError,
)

__all__ = [
    "SAMPLE_RATE",
    "SAMPLES_PER_FRAME",
    "UNRELIABLE_KINDS",
    "VIDEO_FPS",
    "ClientData",
    "Clip",
    "DataError",
    "IdentityParams",
    "IngestReport",
    "PreparedClient",
    "SkippedFile",
    "clips_to_batch",
    "corrupt_clip",
    "estimate_mouth_openness",
    "frame_energy",
    "load_client_shard",
    "load_prepared_dataset",
    "log_mel_features",
    "log_mel_spectrogram",
    "make_client",
    "make_public_clips",
    "make_synthetic_federation",
    "mel_filterbank",
    "num_train_clips",
    "power_spectrogram",
    "prepare_dataset",
    "public_reference",
    "reference_frame",
    "render_clip",
    "render_frames",
    "sample_batch",
    "sample_identity",
    "save_client_shard",
    "unreliable_assignment",
]
