"""Several concepts in one job through a real Catalog + Trainer: refusals by field before any
side effect, and kohya-style folders through `boothstudio train --kohya`. (A two-subject job's
training, samples tagged per concept and exact resume: test_concepts.py; its quality judged
with the detectors: research/dreambench/concepts.py.)"""

from __future__ import annotations

import json

import grpc
import pytest

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import trainer_pb2
from tests.trainer.helpers import (
    Stack,
    create,
    start_stack,
)


@pytest.fixture(scope="module")
def stack(module_services, untrained_model) -> Stack:
    return start_stack(module_services, untrained_model)


def _concepts(base_model_id: str, pngs: list[bytes]) -> trainer_pb2.DreamBoothConfig:
    cfg = trainer_pb2.DreamBoothConfig(base_model_id=base_model_id, max_train_steps=2, seed=1)
    for k, noun in enumerate(("circle", "square")):
        concept = cfg.concepts.add(identifier=("zwx", "qlo")[k], class_noun=noun)
        concept.instance_images.add(data=pngs[k], filename="0.png")
    return cfg


def test_bad_concepts_are_refused_by_field_before_anything_is_kept(stack, subject_pngs):
    cfg = _concepts(stack.base_model_id, subject_pngs)
    cfg.concepts[1].identifier = "zwx"
    cfg.concepts.add(identifier="vyn", class_noun="triangle")  # no pictures
    with pytest.raises(grpc.RpcError) as info:
        stack.trainer_stub.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(config=cfg, job_id="refused"), timeout=60)
    d = decode_rpc_error(info.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(d.fields) == {"config.concepts[1].identifier",
                             "config.concepts[2].instance_images"}, d.fields
    assert not stack.trainer_stub.ListTrainingJobs(
        trainer_pb2.ListTrainingJobsRequest(), timeout=30).jobs
    # a concept's dataset that does not exist is NOT_FOUND on its own field
    cfg = _concepts(stack.base_model_id, subject_pngs)
    cfg.concepts[1].ClearField("instance_images")
    cfg.concepts[1].dataset_id = "no-such-dataset"
    with pytest.raises(grpc.RpcError) as info:
        create(stack, cfg)
    d = decode_rpc_error(info.value)
    assert d.code == grpc.StatusCode.NOT_FOUND and d.fields == ["config.concepts[1].dataset_id"]


def test_cli_train_maps_a_kohya_folder_onto_concepts(stack, subject_pngs, tmp_path):
    from tests.sdk.test_cli import run_here

    root = tmp_path / "train"
    for name, pngs in (("10_zwx circle", subject_pngs[:2]), ("5_qlo square", subject_pngs[2:3])):
        (root / name).mkdir(parents=True)
        for i, data in enumerate(pngs):
            (root / name / f"{i}.png").write_bytes(data)
    (root / "10_zwx circle" / "0.txt").write_text("zwx circle on a gray background")
    (root / "notes").mkdir()  # not a concept folder: skipped
    address = ["--catalog", stack.catalog.address, "--trainer", stack.trainer.address]
    res = run_here(*address, "--json", "train", "--kohya", str(root), "--base-model",
                   stack.base_model_id, "--steps", "2", "--validate-only")
    assert res.returncode == 0, res.stderr
    job = json.loads(res.stdout)
    concepts = job["config"]["concepts"]
    assert [(c["identifier"], c["class_noun"], c["repeats"]) for c in concepts] == [
        ("zwx", "circle", 10), ("qlo", "square", 5)]
    assert [len(c["instance_images"]) for c in concepts] == [2, 1]
    assert concepts[0]["instance_images"][0]["caption"] == "zwx circle on a gray background"
    assert job["trigger_phrase"] == "a zwx circle, a qlo square"
    res = run_here(*address, "train", "--kohya", str(root / "notes"), "--base-model",
                   stack.base_model_id, "--validate-only")
    assert res.returncode == 2 and "kohya" in res.stderr, res.stderr
