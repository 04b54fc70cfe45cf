"""The training options through a real Catalog + Trainer: a job with min-SNR-gamma, offset noise,
aspect-ratio buckets and the project's detectors as its validation scorer finishes, reports
each checkpoint's scores in the Watch stream, exports its best checkpoint, and, extended by
ResumeTrainingJob, ends with the weights of an uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from boothstudio.v1 import trainer_pb2
from tests.trainer.helpers import (
    JobState,
    Stack,
    job_config,
    run_to_success,
    start_stack,
    wait_state,
    worker_log,
)
from tests.trainer.test_training_options import DETECTORS, non_square


@pytest.fixture(scope="module")
def stack(module_services, untrained_model) -> Stack:
    return start_stack(module_services, untrained_model)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_scored_bucketed_job_exports_its_best_checkpoint_and_resumes_exactly(
        stack, subject_pngs, untrained_model, tmp_path):
    cfg = job_config(
        stack.base_model_id, non_square(subject_pngs), steps=2, prior=True, batch_size=2,
        min_snr_gamma=5.0, offset_noise=0.1, aspect_buckets=True, checkpoint_every_steps=1,
        validation_scorer=DETECTORS, export_best_checkpoint=True, validation_seeds=[1, 2],
        validation_prompts=["a {identifier} {class_noun} on a blue background",
                            "a {class_noun} on a blue background"])
    job, events = run_to_success(stack, cfg)

    # every checkpoint's scores, per validation prompt, in the Watch stream
    saved = [e.checkpoint_saved.checkpoint for e in events
             if e.WhichOneof("event") == "checkpoint_saved"]
    scored = {c.step: c for c in saved if c.kind == trainer_pb2.CHECKPOINT_KIND_EXPORT}
    assert sorted(scored) == [1, 2]
    prompts = ["a zwx circle on a blue background", "a circle on a blue background"]
    for c in saved:  # the full-state checkpoint carries them too
        assert [s.prompt for s in c.validation_scores] == prompts
        values = [s.score for s in c.validation_scores]
        assert all(0 <= v <= 1 for v in values)
        assert c.validation_score == pytest.approx(sum(values) / 2)

    # the exported model is the best scored checkpoint (the later one of a tie)
    best = max(scored, key=lambda step: (scored[step].validation_score, step))
    exporting = [e.state_changed for e in events if e.WhichOneof("event") == "state_changed"
                 and e.state_changed.state == JobState.TRAINING_JOB_STATE_EXPORTING]
    assert exporting[0].reason == "BEST_CHECKPOINT"
    assert f"step-{best:06d}" in exporting[0].message
    jd = Path(job.job_dir)
    unet = load_file(jd / "output" / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors")
    export = load_file(scored[best].path)
    # (the final model is the checkpoint's export, or, when the last is best, the weights
    # that export was rounded from)
    assert all(torch.equal(unet[k.removeprefix("unet.")].half(), v)
               for k, v in export.items() if k.startswith("unet."))

    # extended by one step, it ends where an uninterrupted 3-step run of its config ends
    resumed = stack.trainer_stub.ResumeTrainingJob(
        trainer_pb2.ResumeTrainingJobRequest(job_id=job.job_id, max_train_steps=3),
        timeout=30).job
    assert resumed.state == JobState.TRAINING_JOB_STATE_QUEUED
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_SUCCEEDED,
                                         JobState.TRAINING_JOB_STATE_FAILED}, timeout=600)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, worker_log(stack, job)
    assert job.step == 3

    from boothstudio.services.trainer.train import JobSpec, Reporter, run_job

    ref_dir = tmp_path / "reference"
    shutil.copytree(jd / "instance", ref_dir / "instance")
    config = trainer_pb2.DreamBoothConfig()
    config.CopyFrom(job.config)
    config.max_train_steps = 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the service's worker (worker_threads=1): the same sums
    try:
        ref = run_job(JobSpec("reference", ref_dir, config,
                              {"id": stack.base_model_id, "source_path": str(untrained_model),
                               "format": "diffusers"},
                              tmp_path / "class_images", sample_steps=2), Reporter())
    finally:
        torch.set_num_threads(threads)
    assert ref.outcome == "succeeded"
    a = _weights(ref_dir / "checkpoints" / "step-000003.ckpt")
    b = _weights(jd / "checkpoints" / "step-000003.ckpt")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"the resumed job differs from an uninterrupted run by {worst}"


def test_cli_train_takes_the_options_and_names_a_bad_one(stack, subject_pngs, tmp_path):
    import json

    from tests.sdk.test_cli import run_here

    folder = tmp_path / "subject"
    folder.mkdir()
    for i, data in enumerate(non_square(subject_pngs)):
        (folder / f"{i}.png").write_bytes(data)
    address = ["--catalog", stack.catalog.address, "--trainer", stack.trainer.address]
    common = ["train", str(folder), "--base-model", stack.base_model_id, "--class-noun",
              "circle", "--validate-only"]
    res = run_here(*address, "--json", *common, "--min-snr-gamma", "5", "--offset-noise",
                   "0.05", "--aspect-buckets", "--validation-scorer", DETECTORS, "--export-best")
    assert res.returncode == 0, res.stderr
    config = json.loads(res.stdout)["config"]
    assert config["min_snr_gamma"] == 5 and config["offset_noise"] == pytest.approx(0.05)
    assert config["aspect_buckets"] is True and config["export_best_checkpoint"] is True
    assert config["validation_scorer"] == DETECTORS
    res = run_here(*address, *common, "--min-snr-gamma", "-1")
    assert res.returncode == 2 and "config.min_snr_gamma" in res.stderr, res.stderr
    res = run_here(*address, *common, "--export-best")
    assert res.returncode == 2 and "config.export_best_checkpoint" in res.stderr, res.stderr
