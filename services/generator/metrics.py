"""Prometheus metrics of the Generator (default registry, served on /metrics by the runner)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "boothstudio_generator_requests",
    "Generate requests by outcome (succeeded, cancelled, failed, rejected, invalid).",
    ("outcome",),
)
QUEUE_DEPTH = Gauge("boothstudio_generator_queue_depth", "Jobs waiting in the queue.")
QUEUE_WAIT = Histogram(
    "boothstudio_generator_queue_wait_seconds",
    "Seconds a job waited in the queue before it started.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
IMAGES = Counter("boothstudio_generator_images", "Images generated and delivered.")
STEPS = Counter("boothstudio_generator_denoising_steps", "Denoising passes run (per batch).")
STEPS_PER_SECOND = Gauge(
    "boothstudio_generator_denoising_steps_per_second", "Denoising speed of the last batch."
)
GENERATION_SECONDS = Histogram(
    "boothstudio_generator_generation_seconds",
    "Seconds a batch took from start to its last image (model load included).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
BATCH_SIZE = Histogram(
    "boothstudio_generator_batch_size",
    "Images per micro-batch.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
BATCH_JOBS = Histogram(
    "boothstudio_generator_batch_jobs",
    "Requests per micro-batch.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16),
)
MODEL_LOAD_SECONDS = Histogram(
    "boothstudio_generator_model_load_seconds",
    "Seconds to load a pipeline (a model switch) into the cache.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
MODEL_CACHE = Gauge("boothstudio_generator_pipelines_cached", "Pipelines in the LRU cache.")
