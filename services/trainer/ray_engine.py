"""Ray as the training engine (trainer setting `ray_address`): each claimed job is one Ray
Train run on the cluster; the Trainer stays the control plane.

    Trainer (a Ray driver)  --creates-->  JobDriver actor "boothstudio-job-<id>-<attempt>"
                                          (detached)
                                              |  TorchTrainer.fit()
                                              v
                                   N train workers (devices x num_nodes), each running the
                                   local worker's run_job with RayDDPStrategy +
                                   RayLightningEnvironment (prepare_trainer)

- Rank 0 writes the job's state, Watch events, checkpoints and warnings into the job store under
  the job's lease, exactly as a local worker does (the ranks get the database URL, the lease
  and the artifact store's settings in their environment); it exports and registers the model.
- Checkpoints are the project's own (services/trainer/job_files.py: full state in the artifact
  store, committed by a .sha256 marker), not Ray's checkpoint reporting: one format and one
  place for both engines, and a run restarted by Ray (FailureConfig), by another Trainer
  replica or by ResumeTrainingJob resumes from the same newest committed checkpoint. Ray's
  report would copy every checkpoint a second time into its storage_path.
- Cancel: rank 0 reads the job's row at most once a second (besides the STOP file, which is on
  the Trainer's host) and stops at the next step with a checkpoint; the run then ends normally.
  A job that is no longer the run's (deleted, or claimed again: another attempt, another
  replica) is abandoned the same way, saving nothing. Runs are never killed mid-way: a killed
  Ray Train controller leaves its placement group reserved unless the cluster serves the state
  API (the dashboard), so every run ends through Ray Train's own shutdown.
- The driver actor is detached and named after the job's claim (its attempt): it outlives a
  Trainer that dies, and a restarted Trainer finds it by name (`find`) and waits on it again
  instead of starting the job a second time.

Ray is imported only here, and only when ray_address is set (the extra boothstudio[ray]).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from boothstudio.services.trainer.store import ACTIVE, JobStore, Lease
from boothstudio.services.trainer.worker import (
    ALLOWED_FROM,
    WORKER_DATABASE_URL_ENV,
    RankSetup,
    StoreReporter,
    run_worker,
)
from boothstudio.shared.config import ConfigError
from boothstudio.v1 import trainer_pb2

log = logging.getLogger("boothstudio.trainer.ray")
JobState = trainer_pb2.TrainingJobState
NAMESPACE = "boothstudio"
#: how often rank 0 reads the job's state for a cancel made on any replica
CANCEL_POLL_S = 1.0


def lease_of(text: str) -> Lease:
    """A lease from its text (Lease.to_env)."""
    attempt, _, owner = text.partition(" ")
    return Lease(owner, int(attempt))


def actor_name(job_id: str, attempt: int) -> str:
    return f"boothstudio-job-{job_id}-{attempt}"


@dataclass
class RunParams:
    """What a job's Ray run needs: plain data, sent to the cluster with the actor."""

    job_id: str
    lease: str  # Lease.to_env() of the claim it runs under
    service_dir: str  # the Trainer's; used where the node sees it (same host, shared volume)
    catalog: str
    sample_steps: int
    threads: int
    num_workers: int
    use_gpu: bool
    fsdp: bool
    max_failures: int
    #: the ranks' environment: database URL, lease, artifact store, service API key
    env: dict[str, str] = field(default_factory=dict)


def run_params(job_id: str, lease: str, config: trainer_pb2.DreamBoothConfig, *,
               service_dir: Path, catalog: str, sample_steps: int, threads: int,
               max_failures: int, env: dict[str, str]) -> RunParams:
    """A job's run: one Ray worker per device on every node, a GPU each on GPU jobs."""
    return RunParams(job_id, lease, str(service_dir), catalog, sample_steps, threads,
                     num_workers=max(1, config.devices) * max(1, config.num_nodes),
                     use_gpu=config.accelerator == "gpu",
                     fsdp=config.strategy == trainer_pb2.STRATEGY_FSDP,
                     max_failures=max_failures, env=env)


# ---------------------------------------------------------------- the Trainer's side


class RayEngine:
    """The Trainer's connection to the cluster: submit a job's run, find a run by job."""

    def __init__(self, address: str) -> None:
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("trainer.ray_address needs Ray: pip install 'boothstudio[ray]'")
        self.address = address
        self._lock = threading.Lock()
        self._connected = False

    def connect(self) -> None:
        """Join the cluster as a driver (once; blocking, so called off the event loop)."""
        import ray

        with self._lock:
            if not self._connected:
                try:
                    ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False,
                             configure_logging=False)
                except ConnectionError as exc:
                    raise ConfigError(f"trainer.ray_address: no Ray cluster at "
                                      f"{self.address!r}: {exc}") from exc
                self._connected = True

    def submit(self, params: RunParams) -> RayRun:
        """Start the run of a job's claim (a run of an earlier claim still on the cluster
        abandons the job by itself at its next step)."""
        import ray

        self.connect()
        name = actor_name(params.job_id, lease_of(params.lease).attempt)
        actor = ray.remote(JobDriver).options(  # type: ignore[attr-defined]
            name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
            max_concurrency=4, max_restarts=0,
        ).remote(asdict(params))
        return RayRun(actor)

    def find(self, job_id: str, attempt: int) -> RayRun | None:
        """The run of the job's claim `attempt` still on the cluster, if any."""
        import ray

        self.connect()
        try:
            actor = ray.get_actor(actor_name(job_id, attempt), namespace=NAMESPACE)
        except ValueError:
            return None
        return RayRun(actor)


class RayRun:
    """A job's run on the cluster, as the supervisor sees a worker process (wait). It is never
    killed from outside: a run whose job was deleted or claimed again stops by itself within
    about a second (rank 0 reads the job's row), through Ray Train's own shutdown."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def wait(self) -> int:
        """The run's exit status: 0 when rank 0 settled the job, 1 when Ray gave up on it (the
        job is FAILED then), -9 when the driver actor itself is gone (lost node, killed)."""
        import ray

        try:
            rc = int(await asyncio.wrap_future(self.actor.wait.remote().future()))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
            return -9
        with contextlib.suppress(Exception):  # a detached actor stays until it is killed
            ray.kill(self.actor, no_restart=True)
        return rc


# ---------------------------------------------------------------- on the cluster


class JobDriver:
    """The detached actor running one job's TorchTrainer (in a thread: `wait` and `lease`
    answer meanwhile)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = RunParams(**params)
        self.rc: int | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, name="ray-train-fit", daemon=True).start()

    def wait(self) -> int:
        self.done.wait()
        assert self.rc is not None
        return self.rc

    def _run(self) -> None:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        p = self.params
        trainer = TorchTrainer(
            train_loop, train_loop_config=asdict(p),
            scaling_config=ScalingConfig(**scaling_of(p)),
            torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
            run_config=RunConfig(
                name=f"{p.job_id}-{p.lease.split()[0]}",
                storage_path=str(Path(tempfile.gettempdir()) / "boothstudio-ray-runs"),
                failure_config=FailureConfig(max_failures=p.max_failures)))
        try:
            trainer.fit()
            self.rc = 0
        except Exception as exc:
            log.exception("Ray run of job %s failed", p.job_id)
            self._fail(exc)
            self.rc = 1
        finally:
            self.done.set()

    def _fail(self, exc: Exception) -> None:
        """Ray gave up (the group failed more than max_failures times): the job is FAILED,
        resumable from its last checkpoint."""
        p = self.params
        os.environ.update(p.env)
        with contextlib.suppress(Exception):  # the job may be gone or no longer ours
            store = JobStore(node_service_dir(p) / "trainer.sqlite3",
                             p.env.get(WORKER_DATABASE_URL_ENV, ""),
                             fence=lease_of(p.lease))
            ckpt = store.latest_full_checkpoint(p.job_id)
            where = f"step {ckpt.step}" if ckpt else "the start"
            store.set_state(p.job_id, JobState.TRAINING_JOB_STATE_FAILED, "TRAINING_ERROR",
                            f"the Ray run failed {p.max_failures + 1} times; ResumeTrainingJob "
                            f"continues from {where}: {type(exc).__name__}: {exc}"[:2000],
                            expect=ACTIVE)
            store.close()


def scaling_of(p: RunParams) -> dict[str, Any]:
    per_worker: dict[str, float] = {"CPU": max(1, p.threads)}
    if p.use_gpu:
        per_worker["GPU"] = 1
    return {"num_workers": p.num_workers, "use_gpu": p.use_gpu,
            "resources_per_worker": per_worker}


def node_service_dir(p: RunParams) -> Path:
    """The service dir as this node sees it: the Trainer's where it is here (the same host, a
    shared volume), else a node-local scratch one (a cluster of hosts: PostgreSQL and an S3
    store hold everything the job needs)."""
    given = Path(p.service_dir)
    if given.is_dir():
        return given
    scratch = Path(tempfile.gettempdir()) / "boothstudio-ray" / "trainer"
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


class RayStoreReporter(StoreReporter):
    """Rank 0 on Ray. A cancel comes through the job store (the STOP file is on the Trainer's
    host), and so does the end of the run's claim (ABANDON); a group Ray restarted after a
    failure goes through PREPARING again, from RUNNING."""

    allowed_from = {**ALLOWED_FROM, JobState.TRAINING_JOB_STATE_PREPARING: {
        JobState.TRAINING_JOB_STATE_QUEUED, JobState.TRAINING_JOB_STATE_PREPARING,
        JobState.TRAINING_JOB_STATE_RUNNING, JobState.TRAINING_JOB_STATE_EXPORTING}}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._polled = 0.0
        self._stop = ""

    def state(self, state: int, reason: str = "", message: str = "") -> bool:
        if state == JobState.TRAINING_JOB_STATE_PREPARING and self._current() in (
                JobState.TRAINING_JOB_STATE_RUNNING, JobState.TRAINING_JOB_STATE_EXPORTING):
            reason, message = ("WORKER_GROUP_RESTARTED", "a Ray worker failed; the group "
                               "restarts from the last checkpoint")
            self.warning(reason, message)
        return super().state(state, reason, message)

    def stop_requested(self) -> str:
        reason = super().stop_requested()
        if reason:
            return reason
        now = time.monotonic()
        if not self._stop and now - self._polled >= CANCEL_POLL_S:
            self._polled = now
            self._stop = run_stop_reason(self.store, self.job_id)
        return self._stop


def run_stop_reason(store: JobStore, job_id: str) -> str:
    """Why a run must stop, from the job's row: "cancel", ABANDON (deleted, ended by someone
    else, or claimed again: not under the lease this process writes under), or ""."""
    from boothstudio.services.trainer.train import ABANDON

    job = store.get(job_id)
    if job is None or job.lease != store.fence or job.terminal:
        return ABANDON
    return "cancel" if job.state == JobState.TRAINING_JOB_STATE_CANCELLING else ""


def train_loop(config: dict[str, Any]) -> None:
    """One rank of a job's Ray Train run."""
    import ray.train
    import torch
    from ray.train.lightning import (
        RayDDPStrategy,
        RayFSDPStrategy,
        RayLightningEnvironment,
        prepare_trainer,
    )

    p = RunParams(**config)
    os.environ.update(p.env)
    rank = ray.train.get_context().get_world_rank()
    service_dir = node_service_dir(p)
    job_dir = service_dir / "jobs" / p.job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(job_dir / "worker.log")
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s ray rank{rank} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if p.threads:
        torch.set_num_threads(p.threads)
    setup = RankSetup(
        placement={"devices": "auto", "num_nodes": 1,
                   "strategy": RayFSDPStrategy() if p.fsdp else RayDDPStrategy(),
                   "plugins": [RayLightningEnvironment()]},
        prepare_trainer=prepare_trainer, reporter=RayStoreReporter, retried=True)
    try:
        log.info("rank %d of %d on %s", rank, p.num_workers, os.uname().nodename)
        store = JobStore(service_dir / "trainer.sqlite3", p.env.get(WORKER_DATABASE_URL_ENV, ""))
        try:
            # every rank checks, so that none waits for a rank 0 that left
            if run_stop_reason(store, p.job_id) not in ("", "cancel"):
                log.warning("job %s is no longer this run's; nothing to do", p.job_id)
                return
        finally:
            store.close()
        run_worker(service_dir, p.job_id, p.catalog, p.sample_steps, rank, setup)
    finally:
        root.removeHandler(handler)
        handler.close()

