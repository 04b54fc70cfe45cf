"""Pictures the trainer is sent, onto disk: UploadImages datasets and new jobs' folders (a job
made from a dataset reads its pictures back with dataset_images).

Everything is checked before the first side effect (names, sizes, headers, one decode each), and
a failure while writing removes what this call wrote: a new dataset leaves neither folder nor
rows, an addition to a dataset leaves its earlier pictures as they were, a job folder goes with
its job. No torch.

With an artifact store (`artifacts`) the local folders are scratch copies: a dataset's pictures
are in the store (trainer/datasets/<id>/<file>) before their rows, which hold each one's
SHA-256, and a job's inputs are a committed folder there before its row (job_files), so any
Trainer host can make a job from a dataset and run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from boothstudio.services.trainer.inputs import (
    ImageRejected,
    check_image,
    filename_problem,
    image_limits,
)
from boothstudio.services.trainer.job_files import (
    dataset_key,
    delete_job_files,
    is_in_place,
    job_key,
    store_inputs,
)
from boothstudio.services.trainer.jobfile import config_to_yaml
from boothstudio.services.trainer.options import Limits
from boothstudio.services.trainer.store import DuplicateRow, JobRow, JobStore
from boothstudio.services.trainer.templates import MAX_PROMPT_CHARS
from boothstudio.shared.artifact_store import ArtifactStore
from boothstudio.shared.errors import AlreadyExists, InvalidArgument, NotFound, clip
from boothstudio.shared.ids import new_id
from boothstudio.shared.storage import atomic_create_bytes, atomic_write_bytes, atomic_write_text
from boothstudio.v1 import trainer_pb2

MAX_DATASET_NAME_CHARS = 200


@dataclass
class UploadedFile:
    name: str
    caption: str
    data: bytearray = field(default_factory=bytearray)


async def receive(stream: AsyncIterator[trainer_pb2.UploadImagesRequest], store: JobStore,
                  limits: Limits) -> tuple[str, str, list[UploadedFile]]:
    """(dataset id or "", dataset name, files) from an upload stream, every message checked."""
    dataset_id, name = "", ""
    files: list[UploadedFile] = []
    first = True
    bytes_received = 0
    async for msg in stream:
        which = msg.WhichOneof("payload")
        if which == "metadata":
            if not first:
                raise InvalidArgument.for_field("metadata", "only as the first message")
            name, dataset_id = msg.metadata.name, msg.metadata.dataset_id
            if len(name) > MAX_DATASET_NAME_CHARS:
                raise InvalidArgument.for_field("metadata.name",
                                                f"at most {MAX_DATASET_NAME_CHARS} characters")
            if dataset_id and not await asyncio.to_thread(store.dataset_exists, dataset_id):
                raise NotFound(resource_type="dataset", resource_name=dataset_id,
                               field="metadata.dataset_id")
        elif which == "chunk":
            ch = msg.chunk
            if not files or files[-1].name != ch.filename:
                problem = filename_problem(ch.filename) if ch.filename else "required"
                if problem:
                    raise InvalidArgument.for_field("chunk.filename", problem)
                if any(f.name == ch.filename for f in files):
                    raise InvalidArgument.for_field(
                        "chunk.filename", f"{clip(ch.filename, 60)!r} sent twice or not "
                        "contiguously")
                if len(files) >= limits.max_instance_images:
                    raise InvalidArgument.for_field(
                        "chunk", f"more than {limits.max_instance_images} images")
                if len(ch.caption) > MAX_PROMPT_CHARS:
                    raise InvalidArgument.for_field("chunk.caption",
                                                    f"at most {MAX_PROMPT_CHARS} characters")
                files.append(UploadedFile(ch.filename, ch.caption))
            files[-1].data.extend(ch.data)
            bytes_received += len(ch.data)
            if bytes_received > limits.max_upload_bytes:
                # the stream is held in memory until every picture is checked: bound it
                raise InvalidArgument.for_field(
                    "chunk.data", f"an upload holds at most {limits.max_upload_bytes} bytes; "
                    "send the rest in another UploadImages call to the same dataset_id")
            if len(files[-1].data) > limits.max_image_bytes:
                raise InvalidArgument.for_field(
                    "chunk.data", f"{clip(ch.filename, 60)!r} is larger than "
                    f"{limits.max_image_bytes} bytes")
        first = False
    if not files:
        # an upload with no picture would only make an empty dataset (or change nothing)
        raise InvalidArgument.for_field("chunk", "no images sent: an upload needs at least one "
                                        "picture")
    return dataset_id, name, files


def _exists(dataset_id: str, name: str) -> AlreadyExists:
    return AlreadyExists(f"dataset {dataset_id!r} already holds {clip(name, 60)!r}",
                         reason="IMAGE_EXISTS")


def _shared_folder(artifacts: ArtifactStore | None, dataset_id: str,
                   folder: Path) -> ArtifactStore | None:
    """The store to copy a dataset's pictures to, or None when it is this folder itself."""
    if artifacts is None or is_in_place(artifacts, dataset_key(dataset_id), folder):
        return None
    return artifacts


def save(store: JobStore, datasets_dir: Path, limits: Limits, dataset_id: str, name: str,
         files: list[UploadedFile], artifacts: ArtifactStore | None = None
         ) -> trainer_pb2.UploadImagesResponse:
    """Check every picture, then write them all or nothing (blocking: run in a thread)."""
    pic_limits = image_limits(limits.max_image_bytes)
    received = []
    for f in files:
        try:
            checked = check_image(bytes(f.data), pic_limits)
        except ImageRejected as exc:
            raise InvalidArgument.for_field("chunk.data", f"{clip(f.name, 60)}: {exc}") from None
        received.append(trainer_pb2.DatasetImage(
            filename=f.name, width=checked.width, height=checked.height,
            size_bytes=len(f.data), sha256=hashlib.sha256(f.data).hexdigest()))
    new = not dataset_id
    if new:
        dataset_id = new_id("ds")
    else:
        # adding to a dataset never replaces a picture: a failed call then has nothing to undo
        # but its own files
        present = {img.filename for img, _ in store.dataset_images(dataset_id)}
        for f in files:
            if f.name in present:
                raise _exists(dataset_id, f.name)
    folder = datasets_dir / dataset_id
    shared = _shared_folder(artifacts, dataset_id, folder)
    written: list[Path] = []
    stored: list[str] = []
    created = False
    try:
        folder.mkdir(parents=True, exist_ok=not new)
        created = new
        for f in files:
            # never over another call's picture: two uploads of one name to one dataset at
            # once, and the second gets ALREADY_EXISTS instead of replacing the first's file
            try:
                atomic_create_bytes(folder / f.name, bytes(f.data))
            except FileExistsError:
                raise _exists(dataset_id, f.name) from None
            written.append(folder / f.name)
        for f in files if shared else []:
            stored.append(shared.put_file(folder / f.name, dataset_key(dataset_id, f.name)).key)
        try:
            store.add_dataset_images(dataset_id, name or dataset_id if new else None,
                                     [(img, f.caption) for img, f in zip(received, files,
                                                                         strict=True)])
        except DuplicateRow:
            raise _exists(dataset_id, ", ".join(f.name for f in files)) from None
    except BaseException:
        for key in stored:
            with contextlib.suppress(Exception):  # the first error is the one to report
                shared.delete(key)  # type: ignore[union-attr]
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    all_images = store.dataset_images(dataset_id)
    return trainer_pb2.UploadImagesResponse(
        dataset_id=dataset_id, image_count=len(all_images),
        total_bytes=sum(i.size_bytes for i, _ in all_images), images=received)


def dataset_images(store: JobStore, datasets_dir: Path, dataset_id: str,
                   artifacts: ArtifactStore | None = None) -> list[tuple[bytes, str, str]]:
    """An uploaded dataset's pictures as (bytes, file name, caption), for a new job (from the
    store, checked against the SHA-256 of their rows, when it is not the local folder)."""
    if not store.dataset_exists(dataset_id):
        raise NotFound(resource_type="dataset", resource_name=dataset_id,
                       field="config.dataset_id")
    shared = _shared_folder(artifacts, dataset_id, datasets_dir / dataset_id)
    out = []
    for img, caption in store.dataset_images(dataset_id):
        data = (shared.get_bytes(dataset_key(dataset_id, img.filename), sha256=img.sha256)
                if shared else (datasets_dir / dataset_id / img.filename).read_bytes())
        out.append((data, img.filename, caption))
    return out


def write_job_dir(job: JobRow, images: list[tuple[bytes, str, str]], display_name: str,
                  artifacts: ArtifactStore | None = None) -> None:
    """The job's folder: its pictures, their captions and config.yaml, then the same in the
    store. The folder must be new (a leftover of the same name is not ours to overwrite or
    remove); on failure it is removed. Names were checked by resolve()."""
    try:
        job.job_dir.parent.mkdir(parents=True, exist_ok=True)
        job.job_dir.mkdir()
    except FileExistsError:
        raise AlreadyExists(f"a folder for job {job.id!r} already exists",
                            reason="JOB_EXISTS") from None
    try:
        inst = job.job_dir / "instance"
        inst.mkdir()
        names, captions = [], {}
        for data, name, caption in images:
            atomic_write_bytes(inst / name, data)
            names.append(f"instance/{name}")
            if caption:
                captions[name] = caption
        if captions:
            atomic_write_text(inst / "captions.json", json.dumps(captions))
        atomic_write_text(job.job_dir / "config.yaml",
                          config_to_yaml(job.config, names, display_name or job.display_name))
        if artifacts is not None:
            store_inputs(artifacts, job.id, job.job_dir)
    except BaseException:
        remove_job_dir(job, artifacts)
        raise


def remove_job_dir(job: JobRow, artifacts: ArtifactStore | None = None) -> None:
    """A job's folder, and what it put in the store (a job whose row was never written)."""
    if artifacts is not None and not is_in_place(artifacts, job_key(job.id), job.job_dir):
        with contextlib.suppress(Exception):  # the error that brought us here is the one to tell
            delete_job_files(artifacts, job.id)
    shutil.rmtree(job.job_dir, ignore_errors=True)


__all__ = ["dataset_images", "receive", "remove_job_dir", "save", "write_job_dir"]
