"""The Generator's settings (YAML `generator:` section, `--set KEY=VALUE`,
BOOTHSTUDIO_GENERATOR_<KEY>)."""

from __future__ import annotations

from pydantic import Field

from boothstudio.services.diffusion.backends import RemoteBackendSettings
from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_ID


class GeneratorSettings(RemoteBackendSettings):
    queue_size: int = Field(
        16, ge=1, description="jobs allowed to wait; more are answered RESOURCE_EXHAUSTED"
    )
    max_queued_per_key: int = Field(
        8, ge=0, description="jobs one caller (API key; with auth off, client address) may have "
        "waiting; more are answered RESOURCE_EXHAUSTED (QUEUE_LIMIT_PER_KEY); 0 = no limit",
    )
    max_batch_images: int = Field(8, ge=1, description="images per micro-batch")
    batching: bool = Field(True, description="micro-batch compatible queued requests")
    batch_window: float = Field(
        0.0, ge=0, le=10, description="seconds to wait for companions before a batch starts"
    )
    preview_interval: int = Field(
        5, ge=0, description="default steps between previews (0 = none)"
    )
    device: str = Field("cpu", description="torch device of the local backend")
    torch_threads: int = Field(
        0, ge=0, description="intra-op threads for torch (0 = torch's choice)"
    )
    pipeline_cache: int = Field(2, ge=1, description="loaded pipelines kept in the LRU cache")
    default_model: str = Field(
        EMBEDDED_MODEL_ID, min_length=1, description="model used when a request names none"
    )
    preload: bool = Field(True, description="load the default model at start, in the background")
    keepalive_seconds: float = Field(
        10.0, gt=0, description="send an empty event when a stream was quiet this long"
    )
    model_cache_bytes: int = Field(
        20 * 1024**3, ge=0,
        description="bytes of models pulled from a remote artifact store kept on local disk "
        "(least recently used evicted; a model in use is never evicted)",
    )
    advertise_address: str = Field(
        "", description="host:port at which the other replicas reach this one (CancelGeneration "
        "routing); empty = host:port, with this machine's name when host is 0.0.0.0",
    )
