"""Bad job configurations are rejected before anything is queued, naming the field; uploads;
jobs created from a job's config.yaml. No training runs here."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from boothstudio.services.trainer.jobfile import request_from_yaml
from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import trainer_pb2
from tests.trainer.helpers import (
    JobState,
    Stack,
    create,
    job_config,
    png_bytes,
    start_stack,
    wait_state,
)


@pytest.fixture(scope="module")
def stack(module_services, untrained_model) -> Stack:
    return start_stack(module_services, untrained_model)


def rejected(stack: Stack, cfg: trainer_pb2.DreamBoothConfig) -> tuple[grpc.StatusCode, list[str]]:
    with pytest.raises(grpc.RpcError) as info:
        stack.trainer_stub.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(config=cfg), timeout=30)
    d = decode_rpc_error(info.value)
    return d.code, d.fields


def test_no_images(stack, subject_pngs):
    code, fields = rejected(stack, job_config(stack.base_model_id, []))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["config.instance_images"]


def test_unknown_model(stack, subject_pngs):
    code, fields = rejected(stack, job_config("no-such-model", subject_pngs))
    assert code == grpc.StatusCode.NOT_FOUND and fields == ["config.base_model_id"]


def test_sdxl_full_fine_tune_is_refused_by_method(stack, subject_pngs, untrained_model,
                                                  tmp_path):
    """SDXL bases train LoRAs only (tests/trainer/test_sdxl.py); nothing is kept."""
    from boothstudio.v1 import catalog_pb2
    from tests.diffusion.tiny_sdxl import build_tiny_sdxl

    build_tiny_sdxl(tmp_path / "sdxl", Path(untrained_model) / "tokenizer")
    stack.catalog_stub.ImportModel(catalog_pb2.ImportModelRequest(
        diffusers_path=str(tmp_path / "sdxl"), model_id="trainer-sdxl"))
    with pytest.raises(grpc.RpcError) as info:
        stack.trainer_stub.CreateTrainingJob(trainer_pb2.CreateTrainingJobRequest(
            config=job_config("trainer-sdxl", subject_pngs)), timeout=30)
    d = decode_rpc_error(info.value)
    code, fields = d.code, d.fields
    assert "SDXL" in d.message and "LoRA" in d.message, d.message
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["config.method"]
    jobs = stack.trainer_stub.ListTrainingJobs(trainer_pb2.ListTrainingJobsRequest(), timeout=30)
    assert "trainer-sdxl" not in {j.config.base_model_id for j in jobs.jobs}


def test_zero_steps(stack, subject_pngs):
    code, fields = rejected(stack, job_config(stack.base_model_id, subject_pngs, steps=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["config.max_train_steps"]


def test_corrupt_image(stack, subject_pngs):
    pngs = [subject_pngs[0], subject_pngs[1][:60], subject_pngs[2]]
    code, fields = rejected(stack, job_config(stack.base_model_id, pngs))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["config.instance_images[1].data"]


def test_too_many_images(stack, subject_pngs):
    code, fields = rejected(stack, job_config(stack.base_model_id, subject_pngs * 3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["config.instance_images"]


def test_several_problems_at_once(stack, subject_pngs):
    cfg = job_config("no-such-model", subject_pngs, steps=0,
                     precision=trainer_pb2.PRECISION_FP16_MIXED, ema_decay=1.0)
    code, fields = rejected(stack, cfg)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(fields) == {"config.base_model_id", "config.max_train_steps", "config.precision",
                           "config.ema_decay"}


def test_identifier_learning_rate_checked(stack, subject_pngs):
    for bad in (
        job_config(stack.base_model_id, subject_pngs, identifier_learning_rate=-1e-3),
        job_config(stack.base_model_id, subject_pngs, identifier_learning_rate=5e-3,
                   method=trainer_pb2.TRAINING_METHOD_LORA),
    ):
        code, fields = rejected(stack, bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert fields == ["config.identifier_learning_rate"]


def test_random_crop_scale_checked(stack, subject_pngs):
    for bad in (0.1, 1.5, -0.5, float("nan")):
        code, fields = rejected(stack, job_config(stack.base_model_id, subject_pngs,
                                                  random_crop_scale=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert fields == ["config.random_crop_scale"]


def test_masked_loss_checked(stack, subject_pngs):
    """The weight must be in [0, 1]; a picture with nothing opaque is refused by name; with
    no alpha anywhere the job is accepted with a warning (it trains on whole pictures)."""
    from PIL import Image

    from research.embedded_model.scenes import subject_images

    cutouts = [png_bytes(img) for img, _ in subject_images(3, alpha=True)]
    for bad in (1.5, -0.1, float("nan")):
        code, fields = rejected(stack, job_config(stack.base_model_id, cutouts,
                                                  masked_loss_background_weight=bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert fields == ["config.masked_loss_background_weight"]
    clear = png_bytes(Image.new("RGBA", (64, 64), (200, 0, 0, 0)))
    code, fields = rejected(stack, job_config(stack.base_model_id,
                                              [cutouts[0], clear, cutouts[2]],
                                              masked_loss_background_weight=0.1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["config.instance_images[1].data"]
    for pngs, warned in ((cutouts, []), (subject_pngs, ["NO_MASKS"])):
        cfg = job_config(stack.base_model_id, pngs, masked_loss_background_weight=0.0)
        job = stack.trainer_stub.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(config=cfg, validate_only=True), timeout=30).job
        assert [w.reason for w in job.warnings if w.reason == "NO_MASKS"] == warned
        assert job.config.HasField("masked_loss_background_weight")


def test_validate_only_resolves_defaults_and_warns(stack, subject_pngs):
    cfg = job_config(stack.base_model_id, subject_pngs, identifier="sks")
    cfg.ClearField("max_train_steps")
    job = stack.trainer_stub.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(config=cfg, validate_only=True), timeout=30).job
    assert job.state == trainer_pb2.TRAINING_JOB_STATE_UNSPECIFIED and not job.job_id
    c = job.config
    assert c.max_train_steps == 400 and c.resolution == 64 and c.learning_rate == 1e-4
    assert c.instance_prompt == "a sks circle" and job.trigger_phrase == "a sks circle"
    assert not c.instance_images  # bytes are not echoed
    assert [w.reason for w in job.warnings] == ["COMMON_IDENTIFIER"]
    assert job.warnings[0].field == "config.identifier"
    # no identifier: a rare single token is picked
    cfg.ClearField("identifier")
    job = stack.trainer_stub.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(config=cfg, validate_only=True), timeout=30).job
    assert job.config.identifier == "zwx"
    listed = stack.trainer_stub.ListTrainingJobs(trainer_pb2.ListTrainingJobsRequest())
    assert listed.total_size == 0


def test_upload_then_create_from_dataset(stack, subject_pngs):
    def chunks():
        yield trainer_pb2.UploadImagesRequest(
            metadata=trainer_pb2.UploadImagesMetadata(name="subject"))
        for i, data in enumerate(subject_pngs[:3]):
            half = len(data) // 2
            for part in (data[:half], data[half:]):
                yield trainer_pb2.UploadImagesRequest(
                    chunk=trainer_pb2.ImageChunk(filename=f"s{i}.png", data=part))

    up = stack.trainer_stub.UploadImages(chunks(), timeout=30)
    assert up.image_count == 3 and [i.width for i in up.images] == [64, 64, 64]
    cfg = job_config(stack.base_model_id, [], dataset_id=up.dataset_id)
    job = stack.trainer_stub.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(config=cfg, validate_only=True), timeout=30).job
    assert job.instance_image_count == 3

    def bad():
        yield trainer_pb2.UploadImagesRequest(
            chunk=trainer_pb2.ImageChunk(filename="x.png", data=b"not an image"))

    with pytest.raises(grpc.RpcError) as info:
        stack.trainer_stub.UploadImages(bad(), timeout=30)
    assert decode_rpc_error(info.value).fields == ["chunk.data"]


def test_job_from_yaml(stack, subject_pngs, tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    for i, data in enumerate(subject_pngs[:3]):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(data)
    (tmp_path / "job.yaml").write_text(
        f"display_name: from yaml\nbase_model_id: {stack.base_model_id}\nclass_noun: circle\n"
        "max_train_steps: 7\nprecision: fp32\nstrategy: ddp\ndevices: 2\n"
        "prior_preservation: {enabled: true, class_image_count: 3}\n"
        "instance_images: [imgs/0.png, imgs/1.png,\n"
        "                  {path: imgs/2.png, caption: 'a {identifier}'}]\n")
    req = request_from_yaml(tmp_path / "job.yaml")
    req.validate_only = True
    job = stack.trainer_stub.CreateTrainingJob(req, timeout=30).job
    assert job.config.max_train_steps == 7 and job.config.strategy == trainer_pb2.STRATEGY_DDP
    assert job.instance_image_count == 3 and job.config.prior_preservation.class_image_count == 3


def test_queue_positions_cancel_and_list(stack, subject_pngs):
    """One job runs at a time here: the others wait with their positions; cancel empties it."""
    jobs = [create(stack, job_config(stack.base_model_id, subject_pngs[:1], steps=300))
            for _ in range(3)]
    listed = stack.trainer_stub.ListTrainingJobs(
        trainer_pb2.ListTrainingJobsRequest(states=[JobState.TRAINING_JOB_STATE_QUEUED])).jobs
    assert {j.job_id: j.queue_position for j in listed} == {
        jobs[1].job_id: 0, jobs[2].job_id: 1}
    for j in reversed(jobs):
        stack.trainer_stub.CancelTrainingJob(trainer_pb2.CancelTrainingJobRequest(job_id=j.job_id))
    for j in jobs:
        assert wait_state(stack, j.job_id, {JobState.TRAINING_JOB_STATE_CANCELLED}, 180)
    page = stack.trainer_stub.ListTrainingJobs(trainer_pb2.ListTrainingJobsRequest(page_size=2))
    assert len(page.jobs) == 2 and page.next_page_token and page.total_size == 3
    assert page.jobs[0].job_id == jobs[-1].job_id  # newest first
    nxt = stack.trainer_stub.ListTrainingJobs(
        trainer_pb2.ListTrainingJobsRequest(page_size=2, page_token=page.next_page_token))
    assert [j.job_id for j in nxt.jobs] == [jobs[0].job_id] and not nxt.next_page_token
