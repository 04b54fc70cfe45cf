"""A job's config.yaml creates the same job again, for jobs of several concepts too: through
the job-file tool (`python -m boothstudio.services.trainer.jobfile submit`, i.e.
request_from_yaml) and through `boothstudio train --config`. Each concept keeps its pictures
(under their own file names), captions, prompts, validation prompts and prior settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from boothstudio.clients.sdk import BoothStudio
from boothstudio.clients.sdk.cli.output import to_jsonable
from boothstudio.services.trainer.jobfile import request_from_yaml, split_validation_prompts
from boothstudio.v1 import trainer_pb2
from tests.trainer.helpers import JobState, Stack, create, start_stack, wait_state


@pytest.fixture(scope="module")
def stack(module_services, untrained_model) -> Stack:
    return start_stack(module_services, untrained_model)


def two_concepts(base_model_id: str, pngs: list[bytes]) -> trainer_pb2.DreamBoothConfig:
    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id=base_model_id, max_train_steps=500, seed=3, min_snr_gamma=5.0,
        validation_prompts=["a photo of a table"])
    cfg.prior_preservation.enabled = True
    cfg.prior_preservation.class_image_count = 2
    zwx = cfg.concepts.add(identifier="zwx", class_noun="circle", repeats=3,
                           instance_prompt="a {identifier} {class_noun} {{literal}}",
                           validation_prompts=["a {identifier} {class_noun} on grass"])
    zwx.instance_images.add(data=pngs[0], filename="0.png", caption="a zwx circle, close up")
    zwx.instance_images.add(data=pngs[1], filename="1.png")
    qlo = cfg.concepts.add(identifier="qlo", class_noun="square", class_prompt="a big square")
    qlo.instance_images.add(data=pngs[2], filename="0.png")
    qlo.prior_preservation.enabled = True
    qlo.prior_preservation.class_image_count = 3
    qlo.prior_preservation.loss_weight = 0.5
    return cfg


def created_then_cancelled(stack: Stack, cfg: trainer_pb2.DreamBoothConfig
                           ) -> trainer_pb2.TrainingJob:
    """A job created (its folder and config.yaml written), then cancelled: no training needed."""
    job = create(stack, cfg)
    stack.trainer_stub.CancelTrainingJob(
        trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id), timeout=60)
    assert wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_CANCELLED}, 300)
    return job


def test_a_two_concept_config_yaml_resubmits_to_an_equal_config(stack, subject_pngs, tmp_path):
    from tests.sdk.test_cli import run_here

    job = created_then_cancelled(stack, two_concepts(stack.base_model_id, subject_pngs))
    assert len(job.config.concepts) == 2
    path = Path(job.job_dir) / "config.yaml"
    written = yaml.safe_load(path.read_text())
    # the file lists each concept's pictures, by their own names, and no job-level ones
    assert "instance_images" not in written
    assert written["concepts"][0]["instance_images"] == [
        {"path": "instance/c0-0.png", "filename": "0.png", "caption": "a zwx circle, close up"},
        {"path": "instance/c0-1.png", "filename": "1.png"}]
    assert written["concepts"][0]["validation_prompts"] == ["a zwx circle on grass"]
    assert written["validation_prompts"] == ["a photo of a table"]

    # the job-file tool's request
    req = request_from_yaml(path)
    req.validate_only = True
    again = stack.trainer_stub.CreateTrainingJob(req, timeout=60).job
    assert again.config == job.config

    # `boothstudio train --config` (the file's pictures sent inline, as the job's)
    address = ["--catalog", stack.catalog.address, "--trainer", stack.trainer.address]
    res = run_here(*address, "--json", "train", "--config", str(path), "--validate-only")
    assert res.returncode == 0, res.stderr
    by_cli = json.loads(res.stdout)["config"]
    with BoothStudio(catalog=stack.catalog.address, trainer=stack.trainer.address,
                     timeout=60) as client:
        original = client.get_training_job(job.job_id).config
    assert by_cli == json.loads(json.dumps(to_jsonable(original)))
    assert [c["identifier"] for c in by_cli["concepts"]] == ["zwx", "qlo"]
    assert [[i["filename"] for i in c["instance_images"]] for c in by_cli["concepts"]] == [
        ["c0-0.png", "c0-1.png"], ["c1-0.png"]]


def test_validation_prompts_go_back_to_their_concepts_in_order():
    cfg = trainer_pb2.DreamBoothConfig(validation_prompts=["a zwx dog", "zwx on a qlo cat",
                                                           "a qlo cat", "a table"])
    cfg.concepts.add(identifier="zwx", instance_prompt="a zwx dog")
    cfg.concepts.add(identifier="qlo", instance_prompt="a qlo cat")
    assert split_validation_prompts(cfg) == (
        [["a zwx dog", "zwx on a qlo cat"], ["a qlo cat"]], ["a table"])
    # a concept whose prompts come after another's in the list: the first concept takes all
    cfg.validation_prompts[:] = ["a qlo cat", "a zwx dog"]
    assert split_validation_prompts(cfg) == ([["a qlo cat", "a zwx dog"], ["a qlo cat"]], [])


def test_an_uploaded_dataset_job_resubmits_from_its_pictures(stack, subject_pngs, tmp_path):
    """A job made from an uploaded dataset (as the SDK, CLI and studio make them): the file
    holds its pictures, so the resubmitted job reads those instead of the dataset."""
    folder = tmp_path / "subject"
    folder.mkdir()
    for i, data in enumerate(subject_pngs[:2]):
        (folder / f"{i}.png").write_bytes(data)
    (folder / "1.txt").write_text("a zwx circle on a table")
    with BoothStudio(catalog=stack.catalog.address, trainer=stack.trainer.address,
                     timeout=60) as client:
        made = client.create_training_job(folder, base_model_id=stack.base_model_id,
                                          class_noun="circle", max_train_steps=500)
        client.cancel_training_job(made.job_id)
    assert wait_state(stack, made.job_id, {JobState.TRAINING_JOB_STATE_CANCELLED}, 300)
    job = stack.trainer_stub.GetTrainingJob(
        trainer_pb2.GetTrainingJobRequest(job_id=made.job_id), timeout=60).job
    assert job.config.dataset_id
    req = request_from_yaml(Path(job.job_dir) / "config.yaml")
    req.validate_only = True
    again = stack.trainer_stub.CreateTrainingJob(req, timeout=60).job
    assert not again.config.dataset_id
    assert [(i.filename, i.caption) for i in req.config.instance_images] == [
        ("0.png", ""), ("1.png", "a zwx circle on a table")]
    job.config.ClearField("dataset_id")
    assert again.config == job.config
