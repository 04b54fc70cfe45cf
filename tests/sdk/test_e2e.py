"""Every SDK call, sync and asyncio, against the real services running as processes on
loopback (Catalog, two Generators, Trainer; see conftest.py).

A call answered UNIMPLEMENTED fails the test, naming the RPC.
Rerun: `.venv/bin/pytest tests/sdk/test_e2e.py -v`
"""

from __future__ import annotations

import gc
import io
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from boothstudio.clients.sdk import (
    AsyncBoothStudio,
    BoothStudio,
    Finished,
    GenerationStatus,
    ImageReady,
    InvalidArgument,
    ModelKind,
    NotFound,
    Progress,
    StateChanged,
    TrainingProgress,
    TrainingState,
)
from tests.sdk.conftest import Stack, handled, pending, usable_model, waiting

FAST = {"steps": 3, "width": 64, "height": 64}


@pytest.fixture
def client(stack: Stack) -> BoothStudio:
    with stack.client(timeout=60) as c:
        yield c  # type: ignore[misc]


def default_model(client: BoothStudio) -> str:
    return usable_model(pending(client.list_models))


# -------------------------------------------------------------------------------- catalog


def test_errors_arrive_as_exceptions_with_the_field(client: BoothStudio) -> None:
    with pytest.raises(InvalidArgument) as e:
        client.list_models(page_size=5000)
    assert "page_size" in e.value.fields and e.value.reason
    assert "page_size" in e.value.message


def test_generation_error_names_the_field(client: BoothStudio) -> None:
    with pytest.raises(InvalidArgument) as e:
        pending(client.generate, "a red circle", steps=999)
    assert e.value.fields == ["steps"]


def test_catalog_calls(client: BoothStudio) -> None:
    model_id = default_model(client)
    model = client.get_model(model_id)
    assert model.id == model_id and model.kind is ModelKind.BASE and model.native_resolution
    assert model.raw is not None  # the protobuf stays reachable
    with pytest.raises(NotFound):
        client.get_model("no-such-model")
    samplers = pending(client.list_samplers)
    assert samplers.default_sampler and len(samplers) > 3
    euler = samplers.get("Euler a") or samplers.samplers[0]
    assert euler.schedules and isinstance(euler.parameters, list)
    backends = pending(client.list_backends)
    # (reachability is the catalog's view of its configured generator address, not checked)
    assert any(b.is_default for b in backends) and all(b.message for b in backends)
    assert any(b.capabilities.txt2img for b in backends)
    if model.source_path and Path(model.source_path).is_dir():
        copy = pending(
            client.import_model, model.source_path, model_id="sdk-copy", display_name="copy"
        )
        assert copy.id == "sdk-copy" and client.get_model("sdk-copy").display_name == "copy"
        client.delete_model("sdk-copy")
        with pytest.raises(NotFound):
            client.get_model("sdk-copy")


# ----------------------------------------------------------------------------- generation


def test_generate_returns_images_with_seeds(client: BoothStudio) -> None:
    result = pending(client.generate, "a red circle on a blue background", seed=5, count=2, **FAST)
    assert len(result) == 2 and result.seeds == [5, 6]
    assert [img.seed for img in result] == [5, 6]
    assert result[0].image.size == (64, 64) and result[0].png.startswith(b"\x89PNG")
    assert all(img.image_id for img in result)


def test_stream_yields_progress_before_images(client: BoothStudio) -> None:
    with waiting():
        events = list(client.stream_generate("a green square", **FAST))
    kinds = [type(e).__name__ for e in events]
    assert kinds[-1] == "Finished" and "Progress" in kinds and "ImageReady" in kinds
    assert kinds.index("Progress") < kinds.index("ImageReady")
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].step == progress[-1].total and all(e.job_id for e in events)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status is GenerationStatus.SUCCEEDED


def test_leaving_the_stream_cancels_the_job(stack: Stack, client: BoothStudio) -> None:
    before = sum(handled(g, "Generate", "CANCELLED") for g in stack.generators)
    with waiting():
        for event in client.stream_generate("a yellow triangle", steps=150, width=64, height=64):
            if isinstance(event, Progress):
                break  # the stream object is dropped: the RPC is cancelled
    gc.collect()  # "dropped" even if something still held the stream in a reference cycle
    # the server notices the cancelled RPC between two steps; on a busy machine that can take a
    # while: the deadline only catches a job that is never cancelled
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sum(handled(g, "Generate", "CANCELLED") for g in stack.generators) > before:
            break
        time.sleep(0.2)
    else:
        pytest.fail("no generator recorded a cancelled Generate")


def test_cancel_ends_with_finished_cancelled(client: BoothStudio) -> None:
    stream = client.stream_generate("a purple star", steps=150, width=64, height=64)
    last = None
    with waiting():
        for event in stream:
            last = event
            if isinstance(event, Progress) and event.step == 1:
                assert stream.cancel()
    assert isinstance(last, Finished) and last.status is GenerationStatus.CANCELLED
    assert not client.cancel_generation(stream.job_id)  # already finished


def test_img2img_and_inpaint(client: BoothStudio, tmp_path: Path) -> None:
    init = Image.new("RGB", (64, 64), "blue")
    ImageDraw.Draw(init).ellipse((16, 16, 48, 48), fill="red")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 32, 64), fill=255)
    init_path = tmp_path / "init.png"
    init.save(init_path)
    out = pending(client.generate, "a red circle", init_image=init_path, strength=0.5, **FAST)
    assert out[0].image.size == (64, 64)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    out = client.generate(
        "a green circle", init_image=init, mask=buf.getvalue(), mask_blur=2, seed=3, **FAST
    )
    assert out.seeds == [3]
    gallery = client.get_image(out[0].image_id, metadata_only=True)
    assert gallery.has_init_image and gallery.has_mask and gallery.png is None


def test_round_robin_spreads_generations(stack: Stack, client: BoothStudio) -> None:
    before = [handled(g, "Generate") for g in stack.generators]
    for seed in range(4):
        pending(client.generate, "a white circle", seed=seed, **FAST)
    after = [handled(g, "Generate") for g in stack.generators]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2]


def test_gallery_calls(client: BoothStudio, tmp_path: Path) -> None:
    result = pending(client.generate, "a black square", seed=11, count=2, **FAST)
    page = client.list_images(job_id=result.job_id)
    ids = {img.image_id for img in page}
    if not ids:  # the two generators keep separate galleries; list on the other one
        page = client.list_images(job_id=result.job_id)
        ids = {img.image_id for img in page}
    assert ids == set(result.image_ids)
    img = client.get_image(result.image_ids[0])
    assert img.png and img.prompt == "a black square" and img.seed == 11
    assert img.params["seed"] == 11
    again = client.generate(img.prompt, **img.params)  # reuse parameters
    assert again.seeds == [11]
    assert img.save(tmp_path / "x.png").stat().st_size == len(img.png)
    deleted = client.delete_images([*result.image_ids, "nope"])
    assert deleted.deleted_count == 2 and deleted.not_found_ids == ["nope"]
    with pytest.raises(NotFound):
        client.get_image(result.image_ids[0])


# ------------------------------------------------------------------------------ training


def subject_folder(tmp: Path, n: int = 3) -> Path:
    folder = tmp / "subject"
    folder.mkdir()
    for i in range(n):
        img = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(img).ellipse((8 + i, 8, 56 - i, 56), fill="orange")
        img.save(folder / f"img{i}.png")
    return folder


def test_training_job_lifecycle(client: BoothStudio, tmp_path: Path) -> None:
    base = default_model(client)
    folder = subject_folder(tmp_path)
    dataset = pending(client.upload_images, folder, name="orange", chunk_size=1000)
    assert dataset.image_count == 3 and dataset.dataset_id
    checked = client.create_training_job(
        folder, base_model_id=base, class_noun="ball", max_train_steps=2, validate_only=True
    )
    assert checked.state is TrainingState.UNSPECIFIED
    job = client.create_training_job(
        folder,
        base_model_id=base,
        class_noun="ball",
        identifier="zwx",
        max_train_steps=2,
        display_name="sdk e2e",
    )
    assert job.state is TrainingState.QUEUED and job.instance_image_count == 3
    events = []
    done = client.wait_for_training_job(job.job_id, timeout=600, on_event=events.append)
    assert done.state is TrainingState.SUCCEEDED and done.output_model_id
    assert any(isinstance(e, TrainingProgress) for e in events)
    assert isinstance(events[-1], StateChanged) and events[-1].state is TrainingState.SUCCEEDED
    assert client.get_model(done.output_model_id).kind in (ModelKind.FINE_TUNED, ModelKind.LORA)
    assert job.job_id in {j.job_id for j in client.list_training_jobs()}
    watched = list(client.watch_training_job(job.job_id, include_history=True))
    assert watched  # history replay of a finished job
    client.delete_training_job(job.job_id)
    with pytest.raises(NotFound):
        client.get_training_job(job.job_id)


def test_training_cancel_resume(client: BoothStudio, tmp_path: Path) -> None:
    base = default_model(client)
    job = pending(
        client.create_training_job,
        subject_folder(tmp_path),
        base_model_id=base,
        class_noun="ball",
        max_train_steps=5000,
    )
    with client.watch_training_job(job.job_id) as watch:
        for event in watch:
            if isinstance(event, TrainingProgress):
                break
    client.cancel_training_job(job.job_id)
    cancelled = client.wait_for_training_job(job.job_id, timeout=120, raise_on_failure=False)
    assert cancelled.state is TrainingState.CANCELLED
    if cancelled.resumable:
        resumed = client.resume_training_job(job.job_id)
        assert resumed.state in (
            TrainingState.QUEUED,
            TrainingState.PREPARING,
            TrainingState.RUNNING,
        )
    client.delete_training_job(job.job_id, force=True)


def test_training_from_yaml(client: BoothStudio, tmp_path: Path) -> None:
    base = default_model(client)
    subject_folder(tmp_path)
    config = tmp_path / "job.yaml"
    config.write_text(
        f"display_name: yaml job\nimages: subject\nbase_model_id: {base}\n"
        "class_noun: ball\nmax_train_steps: 1\nprior_preservation: false\n"
    )
    job = pending(client.create_training_job, config=config, validate_only=True)
    assert job.config.get("class_noun") == "ball"


# -------------------------------------------------------------------------------- asyncio


async def test_async_client_every_call(stack: Stack, tmp_path: Path) -> None:
    async with AsyncBoothStudio(
        stack.catalog.address,
        [g.address for g in stack.generators],
        stack.trainer.address,
        timeout=60,
    ) as client:
        base = usable_model(await client.list_models())
        assert (await client.get_model(base)).id == base
        with pytest.raises(InvalidArgument):
            await client.list_models(page_size=-1)
        with waiting():
            samplers = await client.list_samplers()
            backends = await client.list_backends()
            assert samplers.default_sampler and backends
            events = [e async for e in client.stream_generate("a red circle", seed=2, **FAST)]
            assert isinstance(events[-1], Finished)
            kinds = [type(e) for e in events]
            assert kinds.index(Progress) < kinds.index(ImageReady)
            result = await client.generate("a blue circle", seed=4, **FAST)
            assert result.seeds == [4]
            img = await client.get_image(result.image_ids[0])
            assert img.png
            assert (await client.list_images(page_size=5)).items
            assert (await client.delete_images(result.image_ids)).deleted_count == 1
            stream = client.stream_generate("x", steps=150, width=64, height=64)
            async for event in stream:
                if isinstance(event, Progress):
                    assert await stream.cancel()
            assert await client.cancel_generation(stream.job_id) is False
            job = await client.create_training_job(
                subject_folder(tmp_path),
                base_model_id=base,
                class_noun="ball",
                max_train_steps=1,
            )
            done = await client.wait_for_training_job(job.job_id, timeout=600)
            assert done.output_model_id
            assert (await client.get_training_job(job.job_id)).state is TrainingState.SUCCEEDED
            assert (await client.list_training_jobs()).items
            watched = [e async for e in client.watch_training_job(job.job_id, include_history=True)]
            assert watched
            await client.delete_training_job(job.job_id)
