"""The Trainer's settings (YAML `trainer:` section, `--set KEY=VALUE`,
BOOTHSTUDIO_TRAINER_<KEY>)."""

from __future__ import annotations

from pydantic import Field

from boothstudio.services.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    max_running: int = Field(1, ge=1, description="jobs trained at the same time")
    queue_size: int = Field(
        16, ge=1, description="jobs allowed to wait; more are answered RESOURCE_EXHAUSTED"
    )
    max_attempts: int = Field(
        3, ge=1, description="worker starts per job before a crashing job is marked FAILED"
    )
    worker_threads: int = Field(
        0, ge=0, description="torch threads of a training worker (0 = torch's default)"
    )
    max_instance_images: int = Field(32, ge=1, description="instance pictures per job")
    max_image_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="bytes of one instance picture"
    )
    max_upload_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="bytes of all pictures in one UploadImages stream (what it holds in memory)",
    )
    sample_steps: int = Field(20, ge=1, description="denoising steps of validation samples")
    lease_seconds: float = Field(
        30.0, ge=3, le=3600,
        description="a running job's lease: renewed every third of it; another replica takes "
        "the job over when its runner has not renewed it for this long",
    )
    replica_id: str = Field(
        "", description="this replica's name in job leases (empty = host name and port; keep it "
        "stable across restarts so a restarted replica takes its own jobs back at once)",
    )
    model_cache_bytes: int = Field(
        20 * 1024**3, ge=0,
        description="bytes of base models pulled from a remote artifact store kept on local disk",
    )
    ray_address: str = Field(
        "", description="a Ray cluster to train on (host:port of its head, or 'auto' for the "
        "cluster this host belongs to; needs boothstudio[ray]); empty = a local worker process "
        "per job",
        json_schema_extra={"env": "BOOTHSTUDIO_RAY_ADDRESS"},
    )
