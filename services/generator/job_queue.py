"""The Generator's job queue: bounded queue, micro-batcher and the device worker.

(Named a job queue, not a scheduler: in this field a scheduler is the noise scheduler.)

- `submit` refuses work when `queue_size` jobs are waiting (RESOURCE_EXHAUSTED, QUEUE_FULL), or
  when the caller already has `max_queued_per_key` jobs waiting (QUEUE_LIMIT_PER_KEY), so one
  client cannot fill the queue for everyone. The caller (`Job.owner`) is the API key's
  fingerprint; with auth off, the peer's address without its port (one bucket per client host:
  reconnecting does not make a new one). Running jobs do not count.
- Priorities: the queue is kept in priority order (interactive before batch) and in arrival order
  within a priority. There is no aging: a batch job waits as long as interactive jobs keep coming
  (bounded in practice by queue_size and the per-key limit of those who send them).
- One worker per device runs one batch at a time in its own thread. It takes the first job and
  every other queued job of the same priority its adapter says is compatible (equal `batch_key`:
  same model, size, sampler, schedule, steps, mode...) up to `max_batch_images` images, so a batch
  job never rides ahead of a waiting interactive one; each job keeps its own stream, seeds and
  gallery entries.
- Cancellation (CancelGeneration or the client leaving): a queued job leaves the queue; a running
  job is finished as CANCELLED at once, its rows are no longer decoded or saved, and when every
  job of the batch is cancelled the loop stops before its next denoising step. Images a cancelled
  job had already saved are removed, so nothing is left half-written.
- The first use of a model kept in a remote artifact store pulls it into the replica's model
  cache inside the run; the batch's jobs see ModelDownload events (at most every
  DOWNLOAD_EVENT_INTERVAL seconds, the last at 100%) before their first step.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import timestamp_pb2
from PIL import Image

from boothstudio.services.generator import infotext, metrics
from boothstudio.services.generator.adapters.base import (
    Adapter,
    Cancelled,
    GenerationSpec,
    ModelRef,
    RunHooks,
    StepProgress,
)
from boothstudio.services.generator.gallery import Gallery, GalleryEntry, png_bytes
from boothstudio.shared.auth import ANONYMOUS_ADMIN, Principal
from boothstudio.shared.errors import ResourceExhausted
from boothstudio.shared.ids import new_id
from boothstudio.v1 import common_pb2, generator_pb2
from boothstudio.v1.generator_pb2 import (
    GENERATION_STATUS_CANCELLED,
    GENERATION_STATUS_FAILED,
    GENERATION_STATUS_SUCCEEDED,
)

#: Finished job ids remembered (CancelGeneration on them answers False, Generate refuses reuse).
FINISHED_REMEMBERED = 2000
#: Ids cancelled before their Generate arrived: the newest this many, for PRECANCEL_SECONDS.
#: Anyone may send CancelGeneration with made-up ids, so this memory must stay bounded.
PRECANCELLED_REMEMBERED = 1000
PRECANCEL_SECONDS = 300.0
#: A model download's events: at most one per this many seconds (and always the last, at 100%).
DOWNLOAD_EVENT_INTERVAL = 0.25
#: Job.priority ranks (lower runs first), named as in metrics
INTERACTIVE, BATCH = 0, 1
PRIORITY_LABELS = {INTERACTIVE: "interactive", BATCH: "batch"}


def queue_owner(principal: Principal | None, peer: str) -> str:
    """Job.owner: the caller's API key (its fingerprint), or with auth off the peer's address
    without the port ("ipv4:10.0.0.5:51234" -> "ipv4:10.0.0.5")."""
    if principal is not None and principal is not ANONYMOUS_ADMIN:
        return f"key:{principal.key_id}"
    if peer.startswith(("ipv4:", "ipv6:")):
        peer = peer.rsplit(":", 1)[0]
    return f"peer:{peer}"


def priority_rank(priority: int) -> int:
    """The queue rank of a GenerateRequest.priority (unset = interactive)."""
    return BATCH if priority == generator_pb2.PRIORITY_BATCH else INTERACTIVE


@dataclass
class Job:
    id: str
    request: generator_pb2.GenerateRequest
    spec: GenerationSpec
    adapter: Adapter
    preview_interval: int
    created: float = field(default_factory=time.monotonic)
    events: asyncio.Queue[generator_pb2.GenerateResponse] = field(default_factory=asyncio.Queue)
    state: str = "queued"  # queued | running | done
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0
    image_ids: list[str] = field(default_factory=list)
    images_done: int = 0
    key: Any = None
    #: INTERACTIVE or BATCH
    priority: int = INTERACTIVE
    #: who sent it, for max_queued_per_key (see the module doc)
    owner: str = ""

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.monotonic()) - self.created


def now_timestamp() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def preview_png(image: Image.Image, max_side: int = 128) -> bytes:
    img = image
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class JobQueue:
    def __init__(
        self,
        gallery: Gallery,
        *,
        queue_size: int = 16,
        max_batch_images: int = 8,
        batching: bool = True,
        batch_window: float = 0.0,
        max_queued_per_key: int = 0,
        log: Any = None,
    ) -> None:
        self.gallery = gallery
        self.queue_size = queue_size
        #: 0 = no limit per caller (only queue_size)
        self.max_queued_per_key = max_queued_per_key
        self.max_batch_images = max_batch_images
        self.batching = batching
        self.batch_window = batch_window
        self.log = log
        self.queue: list[Job] = []
        self.jobs: dict[str, Job] = {}
        self.finished: dict[str, str] = {}  # recent job id -> status name
        self.precancelled: OrderedDict[str, float] = OrderedDict()  # id -> when, oldest first
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running: list[Job] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._worker(), name="generator-worker")

    async def stop(self) -> None:
        """Cancel everything; the device thread stops before its next step."""
        for job in list(self.queue) + list(self.running):
            job.cancelled.set()
            self._finish(job, GENERATION_STATUS_CANCELLED, "SHUTDOWN", "server shutting down")
        self.queue.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def drain(self, grace: float) -> None:
        """Let running work finish within the grace period; queued jobs are cancelled."""
        for job in list(self.queue):
            job.cancelled.set()
            self._finish(job, GENERATION_STATUS_CANCELLED, "SHUTDOWN", "server shutting down")
        self.queue.clear()
        self._queue_changed()
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def warm(self, adapter: Adapter, model: ModelRef) -> None:
        """Load a model (and hash its file for the infotext) in the device thread, ahead of
        the first request. Shutdown does not wait for it (see services/generator/__main__)."""

        def load() -> None:
            adapter.warm(model)
            infotext.model_facts(model)

        await asyncio.get_running_loop().run_in_executor(self.executor, load)

    # ------------------------------------------------------------------ API

    def known(self, job_id: str) -> bool:
        return job_id in self.jobs or job_id in self.finished

    def submit(self, job: Job) -> int:
        """Enqueue by priority; returns the position (0 = next). Raises ResourceExhausted when
        the caller has max_queued_per_key jobs waiting, or the queue is full."""
        limit = self.max_queued_per_key
        if limit and sum(1 for j in self.queue if j.owner == job.owner) >= limit:
            metrics.REQUESTS.labels("rejected").inc()
            raise ResourceExhausted(
                f"you already have {limit} generation jobs waiting (max_queued_per_key); "
                "retry when one has started",
                reason="QUEUE_LIMIT_PER_KEY",
                retry_after=1.0,
                metadata={"max_queued_per_key": limit},
            )
        if len(self.queue) >= self.queue_size:
            metrics.REQUESTS.labels("rejected").inc()
            raise ResourceExhausted(
                f"the generation queue is full ({self.queue_size} jobs waiting); retry later",
                reason="QUEUE_FULL",
                retry_after=1.0,
                metadata={"queue_size": self.queue_size},
            )
        job.key = job.adapter.batch_key(job.spec) if self.batching else None
        self.jobs[job.id] = job
        # behind every job of its priority or a higher one (FIFO within a priority)
        index = sum(1 for j in self.queue if j.priority <= job.priority)
        self.queue.insert(index, job)
        self._queue_changed()
        position = index + (1 if self.running else 0)
        self._emit(
            job,
            queued=generator_pb2.GenerationQueued(position=position, queue_depth=len(self.queue)),
        )
        if self.precancelled.pop(job.id, None) is not None:
            self.cancel(job.id, "CANCELLED_BY_USER")
        self._wakeup.set()
        return position

    def cancel(self, job_id: str, reason: str = "CANCELLED_BY_USER") -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            if job_id not in self.finished:
                # early cancellation: a Generate with this job id arriving soon is cancelled
                self.precancelled[job_id] = time.monotonic()
                self.precancelled.move_to_end(job_id)
                self._trim()
            return False
        if job.done:
            return False
        job.cancelled.set()
        if job in self.queue:
            self.queue.remove(job)
            self._queue_changed()
        message = "cancelled by the user" if reason == "CANCELLED_BY_USER" else reason.lower()
        self._finish(job, GENERATION_STATUS_CANCELLED, reason, message)
        return True

    def _queue_changed(self) -> None:
        metrics.QUEUE_DEPTH.set(len(self.queue))
        for rank, label in PRIORITY_LABELS.items():
            waiting = sum(1 for j in self.queue if j.priority == rank)
            metrics.QUEUE_DEPTH_BY_PRIORITY.labels(label).set(waiting)

    # ------------------------------------------------------------------ events

    def _emit(self, job: Job, **event: Any) -> None:
        if job.done:
            return
        job.events.put_nowait(
            generator_pb2.GenerateResponse(job_id=job.id, time=now_timestamp(), **event)
        )

    def _finish(self, job: Job, status: int, reason: str = "", message: str = "") -> None:
        if job.done:
            return
        now = time.monotonic()
        gen_s = now - job.started if job.started else 0.0
        self._emit(
            job,
            finished=generator_pb2.GenerationFinished(
                status=status,
                image_count=job.images_done if status == GENERATION_STATUS_SUCCEEDED else 0,
                image_ids=job.image_ids if status == GENERATION_STATUS_SUCCEEDED else [],
                queue_seconds=job.queue_seconds,
                generation_seconds=gen_s,
                total_seconds=now - job.created,
                error_reason=reason,
                error_message=message,
            ),
        )
        job.state = "done"
        outcome = {
            GENERATION_STATUS_SUCCEEDED: "succeeded",
            GENERATION_STATUS_CANCELLED: "cancelled",
        }.get(status, "failed")
        metrics.REQUESTS.labels(outcome).inc()
        self.jobs.pop(job.id, None)
        self.finished[job.id] = generator_pb2.GenerationStatus.Name(status)
        self._trim()

    def _trim(self) -> None:
        while len(self.finished) > FINISHED_REMEMBERED:
            self.finished.pop(next(iter(self.finished)))
        cutoff = time.monotonic() - PRECANCEL_SECONDS
        while self.precancelled and (
            len(self.precancelled) > PRECANCELLED_REMEMBERED
            or next(iter(self.precancelled.values())) < cutoff
        ):
            self.precancelled.popitem(last=False)

    def _threadsafe(self, fn: Callable[..., None], *args: Any, **kw: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(lambda: fn(*args, **kw))

    # ------------------------------------------------------------------ worker

    def _take_batch(self) -> list[Job]:
        head = self.queue.pop(0)
        batch, images = [head], len(head.spec.seeds)
        if head.key is not None:
            for job in list(self.queue):
                n = len(job.spec.seeds)
                compatible = job.adapter is head.adapter and job.key == head.key
                if compatible and job.priority == head.priority:
                    if images + n > self.max_batch_images:
                        continue
                    batch.append(job)
                    images += n
                    self.queue.remove(job)
        self._queue_changed()
        return batch

    async def _worker(self) -> None:
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.batch_window > 0 and self.batching:
                await asyncio.sleep(self.batch_window)
                if not self.queue:
                    continue
            batch = self._take_batch()
            self.running = batch
            images = sum(len(j.spec.seeds) for j in batch)
            now = time.monotonic()
            for job in batch:
                job.state, job.started = "running", now
                metrics.QUEUE_WAIT.observe(job.queue_seconds)
                s = job.spec
                self._emit(
                    job,
                    started=generator_pb2.GenerationStarted(
                        model_id=s.model.id,
                        backend_id=job.adapter.id,
                        sampler=s.sampler,
                        schedule=s.schedule,
                        seeds=s.seeds,
                        batch_size=images,
                        queue_seconds=job.queue_seconds,
                        width=s.width,
                        height=s.height,
                        steps=s.steps,
                    ),
                )
            metrics.BATCH_SIZE.observe(images)
            metrics.BATCH_JOBS.observe(len(batch))
            assert self._loop is not None
            try:
                await self._loop.run_in_executor(self.executor, self._run, batch)
            except asyncio.CancelledError:
                for job in batch:
                    job.cancelled.set()
                raise
            except Exception as exc:  # reported per job in _run; this is a safety net
                if self.log is not None:
                    self.log.exception("batch failed: %s", exc)
            finally:
                self.running = []

    def _run(self, batch: list[Job]) -> None:
        """In the device thread: run the batch through its adapter, save and stream images."""
        started = time.perf_counter()
        adapter = batch[0].adapter
        specs = [j.spec for j in batch]
        saved: dict[int, list[str]] = {k: [] for k in range(len(batch))}
        last_step = [0, 0]
        # model hashes for the infotext: computed once per file (seconds for a large one)
        facts = [infotext.spec_model_facts(j.spec) for j in batch]

        def on_step(p: StepProgress) -> None:
            last_step[:] = [p.step, p.total]
            for k, job in enumerate(batch):
                if job.cancelled.is_set():
                    continue
                png = b""
                iv = job.preview_interval
                if iv > 0 and (p.step % iv == 0 or p.step == p.total):
                    img = p.preview(k)
                    png = preview_png(img) if img is not None else b""
                decode_left = 0.02 * len(job.spec.seeds)
                self._threadsafe(
                    self._emit,
                    job,
                    progress=generator_pb2.GenerationProgress(
                        step=p.step,
                        total_steps=p.total,
                        eta_seconds=p.eta_seconds + decode_left,
                        preview_png=png,
                        images_done=0,
                        images_total=len(job.spec.seeds),
                        steps_per_second=p.steps_per_second,
                    ),
                )

        def on_image(k: int, i: int, image: Image.Image) -> None:
            job = batch[k]
            if job.cancelled.is_set():
                return
            s = job.spec
            seed = s.seeds[i]
            text = infotext.spec_parameters_text(s, seed, facts[k])
            data = png_bytes(image, text)
            image_id = ""
            if not job.request.skip_gallery:
                image_id = new_id("img")
                self.gallery.save(
                    GalleryEntry(
                        image_id=image_id,
                        job_id=job.id,
                        model_id=s.model.id,
                        seed=seed,
                        index=i,
                        width=s.width,
                        height=s.height,
                        sampler=s.sampler,
                        schedule=s.schedule,
                        steps=s.steps,
                        cfg_scale=s.cfg_scale,
                        queue_seconds=job.queue_seconds,
                        generation_seconds=time.perf_counter() - started,
                        parameters=text,
                        request=job.request,
                        png=data,
                    )
                )
                saved[k].append(image_id)
            metrics.image_generated(s.model.id, s.sampler)
            self._threadsafe(self._deliver, job, image_id, generator_pb2.GeneratedImage(
                png=data, seed=seed, index=i, finish_reason=generator_pb2.FINISH_REASON_STOP,
                image_id=image_id, width=s.width, height=s.height,
            ))  # fmt: skip

        download_sent = [0.0]

        def on_download(model_id: str, done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - download_sent[0] < DOWNLOAD_EVENT_INTERVAL:
                return
            download_sent[0] = now
            event = generator_pb2.ModelDownload(
                model_id=model_id, bytes_done=done, bytes_total=total)
            for job in batch:
                if not job.cancelled.is_set():
                    self._threadsafe(self._emit, job, model_download=event)

        def on_warning(k: int, reason: str, message: str, field_: str) -> None:
            self._threadsafe(
                self._emit,
                batch[k],
                warning=common_pb2.Warning(reason=reason, message=message, field=field_),
            )

        hooks = RunHooks(
            on_step=on_step,
            should_stop=lambda: all(j.cancelled.is_set() for j in batch),
            is_cancelled=lambda k: batch[k].cancelled.is_set(),
            on_image=on_image,
            on_warning=on_warning,
            on_download=on_download,
        )
        failure: tuple[str, str] | None = None
        try:
            adapter.run(specs, hooks)
        except Cancelled:
            pass
        except MemoryError:
            failure = ("OUT_OF_MEMORY", "out of memory")
        except Exception as exc:
            reason = str(getattr(exc, "reason", "") or "GENERATION_FAILED")
            if "out of memory" in str(exc).lower():
                reason = "OUT_OF_MEMORY"
            failure = (reason, str(exc)[:500])
            if self.log is not None:
                self.log.exception("generation failed")
        elapsed = time.perf_counter() - started
        # a batch shares its model and sampler (both are part of the batch key)
        metrics.batch_ran(specs[0].model.id, specs[0].sampler, elapsed)
        if last_step[0]:
            metrics.STEPS.inc(last_step[0])
            metrics.STEPS_PER_SECOND.set(last_step[0] / elapsed if elapsed > 0 else 0.0)
        # Nothing half-written: a job cancelled meanwhile (or failed) loses what it saved.
        # The job ends either way: a clean-up that cannot reach the database leaves rows that
        # a later delete removes, never a stream that does not finish.
        for k, job in enumerate(batch):
            if saved[k] and (job.cancelled.is_set() or failure is not None):
                try:
                    self.gallery.delete(saved[k])
                except Exception:
                    if self.log is not None:
                        self.log.exception("could not remove the images of an unfinished job")
        self._threadsafe(self._complete, batch, failure)

    def _deliver(self, job: Job, image_id: str, image: generator_pb2.GeneratedImage) -> None:
        if job.done:
            return
        if image_id:
            job.image_ids.append(image_id)
        job.images_done += 1
        self._emit(job, image=image)

    def _complete(self, batch: list[Job], failure: tuple[str, str] | None) -> None:
        for job in batch:
            if job.done:
                continue
            if failure is not None:
                self._finish(job, GENERATION_STATUS_FAILED, *failure)
            elif job.cancelled.is_set():
                self._finish(job, GENERATION_STATUS_CANCELLED, "CANCELLED_BY_USER", "")
            else:
                self._finish(job, GENERATION_STATUS_SUCCEEDED)
