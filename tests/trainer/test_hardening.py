"""Hostile or careless input to the Trainer is refused by field before anything is written, and a
failure while writing leaves nothing behind. Against a real Catalog + Trainer; no training."""

from __future__ import annotations

import sqlite3
import struct
import zlib
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import trainer_pb2
from tests.trainer.helpers import Stack, job_config, start_stack


@pytest.fixture(scope="module")
def stack(module_services, untrained_model) -> Stack:
    return start_stack(module_services, untrained_model)


def trainer_dir(stack: Stack) -> Path:
    return stack.trainer.data_dir / "trainer"


def refused(stack: Stack, cfg: trainer_pb2.DreamBoothConfig, **kw: object):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        stack.trainer_stub.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(config=cfg, **kw), timeout=60)  # type: ignore[arg-type]
    return decode_rpc_error(info.value)


def upload(stack: Stack, messages: list[trainer_pb2.UploadImagesRequest]):  # type: ignore[no-untyped-def]
    return stack.trainer_stub.UploadImages(iter(messages), timeout=60)


def upload_refused(stack: Stack, messages: list[trainer_pb2.UploadImagesRequest]):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        upload(stack, messages)
    return decode_rpc_error(info.value)


def chunk(name: str, data: bytes) -> trainer_pb2.UploadImagesRequest:
    return trainer_pb2.UploadImagesRequest(chunk=trainer_pb2.ImageChunk(filename=name, data=data))


def dataset_rows(stack: Stack) -> tuple[int, int]:
    with sqlite3.connect(trainer_dir(stack) / "trainer.sqlite3") as db:
        return (db.execute("SELECT COUNT(*) FROM datasets").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM dataset_images").fetchone()[0])


def folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header promising width x height grey pixels, with almost no pixel data: a
    few hundred bytes that would decode to width*height bytes."""
    def chunk_(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk_(b"IHDR", ihdr)
            + chunk_(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk_(b"IEND", b""))


# -------------------------------------------------------------------------- pictures

def test_pictures_are_checked_on_their_header_first(stack, subject_pngs):
    """A 12000x12000 PNG of a few hundred bytes is refused for its size (read from the header,
    never decoded), in a job and in an upload; so is one under 8 pixels a side and a truncated
    one."""
    from PIL import Image

    from tests.trainer.helpers import png_bytes

    huge = png_header_only(12000, 12000)
    assert len(huge) < 1000
    d = refused(stack, job_config(stack.base_model_id, [subject_pngs[0], huge]))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.fields == ["config.instance_images[1].data"]
    assert "12000x12000" in d.violations[0].description, d.violations
    tiny = png_bytes(Image.new("RGB", (4, 4)))
    d = refused(stack, job_config(stack.base_model_id, [tiny, subject_pngs[1][:80]]))
    assert d.fields == ["config.instance_images[0].data", "config.instance_images[1].data"]
    assert "4x4" in d.violations[0].description

    before = dataset_rows(stack)
    d = upload_refused(stack, [chunk("ok.png", subject_pngs[0]), chunk("huge.png", huge)])
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.fields == ["chunk.data"]
    assert "huge.png" in d.message + str(d.violations) and "12000x12000" in str(d.violations)
    assert dataset_rows(stack) == before  # nothing stored: checked before any write


# -------------------------------------------------------------------------- templates

@pytest.mark.parametrize(("field", "template"), [
    ("instance_prompt", "{identifier:>1000000000}"),   # used to allocate a gigabyte
    ("instance_prompt", "a {identifier.__class__} {class_noun}"),
    ("instance_prompt", "a {identifier[0]} {class_noun}"),
    ("instance_prompt", "a {identifier} {0}"),
    ("instance_prompt", "a {identifier} {class_noun!r}"),
    ("instance_prompt", "a {identifier} {"),
    ("class_prompt", "a {class_noun:^999999999}"),
    ("prior_preservation.class_prompts[1]", "a {class_noun} on the {floor}"),
    ("validation_prompts[0]", "{identifier} }"),
])
def test_templates_substitute_only_the_documented_names(stack, subject_pngs, field, template):
    cfg = job_config(stack.base_model_id, subject_pngs[:1], prior=True)
    cfg.prior_preservation.class_prompts.extend(["a {class_noun}", "a {class_noun}"])
    cfg.validation_prompts.append("a {identifier}")
    lists = {"prior_preservation.class_prompts": cfg.prior_preservation.class_prompts,
             "validation_prompts": cfg.validation_prompts}
    name, _, index = field.partition("[")
    if index:
        lists[name][int(index[:-1])] = template
    else:
        setattr(cfg, field, template)
    d = refused(stack, cfg)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.fields == [f"config.{field}"], d.violations
    assert len(d.message) < 600  # the template is quoted clipped, not echoed whole


def test_templates_keep_escaped_braces_and_prompts_are_bounded(stack, subject_pngs):
    cfg = job_config(stack.base_model_id, subject_pngs[:1], identifier="zwx",
                     instance_prompt="a {identifier} {class_noun} {{logo}}")
    job = stack.trainer_stub.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(config=cfg, validate_only=True), timeout=60).job
    assert job.config.instance_prompt == "a zwx circle {logo}"
    d = refused(stack, job_config(stack.base_model_id, subject_pngs[:1],
                                  instance_prompt="a {identifier} " + "x" * 1000))
    assert d.fields == ["config.instance_prompt"]
    cfg = job_config(stack.base_model_id, subject_pngs[:1])
    cfg.instance_images[0].caption = "c" * 1001
    assert refused(stack, cfg).fields == ["config.instance_images[0].caption"]


# -------------------------------------------------------------------------- numbers

def float_fields(descriptor, prefix: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    """Dotted paths of every float/double field of DreamBoothConfig, nested ones included."""
    out = []
    for fd in descriptor.fields:
        if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            assert not fd.is_repeated, f"{prefix}{fd.name}: repeated floats need a check here"
            out.append(prefix + fd.name)
        elif fd.message_type is not None and not fd.is_repeated:
            out += float_fields(fd.message_type, f"{prefix}{fd.name}.")
    return out


def test_every_float_setting_has_a_range(stack, subject_pngs):
    """Walks the contract, so a float added to DreamBoothConfig later is checked too."""
    paths = float_fields(trainer_pb2.DreamBoothConfig.DESCRIPTOR)
    assert {"weight_decay", "max_grad_norm", "prior_preservation.loss_weight", "lora.alpha",
            "lora.dropout", "prior_preservation.generation.cfg_scale"} <= set(paths)
    for path in paths:
        for value in (1e30, -1e30):
            cfg = job_config(stack.base_model_id, subject_pngs[:1])
            *owners, name = path.split(".")
            msg = cfg
            for o in owners:
                msg = getattr(msg, o)
            setattr(msg, name, value)
            d = refused(stack, cfg)
            assert d.code == grpc.StatusCode.INVALID_ARGUMENT, (path, value)
            assert d.fields == [f"config.{path}"], (path, value, d.violations)


# -------------------------------------------------------------------------- names

def test_names_of_things_are_checked_up_front(stack, subject_pngs):
    for field, value in (("sampler", "../../etc/passwd"), ("sampler", "no-such-sampler"),
                         ("schedule", "karras/../x")):
        cfg = job_config(stack.base_model_id, subject_pngs[:1], prior=True)
        setattr(cfg.prior_preservation.generation, field, value)
        assert refused(stack, cfg).fields == [f"config.prior_preservation.generation.{field}"]
    for method in (trainer_pb2.TRAINING_METHOD_LORA, trainer_pb2.TRAINING_METHOD_FULL):
        cfg = job_config(stack.base_model_id, subject_pngs[:1], method=method)
        cfg.lora.target_modules.extend(["to_q", "attn1.to_out.0", "../unet/*", "to_k|to_v"])
        d = refused(stack, cfg)
        assert d.fields == ["config.lora.target_modules[2]", "config.lora.target_modules[3]"]
    cfg = job_config(stack.base_model_id, subject_pngs[:1], method=trainer_pb2.TRAINING_METHOD_LORA)
    cfg.lora.target_modules.extend(["to_q", "to_out.0"])
    cfg.prior_preservation.generation.sampler = "DPM++ 2M Karras"  # a known alias
    stack.trainer_stub.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(config=cfg, validate_only=True), timeout=60)


@pytest.mark.parametrize("name", ["../../escape.png", "a/b.png", "a\\b.png", ".hidden.png",
                                  "..", "captions.json", "MANIFEST.json", "x" * 252 + ".png",
                                  "nul\0.png", "é" * 130 + ".png"])
def test_bad_file_names_are_refused_before_any_write(stack, subject_pngs, name):
    jobs_before = folders(trainer_dir(stack) / "jobs")
    cfg = job_config(stack.base_model_id, subject_pngs[:2])
    cfg.instance_images[1].filename = name
    d = refused(stack, cfg)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.fields == ["config.instance_images[1].filename"], d.violations
    assert folders(trainer_dir(stack) / "jobs") == jobs_before

    rows = dataset_rows(stack)
    d = upload_refused(stack, [chunk("fine.png", subject_pngs[0]), chunk(name, subject_pngs[1])])
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.fields == ["chunk.filename"], d.violations
    assert dataset_rows(stack) == rows


def test_empty_uploads_are_refused(stack):
    rows = dataset_rows(stack)
    metadata_only = trainer_pb2.UploadImagesRequest(
        metadata=trainer_pb2.UploadImagesMetadata(name="x"))
    for messages in ([], [metadata_only]):
        d = upload_refused(stack, messages)
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.fields == ["chunk"]
    assert dataset_rows(stack) == rows


def test_adding_to_a_dataset_keeps_what_it_holds(stack, subject_pngs):
    up = upload(stack, [chunk("a.png", subject_pngs[0])])
    more = upload(stack, [trainer_pb2.UploadImagesRequest(metadata=trainer_pb2.UploadImagesMetadata(
        dataset_id=up.dataset_id)), chunk("b.png", subject_pngs[1])])
    assert more.image_count == 2
    with pytest.raises(grpc.RpcError) as info:  # a name it holds is not silently replaced
        upload(stack, [trainer_pb2.UploadImagesRequest(metadata=trainer_pb2.UploadImagesMetadata(
            dataset_id=up.dataset_id)), chunk("c.png", subject_pngs[2]),
            chunk("a.png", subject_pngs[3])])
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert folders(trainer_dir(stack) / "datasets" / up.dataset_id) == ["a.png", "b.png"]


# -------------------------------------------------------------------------- failures while writing

def test_a_failed_upload_leaves_no_dataset(stack, subject_pngs):
    """The datasets folder cannot be written (here: a file is in its way): the call fails and
    neither a dataset row nor a folder stays behind."""
    datasets = trainer_dir(stack) / "datasets"
    aside = datasets.with_name("datasets.aside")
    if datasets.exists():
        datasets.rename(aside)
    datasets.write_text("in the way")
    try:
        rows = dataset_rows(stack)
        d = upload_refused(stack, [chunk("a.png", subject_pngs[0])])
        assert d.code == grpc.StatusCode.INTERNAL
        assert dataset_rows(stack) == rows
    finally:
        datasets.unlink()
        if aside.exists():
            aside.rename(datasets)


def test_a_job_that_cannot_be_stored_leaves_no_folder(stack, subject_pngs):
    """The job store stays locked past its busy timeout while a job is created: the call
    fails UNAVAILABLE (retry) and the job folder written for it is removed."""
    db = sqlite3.connect(trainer_dir(stack) / "trainer.sqlite3", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        d = refused(stack, job_config(stack.base_model_id, subject_pngs[:2]), job_id="locked-out")
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert d.code == grpc.StatusCode.UNAVAILABLE, d
    assert not (trainer_dir(stack) / "jobs" / "locked-out").exists()
    with pytest.raises(grpc.RpcError) as info:
        stack.trainer_stub.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id="locked-out"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_upload_stream_is_bounded_in_bytes(subject_pngs):
    """The stream is held in memory until every picture is checked: a client may not make it
    hold more than max_upload_bytes, however many pictures it splits them into."""
    from boothstudio.services.trainer.options import Limits
    from boothstudio.services.trainer.uploads import receive
    from boothstudio.shared.errors import InvalidArgument

    limits = Limits(max_upload_bytes=3 * max(len(p) for p in subject_pngs))

    async def stream(count: int):  # type: ignore[no-untyped-def]
        for i in range(count):
            yield chunk(f"{i}.png", subject_pngs[i % len(subject_pngs)])

    _, _, files = await receive(stream(3), store=None, limits=limits)  # type: ignore[arg-type]
    assert len(files) == 3
    with pytest.raises(InvalidArgument) as info:
        await receive(stream(8), store=None, limits=limits)  # type: ignore[arg-type]
    assert info.value.fields == ["chunk.data"]


def test_an_upload_never_replaces_a_picture_another_call_wrote(tmp_path, subject_pngs):
    """Two uploads of one name to one dataset at once: both pass the 'already there?' check,
    then the second used to overwrite the first's file (and, its row refused, delete it)."""
    from boothstudio.services.trainer.options import Limits
    from boothstudio.services.trainer.store import JobStore
    from boothstudio.services.trainer.uploads import UploadedFile, save
    from boothstudio.shared.errors import AlreadyExists

    store = JobStore(tmp_path / "trainer.sqlite3")
    try:
        first = save(store, tmp_path / "datasets", Limits(), "", "d",
                     [UploadedFile("a.png", "", bytearray(subject_pngs[0]))])
        folder = tmp_path / "datasets" / first.dataset_id
        # the other call's file is on disk, its row not yet in the store
        (folder / "b.png").write_bytes(subject_pngs[1])
        with pytest.raises(AlreadyExists):
            save(store, tmp_path / "datasets", Limits(), first.dataset_id, "",
                 [UploadedFile("c.png", "", bytearray(subject_pngs[2])),
                  UploadedFile("b.png", "", bytearray(subject_pngs[3]))])
        assert (folder / "b.png").read_bytes() == subject_pngs[1]  # theirs, untouched
        assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png"]  # ours undone
    finally:
        store.close()


def test_worker_observations_do_not_pile_up_while_the_service_runs(tmp_path):
    """Workers append a row per step; the service once pruned them only when it started."""
    from boothstudio.services.trainer import metrics as trainer_metrics
    from boothstudio.services.trainer.store import JobStore

    store = JobStore(tmp_path / "trainer.sqlite3")
    try:
        collector = trainer_metrics.TrainerMetrics(store)
        list(collector.collect())  # first scrape
        store.observe("job", [(trainer_metrics.STEP_SECONDS, "", 0.1)] * 5)
        store.db.execute("UPDATE observations SET time = 0")  # two days old, say
        store.observe("job", [(trainer_metrics.STEP_SECONDS, "", 0.1)] * 2)
        collector.pruned_at -= trainer_metrics.PRUNE_EVERY_SECONDS + 1  # an hour later
        list(collector.collect())
        assert store.db.query_one("SELECT COUNT(*) FROM observations")[0] == 2
    finally:
        store.close()
