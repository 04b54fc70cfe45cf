"""Prometheus metrics of the Generator (default registry, served on /metrics by the runner)."""

from __future__ import annotations

import resource
import sys
import threading
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Summary

from boothstudio.services.diffusion.samplers import SAMPLERS

REQUESTS = Counter(
    "boothstudio_generator_requests",
    "Generate requests by outcome (succeeded, cancelled, failed, rejected, invalid).",
    ("outcome",),
)
QUEUE_DEPTH = Gauge("boothstudio_generator_queue_depth", "Jobs waiting in the queue.")
QUEUE_DEPTH_BY_PRIORITY = Gauge(
    "boothstudio_generator_queue_depth_by_priority",
    "Jobs waiting in the queue, by priority (interactive, batch).",
    ("priority",),
)
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

# ------------------------------------------------------------------ by model and sampler
# Labels are bounded: samplers come from the fixed table; the first MAX_MODEL_LABELS distinct
# models keep their own label and later ones share "other" (a Generator can see thousands of
# fine-tuned models, and every label value is a series kept forever).

MAX_MODEL_LABELS = 20
OTHER = "other"
MODEL_IMAGES = Counter(
    "boothstudio_generator_model_images",
    "Images generated and delivered, by model and sampler (models past the first "
    f"{MAX_MODEL_LABELS} count as 'other').",
    ("model_id", "sampler"),
)
MODEL_GENERATION_SECONDS = Summary(
    "boothstudio_generator_model_generation_seconds",
    "Seconds of batches by model and sampler, start to last image (sum/count = mean).",
    ("model_id", "sampler"),
)
_model_labels: set[str] = set()
_labels_lock = threading.Lock()


def model_label(model_id: str) -> str:
    """`model_id` while fewer than MAX_MODEL_LABELS models have a label, else "other"."""
    with _labels_lock:
        if model_id in _model_labels:
            return model_id
        if len(_model_labels) < MAX_MODEL_LABELS:
            _model_labels.add(model_id)
            return model_id
    return OTHER


def sampler_label(sampler: str) -> str:
    return sampler if sampler in SAMPLERS else OTHER


def image_generated(model_id: str, sampler: str) -> None:
    IMAGES.inc()
    MODEL_IMAGES.labels(model_label(model_id), sampler_label(sampler)).inc()


def batch_ran(model_id: str, sampler: str, seconds: float) -> None:
    GENERATION_SECONDS.observe(seconds)
    MODEL_GENERATION_SECONDS.labels(model_label(model_id), sampler_label(sampler)).observe(seconds)


# ------------------------------------------------------------------ memory
# process_resident_memory_bytes (now) comes from prometheus_client's process collector; the
# peak tells what a request cost after it has been freed.


def _peak_resident_bytes() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # KiB on Linux


def _cuda() -> Any:
    """torch.cuda when torch is loaded and CUDA initialised here (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def _device_allocated_bytes() -> float:
    cuda = _cuda()
    return float(cuda.memory_allocated()) if cuda is not None else 0.0


def _device_peak_bytes() -> float:
    cuda = _cuda()
    return float(cuda.max_memory_allocated()) if cuda is not None else 0.0


PEAK_RESIDENT_MEMORY = Gauge(
    "boothstudio_generator_peak_resident_memory_bytes",
    "Largest resident memory of the process so far (see process_resident_memory_bytes).",
)
PEAK_RESIDENT_MEMORY.set_function(_peak_resident_bytes)
DEVICE_MEMORY = Gauge(
    "boothstudio_generator_device_memory_allocated_bytes",
    "Accelerator memory held by tensors now (CUDA; 0 on CPU).",
)
DEVICE_MEMORY.set_function(_device_allocated_bytes)
DEVICE_MEMORY_PEAK = Gauge(
    "boothstudio_generator_device_memory_peak_bytes",
    "Most accelerator memory held by tensors so far (CUDA max_memory_allocated; 0 on CPU).",
)
DEVICE_MEMORY_PEAK.set_function(_device_peak_bytes)
