"""One training job in its own process.

    python -m boothstudio.services.trainer.worker --service-dir D --job-id J [--catalog HOST:PORT]


Started by the trainer service; a crash here (segfault, OOM kill, exception) never takes the
service down. The worker dies with its parent (PR_SET_PDEATHSIG plus a parent watch), so a
killed service leaves no orphan training; the restarted service resumes the job from its last
checkpoint. Under DDP, Lightning re-runs this module for ranks > 0 (LOCAL_RANK set): those only
train and never write job state. `run_worker` (one rank of a job) is also what each Ray Train
worker runs when the service trains on Ray (ray_engine.py).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boothstudio.services.trainer.store import ACTIVE, JobStore
from boothstudio.shared.artifact_store import (
    ArtifactCorrupt,
    ArtifactMissing,
    ArtifactStore,
    open_artifact_store,
)
from boothstudio.shared.config import ServiceConfig
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, trainer_pb2

if TYPE_CHECKING:
    from boothstudio.services.diffusion.model_cache import ModelCache
    from boothstudio.services.trainer.train import JobResult

JobState = trainer_pb2.TrainingJobState
log = logging.getLogger("boothstudio.trainer.worker")
STOP_FILE = "STOP"
#: the service's database_url, set by the supervisor when it starts a worker (empty: the
#: SQLite file in --service-dir)
WORKER_DATABASE_URL_ENV = "BOOTHSTUDIO_TRAINER_WORKER_DATABASE_URL"
#: the service's artifact store (storage_url, storage_options as JSON, data_dir), likewise
WORKER_STORAGE_ENV = "BOOTHSTUDIO_TRAINER_WORKER_STORAGE"


def worker_storage_env(config: ServiceConfig) -> dict[str, str]:
    """What a worker needs to open the same artifact store as its service, and the size of
    its model cache."""
    from boothstudio.services.settings import load_settings
    from boothstudio.services.trainer.settings import TrainerSettings

    return {WORKER_STORAGE_ENV: json.dumps({
        "url": config.storage_url, "options": config.storage_options,
        "data_dir": str(Path(config.data_dir).resolve()),
        "model_cache_bytes": load_settings(TrainerSettings, config).model_cache_bytes})}


def open_worker_store() -> ArtifactStore:
    """The service's artifact store, from the supervisor's environment (worker_storage_env)."""
    given = json.loads(os.environ.get(WORKER_STORAGE_ENV) or "{}")
    return open_artifact_store(given.get("url", ""), Path(given.get("data_dir", "data")),
                               given.get("options") or {}, check=False)


def open_worker_model_cache(store: ArtifactStore, service_dir: Path) -> ModelCache:
    """The service's cache of base models pulled from a remote store (shared by its workers)."""
    from boothstudio.services.diffusion.model_cache import CACHE_DIR_NAME, ModelCache
    from boothstudio.services.trainer.settings import TrainerSettings

    given = json.loads(os.environ.get(WORKER_STORAGE_ENV) or "{}")
    max_bytes = given.get("model_cache_bytes",
                          TrainerSettings.model_fields["model_cache_bytes"].default)
    return ModelCache(store, service_dir / CACHE_DIR_NAME, int(max_bytes))


def die_with_parent() -> None:
    parent = os.getppid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


# The states a worker may move a job into, each from the states it may come from: a change the
# service made meanwhile (CANCELLING, or CANCELLED by a forced delete) is never overwritten.
ALLOWED_FROM = {
    JobState.TRAINING_JOB_STATE_PREPARING: {JobState.TRAINING_JOB_STATE_QUEUED,
                                            JobState.TRAINING_JOB_STATE_PREPARING},
    JobState.TRAINING_JOB_STATE_RUNNING: {JobState.TRAINING_JOB_STATE_PREPARING,
                                          JobState.TRAINING_JOB_STATE_RUNNING},
    JobState.TRAINING_JOB_STATE_EXPORTING: {JobState.TRAINING_JOB_STATE_PREPARING,
                                            JobState.TRAINING_JOB_STATE_RUNNING},
}


class StoreReporter:
    """Job progress into the job store (state, events, checkpoints, observations)."""

    allowed_from = ALLOWED_FROM

    def __init__(self, store: JobStore, job_id: str, job_dir: Path) -> None:
        self.store = store
        self.job_id = job_id
        self.job_dir = job_dir
        self.last_class_event = 0.0
        self.pending: list[tuple[str, str, float]] = []

    def _current(self) -> int:
        job = self.store.get(self.job_id)
        return job.state if job else JobState.TRAINING_JOB_STATE_UNSPECIFIED

    def state(self, state: int, reason: str = "", message: str = "") -> bool:
        """Move the job on; False when the service changed it first (a cancel is pending)."""
        self.flush()
        current = self._current()
        if current == state and not reason:
            return True
        return self.store.set_state(self.job_id, state, reason, message,
                                    expect=self.allowed_from[state]) is not None

    def metrics(self, m: trainer_pb2.TrainingMetrics) -> None:
        self.store.update(self.job_id, step=m.step, total_steps=m.total_steps, last_metrics=m)
        self.store.event(self.job_id, metrics=m)
        self.flush()

    def observe(self, name: str, value: float, label: str = "") -> None:
        self.pending.append((name, label, value))  # written with the next metrics event

    def flush(self) -> None:
        if self.pending:
            items, self.pending = self.pending, []
            self.store.observe(self.job_id, items)

    def sample(self, s: trainer_pb2.TrainingSample) -> None:
        self.store.event(self.job_id, sample=s)

    def checkpoint(self, c: trainer_pb2.Checkpoint,
                   removed: list[trainer_pb2.Checkpoint]) -> None:
        self.store.add_checkpoint(self.job_id, c)
        for r in removed:
            self.store.remove_checkpoint(self.job_id, r.checkpoint_id, r.kind)
        self.store.event(self.job_id, checkpoint_saved=trainer_pb2.CheckpointSaved(checkpoint=c))

    def class_images(self, ready: int, total: int, cached: int) -> None:
        now = time.monotonic()
        if ready in (0, total) or now - self.last_class_event > 0.5:
            self.last_class_event = now
            self.store.event(self.job_id, class_images=trainer_pb2.ClassImagesProgress(
                ready=ready, total=total, cached=cached))

    def warning(self, reason: str, message: str, field: str = "") -> None:
        self.store.add_warning(self.job_id, reason, message, field)

    def stop_requested(self) -> str:
        try:
            return (self.job_dir / STOP_FILE).read_text().strip() or "cancel"
        except FileNotFoundError:
            return ""

    def cancel_pending(self) -> bool:
        """Whether the service acknowledged a cancel (the job is CANCELLING)."""
        return self._current() == JobState.TRAINING_JOB_STATE_CANCELLING


class RegistrationCancelled(Exception):
    """A cancel was acknowledged while the Catalog was being retried."""


def register(job_id: str, store: JobStore, outputs: dict[str, str], catalog: str,
             api_key: str, attempts: int = 5,
             should_stop: Callable[[], bool] = lambda: False) -> str:
    """Register the output in Catalog (idempotent: model id derived from the job id)."""
    import grpc

    from boothstudio.shared.channels import sync_channel
    from boothstudio.shared.errors import decode_rpc_error

    job = store.get(job_id)
    assert job is not None
    cfg = job.config
    lora = "lora" in outputs
    # one model per job and length (a resumed, extended job registers a new one)
    model_id = f"{'lora' if lora else 'ft'}-{job_id}-{cfg.max_train_steps}".lower()
    model_id = model_id.replace("_", "-")[:128]
    name = cfg.output_model_name or f"{job.display_name} ({job.trigger_phrase})"
    req = catalog_pb2.ImportModelRequest(
        model_id=model_id, display_name=name,
        kind=catalog_pb2.MODEL_KIND_LORA if lora else catalog_pb2.MODEL_KIND_FINE_TUNED,
        origin=catalog_pb2.ModelOrigin(base_model_id=cfg.base_model_id, training_job_id=job_id),
        trigger_phrase=job.trigger_phrase, copy_files=True,  # the model outlives the job folder
        description=f"DreamBooth {'LoRA' if lora else 'fine-tune'} of {cfg.base_model_id} on "
                    f"{job.instance_image_count} images, {cfg.max_train_steps} steps")
    if lora:
        req.single_file_path = outputs["lora"]
        # what the LoRA draws: the job's last validation sample becomes its preview
        last = store.last_event_of_kind(job_id, "sample")
        if last is not None and last.sample.png:
            req.preview = last.sample.png
    else:
        req.diffusers_path = outputs["diffusers"]
    delay = 0.5
    for attempt in range(attempts):
        with sync_channel(catalog, api_key=api_key or None) as ch:
            stub = catalog_pb2_grpc.CatalogServiceStub(ch)
            try:
                return str(stub.ImportModel(req, timeout=60).model.id)
            except grpc.RpcError as err:
                code = err.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    got = stub.GetModel(catalog_pb2.GetModelRequest(model_id=model_id),
                                        timeout=10).model
                    if got.origin.training_job_id == job_id:
                        return str(got.id)
                    raise
                if code != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                    raise RuntimeError(f"Catalog refused the model: "
                                       f"{decode_rpc_error(err).message}") from err
        if should_stop():
            raise RegistrationCancelled
        time.sleep(delay)
        delay *= 2
    raise RuntimeError("Catalog unavailable")


def unregister(model_id: str, catalog: str, api_key: str) -> str:
    """Remove a model this job registered after all; "" or why it could not be removed."""
    import grpc

    from boothstudio.shared.channels import sync_channel

    with sync_channel(catalog, api_key=api_key or None) as ch:
        try:
            catalog_pb2_grpc.CatalogServiceStub(ch).DeleteModel(
                catalog_pb2.DeleteModelRequest(model_id=model_id, delete_files=True), timeout=60)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
    return ""


def finish(store: JobStore, job_id: str, result: JobResult, catalog: str,
           reporter: StoreReporter) -> int:
    """A job's last states after training: cancelled, re-queued (drain), or exported and
    registered. Every change is a compare-and-set, so a cancel the service acknowledged
    meanwhile ends the job CANCELLED (resumable) instead of being overwritten."""
    cancelled = {JobState.TRAINING_JOB_STATE_CANCELLING}
    job_dir = reporter.job_dir
    if result.outcome == "stopped":
        (job_dir / STOP_FILE).unlink(missing_ok=True)
        if result.stop_reason == "drain" and store.set_state(
                job_id, JobState.TRAINING_JOB_STATE_QUEUED, "INTERRUPTED",
                f"service shutting down; resumes from step {result.step}",
                expect={JobState.TRAINING_JOB_STATE_PREPARING, JobState.TRAINING_JOB_STATE_RUNNING},
                step=result.step) is not None:
            return 0
        store.set_state(job_id, JobState.TRAINING_JOB_STATE_CANCELLED, "CANCELLED",
                        f"cancelled at step {result.step}; resumable", expect=ACTIVE,
                        step=result.step)
        return 0
    api_key = os.environ.get("BOOTHSTUDIO_SERVICE_API_KEY", "")
    try:
        if reporter.cancel_pending():  # acknowledged during the export itself
            raise RegistrationCancelled
        model_id = register(job_id, store, result.outputs, catalog, api_key,
                            should_stop=reporter.cancel_pending)
    except RegistrationCancelled:
        model_id = ""
    except Exception as exc:
        log.exception("registration failed")
        if store.set_state(job_id, JobState.TRAINING_JOB_STATE_FAILED, "REGISTRATION_FAILED",
                           f"model saved in {job_dir / 'output'} but not registered: {exc}; "
                           "ResumeTrainingJob retries the registration",
                           expect={JobState.TRAINING_JOB_STATE_EXPORTING}) is not None:
            return 1
        model_id = ""
    if model_id and store.set_state(job_id, JobState.TRAINING_JOB_STATE_SUCCEEDED, "", "",
                                    expect={JobState.TRAINING_JOB_STATE_EXPORTING},
                                    output_model_id=model_id, step=result.step) is not None:
        return 0
    # The service acknowledged a cancel (or a forced delete) while we exported or registered:
    # it wins. A model registered meanwhile is removed again, so the job leaves nothing behind.
    message = f"cancelled during export at step {result.step}; resumable"
    if model_id:
        problem = unregister(model_id, catalog, api_key)
        if problem:
            message += f"; model {model_id!r} stays in the Catalog ({problem})"
    (job_dir / STOP_FILE).unlink(missing_ok=True)
    store.set_state(job_id, JobState.TRAINING_JOB_STATE_CANCELLED, "CANCELLED", message,
                    expect=cancelled, step=result.step)
    return 0


@dataclass
class RankSetup:
    """How a rank runs where the local worker's defaults do not fit (ray_engine.py makes one
    for the ranks of a Ray Train run)."""

    #: Lightning Trainer arguments replacing the local ones (JobSpec.placement)
    placement: dict[str, Any] = field(default_factory=dict)
    prepare_trainer: Callable[[Any], Any] | None = None
    #: what rank 0 reports through
    reporter: type[StoreReporter] = StoreReporter
    #: a training error is raised (the engine retries the group from the last checkpoint)
    #: instead of failing the job
    retried: bool = False


def run_worker(service_dir: Path, job_id: str, catalog: str, sample_steps: int, rank: int,
               setup: RankSetup | None = None) -> int:
    """Train one job as rank `rank` (0 writes the job's state, events and checkpoints); the
    exit status. Rank 0 exports and registers the model."""
    setup = setup or RankSetup()
    from boothstudio.services.trainer.train import ABANDON, JobSpec, Reporter, run_job

    store = JobStore(service_dir / "trainer.sqlite3",
                     os.environ.get(WORKER_DATABASE_URL_ENV, ""))
    job = store.get(job_id)
    if job is None:
        log.error("no job %s", job_id)
        return 2
    reporter = setup.reporter(store, job.id, job.job_dir) if rank == 0 else Reporter()
    artifacts = open_worker_store()
    spec = JobSpec(job.id, job.job_dir, job.config, job.base_model,
                   service_dir / "class_images", service_dir / "model_hashes.json",
                   sample_steps=sample_steps, store=artifacts,
                   model_cache=open_worker_model_cache(artifacts, service_dir),
                   placement=setup.placement, prepare_trainer=setup.prepare_trainer)
    try:
        result = run_job(spec, reporter)  # type: ignore[arg-type]
    except BaseException as exc:
        if rank != 0 or setup.retried:
            raise
        oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
        reason = "OUT_OF_MEMORY" if oom else "TRAINING_ERROR"
        if isinstance(exc, ArtifactMissing | ArtifactCorrupt):  # the store's own reason
            reason = exc.reason
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            reason = "INTERRUPTED"
        log.exception("job %s failed", job.id)
        if isinstance(reporter, StoreReporter):
            reporter.flush()
        store.set_state(job.id, JobState.TRAINING_JOB_STATE_FAILED, reason,
                        f"{type(exc).__name__}: {exc}"[:2000], expect=ACTIVE)
        return 1
    if rank != 0 or result.outcome == "rank" or result.stop_reason == ABANDON:
        return 0
    assert isinstance(reporter, StoreReporter)
    reporter.flush()
    return finish(store, job.id, result, catalog, reporter)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m boothstudio.services.trainer.worker")
    p.add_argument("--service-dir", type=Path, required=True)
    p.add_argument("--job-id", required=True)
    p.add_argument("--catalog", default="")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--sample-steps", type=int, default=20)
    args = p.parse_args(argv)
    rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return run_worker(args.service_dir, args.job_id, args.catalog, args.sample_steps, rank)


if __name__ == "__main__":
    raise SystemExit(main())
