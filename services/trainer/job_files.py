"""A training job's files in the artifact store, so that a job runs or resumes on any Trainer
host: the local job folder is a scratch copy of what the store holds.

Keys (relative to the data dir; with the default store they ARE the local folders, so nothing is
copied and the single-host layout is unchanged):

    trainer/jobs/<id>/instance/...               instance pictures + captions.json (a committed
                                                 folder: MANIFEST.json last)
    trainer/jobs/<id>/config.yaml
    trainer/jobs/<id>/checkpoints/<name>.ckpt    full training state, then
    trainer/jobs/<id>/checkpoints/<name>.ckpt.sha256   its commit marker (the object's SHA-256),
                                                 written after it: an object without its marker
                                                 (an upload cut short) is never used
    trainer/jobs/<id>/exports/<name>.safetensors (+ .sha256) per-checkpoint weights
    trainer/jobs/<id>/output/diffusers | lora    the final model (committed folder)
    trainer/datasets/<id>/<file>                 uploaded pictures (their rows hold the SHA-256)
    trainer/class_images/<key>/...               class-image sets (committed folders)

Checkpoints go up off the training thread (CheckpointUploader: one thread, one queue), so a
step never waits for the store; the job's end waits for the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from boothstudio.shared.artifact_store import (
    ArtifactCorrupt,
    ArtifactMissing,
    ArtifactStore,
    StoreUnavailable,
)

log = logging.getLogger("boothstudio.trainer.job_files")
MARKER_SUFFIX = ".sha256"
UPLOAD_ATTEMPTS = 4
FIRST_RETRY_S = 1.0
#: nice value of the checkpoint-upload thread (Linux threads have their own)
UPLOAD_NICENESS = 10


def job_key(job_id: str, *parts: str) -> str:
    return "/".join(("trainer", "jobs", job_id, *parts))


def dataset_key(dataset_id: str, *parts: str) -> str:
    return "/".join(("trainer", "datasets", dataset_id, *parts))


def class_images_key(digest: str) -> str:
    return f"trainer/class_images/{digest}"


def is_in_place(store: ArtifactStore | None, key: str, local: Path) -> bool:
    """Whether `key` is the local file or folder itself (the default store): nothing to copy."""
    if store is None:
        return True
    path = store.local_path(key)
    return path is not None and path.resolve() == local.resolve()


# ---------------------------------------------------------------- inputs


def store_inputs(store: ArtifactStore, job_id: str, job_dir: Path) -> None:
    """A new job's pictures (committed folder) and config.yaml, before its row is written."""
    if is_in_place(store, job_key(job_id), job_dir):
        return
    store.put_tree(job_dir / "instance", job_key(job_id, "instance"))
    store.put_file(job_dir / "config.yaml", job_key(job_id, "config.yaml"))


def delete_job_files(store: ArtifactStore, job_id: str) -> None:
    """Everything a job keeps in the store (its committed folders first go unseen)."""
    store.delete_tree(job_key(job_id, "instance"))
    for kind in ("diffusers", "lora"):
        store.delete_tree(job_key(job_id, "output", kind))
    store.delete_tree(job_key(job_id))


def pull_inputs(store: ArtifactStore, job_id: str, job_dir: Path) -> bool:
    """The job's pictures and config.yaml into a local job folder that lacks them (a job
    created on another host); True when something was pulled."""
    instance = job_dir / "instance"
    if instance.is_dir():
        return False
    if is_in_place(store, job_key(job_id), job_dir):
        # the default store is this host's data dir: a job created on another replica cannot
        # be read here (replicas sharing a database need one shared storage_url)
        raise ArtifactMissing(
            f"job {job_id}'s pictures are not in this Trainer's store ({instance}); Trainer "
            "replicas that share a database must share one storage_url",
            reason="JOB_INPUTS_MISSING")
    store.get_tree(job_key(job_id, "instance"), instance)
    store.get_file(job_key(job_id, "config.yaml"), job_dir / "config.yaml")
    return True


# ---------------------------------------------------------------- checkpoints


def _step_of(name: str) -> int:
    return int(name.split(".")[0].split("-")[1])


def committed_checkpoints(store: ArtifactStore, job_id: str) -> dict[str, str]:
    """Committed full-state checkpoints in the store: file name -> SHA-256, oldest first."""
    prefix = job_key(job_id, "checkpoints")
    keys = set(store.list_keys(prefix))
    names = sorted((key.rsplit("/", 1)[1] for key in keys
                    if key.endswith(".ckpt") and key + MARKER_SUFFIX in keys
                    and key.rsplit("/", 1)[1].startswith("step-")), key=_step_of)
    out: dict[str, str] = {}
    for name in names:
        out[name] = store.get_bytes(f"{prefix}/{name}{MARKER_SUFFIX}").decode().strip()
    return out


def prune_checkpoints(store: ArtifactStore, job_id: str, keep: int) -> None:
    """Retention in the store: every checkpoint older than the newest `keep` committed ones
    goes, marker first (readers stop taking it), with any upload of one that was cut short."""
    kept = list(committed_checkpoints(store, job_id))[-keep:] if keep > 0 else []
    if not kept:
        return
    oldest_kept = _step_of(kept[0])
    prefix = job_key(job_id, "checkpoints")
    for key in sorted(store.list_keys(prefix), key=lambda k: not k.endswith(MARKER_SUFFIX)):
        name = key.rsplit("/", 1)[1]
        if name.startswith("step-") and ".ckpt" in name and _step_of(name) < oldest_kept:
            store.delete(key)


def pull_newest_checkpoint(store: ArtifactStore, job_id: str, job_dir: Path) -> Path | None:
    """The newest committed checkpoint of the store into the local checkpoints folder when it
    is newer than every local one (hash-checked; a corrupt one is skipped for the one before)."""
    ck_dir = job_dir / "checkpoints"
    if is_in_place(store, job_key(job_id, "checkpoints"), ck_dir):
        return None
    local = sorted(ck_dir.glob("step-*.ckpt"))
    newest_local = _step_of(local[-1].name) if local else -1
    for name, digest in reversed(committed_checkpoints(store, job_id).items()):
        if _step_of(name) <= newest_local:
            return None
        try:
            return store.get_file(job_key(job_id, "checkpoints", name), ck_dir / name,
                                  sha256=digest)
        except (ArtifactCorrupt, ArtifactMissing) as exc:
            log.warning("stored checkpoint %s of job %s unusable: %s", name, job_id, exc)
    return None


class CheckpointUploader:
    """Copies a job's checkpoint files to the store on one background thread, in order.

    `upload(local, key)` puts the object, then its marker (`<key>.sha256`); `run` queues any
    other call (retention). A store that is down is retried a few times; what still fails is
    kept in `failures` (the file stays on this host) for the job to report.
    """

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def upload(self, local: Path, key: str) -> None:
        self._tasks.put(lambda: self._upload(local, key))

    def run(self, what: str, call: Callable[[], None]) -> None:
        """Any other store call, in turn after what is queued before it."""
        self._tasks.put(lambda: self._retrying(what, call))

    def wait(self) -> list[str]:
        """Block until every queued upload and deletion is done; the failures so far."""
        self._tasks.join()
        with self._lock:
            return list(self.failures)

    def close(self) -> list[str]:
        """Wait for the queue, then end the thread; the failures not taken yet."""
        self._tasks.put(None)
        self._thread.join()
        return self.take_failures()

    def take_failures(self) -> list[str]:
        with self._lock:
            out, self.failures = self.failures, []
        return out

    def _failed(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def _run(self) -> None:
        # background work: the training thread comes first when they compete for a core
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPLOAD_NICENESS)
        while True:
            task = self._tasks.get()
            try:
                if task is None:
                    return
                task()
            finally:
                self._tasks.task_done()

    def _retrying(self, what: str, call: Callable[[], None]) -> None:
        delay = FIRST_RETRY_S
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                call()
                return
            except FileNotFoundError:
                return  # retention removed it locally before its turn: a newer one follows
            except StoreUnavailable as exc:
                if attempt == UPLOAD_ATTEMPTS - 1:
                    self._failed(f"{what}: {exc}")
                    return
                time.sleep(delay)
                delay *= 2
            except Exception as exc:  # the thread must outlive one bad file
                log.exception("%s failed", what)
                self._failed(f"{what}: {exc}")
                return

    def _upload(self, local: Path, key: str) -> None:
        def put() -> None:
            digest = self.store.put_file(local, key).sha256
            self.store.put_bytes(key + MARKER_SUFFIX, digest.encode())

        self._retrying(f"uploading {key}", put)


# ---------------------------------------------------------------- the final model

#: LoRA jobs' output folder: the diffusers file the Catalog registers, and beside it the same
#: LoRA in the kohya/A1111 layout, named after the job (A1111 calls a LoRA by its file name),
#: to drop into a webui's, ComfyUI's or kohya's LoRA folder
LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FOLDER = "kohya"


def write_kohya_lora(lora_dir: Path, job_id: str, *, sdxl: bool | None = None) -> Path:
    """The kohya/A1111 copy of a LoRA job's diffusers file (`sdxl`: text encoders as
    lora_te1_/lora_te2_; default: when the LoRA adapts a second text encoder)."""
    from boothstudio.services.diffusion.lora_layouts import write_kohya

    return write_kohya(lora_dir / LORA_FILE, lora_dir / KOHYA_FOLDER / f"{job_id}.safetensors",
                       sdxl=sdxl, metadata={"ss_output_name": job_id})


def store_output(store: ArtifactStore, job_id: str, job_dir: Path,
                 outputs: dict[str, str]) -> dict[str, str]:
    """The exported model as a committed folder in the store; `outputs` with the registered
    locations (url_of) in place of local paths: the diffusers folder, or the LoRA file."""
    stored = dict(outputs)
    for kind in ("diffusers", "lora"):
        if kind not in outputs:
            continue
        folder = job_dir / "output" / kind
        prefix = job_key(job_id, "output", kind)
        if not is_in_place(store, prefix, folder):
            store.put_tree(folder, prefix)
        inner = Path(outputs[kind]).relative_to(folder).as_posix()
        stored[kind] = store.url_of(prefix if inner == "." else f"{prefix}/{inner}")
    return stored


__all__ = [
    "CheckpointUploader",
    "class_images_key",
    "committed_checkpoints",
    "dataset_key",
    "delete_job_files",
    "is_in_place",
    "job_key",
    "prune_checkpoints",
    "pull_inputs",
    "pull_newest_checkpoint",
    "store_inputs",
    "store_output",
    "write_kohya_lora",
]
