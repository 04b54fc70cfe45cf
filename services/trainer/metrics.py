"""The Trainer's domain metrics, served by the service process's /metrics.

Training happens in worker processes, which Prometheus never scrapes: they write what happened
to the job store and the service reads it when it is scraped. Two kinds of source:

- state the store already holds is read as it is at scrape time (jobs by state, the latest
  losses of running jobs), so a gauge can never drift from what GetTrainingJob says;
- counts and durations are observations that workers append (`JobStore.observe`); at each
  scrape the collector reads those past its cursor into ordinary counters and histograms, so
  rate() and histogram_quantile() work as usual. The cursor starts at the newest observation
  when the service starts (workers only run while their service runs), so the counters are the
  usual per-process ones that restart at zero.

Worker restarts are decided by the service itself and counted in-process.

Names follow boothstudio_trainer_<what>_<unit> with base units; counters end in _total.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from boothstudio.services.trainer.mapping import state_name
from boothstudio.services.trainer.store import ACTIVE, JobStore
from boothstudio.v1 import trainer_pb2

JobState = trainer_pb2.TrainingJobState
PREFIX = "boothstudio_trainer"
# observation names workers write (JobStore.observe) -> what they feed
STEP_SECONDS = "step_seconds"
CHECKPOINT_SECONDS = "checkpoint_seconds"
CLASS_IMAGES = "class_images"  # label: generated | cached; value: how many
PEAK_MEMORY = "peak_memory_bytes"  # label: cuda | cpu
KEEP_OBSERVATIONS_SECONDS = 24 * 3600
PRUNE_EVERY_SECONDS = 3600.0


class TrainerMetrics(Collector):
    """A collector over the job store; register it once per service process."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.cursor = store.last_observation_id()
        self.pruned_at = float("-inf")
        self.steps = Counter(f"{PREFIX}_steps", "Optimiser steps trained.", registry=None)
        self.step_seconds = Histogram(
            f"{PREFIX}_step_seconds", "Wall time of one optimiser step.", registry=None,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.checkpoint_seconds = Histogram(
            f"{PREFIX}_checkpoint_seconds",
            "Time to write one checkpoint (full training state plus its weights export).",
            registry=None, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
        self.class_images = Counter(
            f"{PREFIX}_class_images", "Class (prior) images a job needed, by source: generated "
            "now or taken from the cache.", ["source"], registry=None)
        self.peak_memory = Gauge(
            f"{PREFIX}_peak_memory_bytes", "Peak memory of the latest training run, by device "
            "(cuda: GPU memory allocated; cpu: the worker's resident set).", ["device"],
            registry=None)
        self.restarts = Counter(
            f"{PREFIX}_worker_restarts", "Training workers started again for a job: after a "
            "worker crash, for jobs the service found running when it started, or for jobs "
            "taken over from a replica whose lease expired.", ["reason"], registry=None)
        for source in ("generated", "cached"):
            self.class_images.labels(source)
        for reason in ("crash", "service_restart", "takeover"):
            self.restarts.labels(reason)

    def register(self, registry: CollectorRegistry = REGISTRY) -> None:
        registry.register(self)

    def describe(self) -> list[Any]:
        return []  # no store read at registration; names are unique to this module

    def follow(self) -> None:
        """Fold observations newer than the cursor into the counters and histograms."""
        with self.lock:
            while True:
                rows = self.store.observations_after(self.cursor)
                for oid, name, label, value in rows:
                    self.cursor = oid
                    if name == STEP_SECONDS:
                        self.steps.inc()
                        self.step_seconds.observe(value)
                    elif name == CHECKPOINT_SECONDS:
                        self.checkpoint_seconds.observe(value)
                    elif name == CLASS_IMAGES and label in ("generated", "cached"):
                        self.class_images.labels(label).inc(value)
                    elif name == PEAK_MEMORY and label:
                        self.peak_memory.labels(label).set(value)
                if len(rows) < 10_000:
                    return

    def prune(self) -> None:
        self.store.prune_observations(time.time() - KEEP_OBSERVATIONS_SECONDS)
        self.pruned_at = time.monotonic()

    def collect(self) -> Iterator[Any]:
        self.follow()
        # workers append a row per step for as long as the service runs: keep the table to a
        # day's worth, checked at most once an hour (scrapes come every few seconds)
        if time.monotonic() - self.pruned_at > PRUNE_EVERY_SECONDS:
            self.prune()
        counts = self.store.count_by_state()
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Training jobs by state.", labels=["state"])
        for state in JobState.values():
            if state != JobState.TRAINING_JOB_STATE_UNSPECIFIED:
                jobs.add_metric([state_name(state)], counts.get(state, 0))
        yield jobs
        loss = GaugeMetricFamily(
            f"{PREFIX}_loss", "Latest training loss of each active job (total, instance, "
            "prior).", labels=["job_id", "kind"])
        for job in self.store.list(states=ACTIVE):
            m = job.last_metrics
            if m is None:
                continue
            loss.add_metric([job.id, "total"], m.loss)
            loss.add_metric([job.id, "instance"], m.instance_loss)
            if m.HasField("prior_loss"):
                loss.add_metric([job.id, "prior"], m.prior_loss)
        yield loss
        for metric in (self.steps, self.step_seconds, self.checkpoint_seconds,
                       self.class_images, self.peak_memory, self.restarts):
            yield from metric.collect()


__all__ = ["CHECKPOINT_SECONDS", "CLASS_IMAGES", "PEAK_MEMORY", "STEP_SECONDS", "TrainerMetrics"]
