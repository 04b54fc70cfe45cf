"""Real DreamBooth jobs through the gRPC API, with a real Catalog, on the tiny untrained model:
end to end (watch, samples, checkpoints, export, registration), the class-image cache, cancel /
resume / delete, LoRA, and DDP over two CPU processes."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import grpc
import pytest
from safetensors import safe_open

from boothstudio.services.trainer.jobfile import request_from_yaml
from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import catalog_pb2, generator_pb2, generator_pb2_grpc, trainer_pb2
from tests.trainer.helpers import (
    JobState,
    Stack,
    create,
    get,
    job_config,
    run_to_success,
    start_stack,
    states,
    wait_job,
    wait_state,
    watch,
    worker_log,
)


@pytest.fixture(scope="module")
def stack(module_services, untrained_model) -> Stack:
    s = start_stack(module_services, untrained_model, ["--set", "max_running=2"])
    s.extra["generator"] = module_services(
        "generator", env={"BOOTHSTUDIO_CATALOG_ADDRESS": s.catalog.address})
    return s


def class_events(events):
    return [e.class_images for e in events if e.WhichOneof("event") == "class_images"]


def generate_pixels(stack: Stack, model_id: str, prompt: str, **kw: object):  # type: ignore[no-untyped-def]
    import io

    import numpy as np
    from PIL import Image

    gen = generator_pb2_grpc.GeneratorServiceStub(stack.extra["generator"].channel())
    out = list(gen.Generate(generator_pb2.GenerateRequest(
        model_id=model_id, prompt=prompt, steps=3, seed=3, count=1, skip_gallery=True, **kw),
        timeout=180))
    images = [e.image for e in out if e.WhichOneof("event") == "image"]
    assert len(images) == 1, out[-1]
    return np.asarray(Image.open(io.BytesIO(images[0].png)).convert("RGB"), np.int16)


def test_dreambooth_job_end_to_end(stack, subject_pngs):
    cfg = job_config(stack.base_model_id, subject_pngs, steps=3, prior=True,
                     checkpoint_every_steps=2, sample_every_steps=2, train_text_encoder=True,
                     validation_seeds=[1, 2])
    job = create(stack, cfg, display_name="striped circle")
    assert job.state == JobState.TRAINING_JOB_STATE_QUEUED and job.trigger_phrase == "a zwx circle"
    events = watch(stack, job.job_id, history=True)
    job = get(stack, job.job_id)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (job, worker_log(stack, job))
    assert states(events) == ["QUEUED", "PREPARING", "RUNNING", "EXPORTING", "SUCCEEDED"]

    metrics = [e.metrics for e in events if e.WhichOneof("event") == "metrics"]
    assert metrics and metrics[-1].step == 3 and metrics[-1].total_steps == 3
    last = metrics[-1]
    assert last.loss > 0 and last.instance_loss > 0 and last.HasField("prior_loss")
    assert abs(last.loss - (last.instance_loss + last.prior_loss)) < 1e-4
    assert last.learning_rate == pytest.approx(1e-4) and last.peak_memory_bytes > 100 << 20
    assert last.grad_norm > 0
    samples = [e.sample for e in events if e.WhichOneof("event") == "sample"]
    assert sorted({(s.step, s.seed) for s in samples}) == [(2, 1), (2, 2), (3, 1), (3, 2)]
    assert all(s.png.startswith(b"\x89PNG") and s.prompt == "a zwx circle" for s in samples)
    assert class_events(events)[-1] == trainer_pb2.ClassImagesProgress(ready=2, total=2, cached=0)
    saved = [e.checkpoint_saved.checkpoint for e in events
             if e.WhichOneof("event") == "checkpoint_saved"]
    assert {(c.step, c.kind) for c in saved} == {
        (s, k) for s in (2, 3)
        for k in (trainer_pb2.CHECKPOINT_KIND_FULL_STATE, trainer_pb2.CHECKPOINT_KIND_EXPORT)}

    # files: checkpoints apart from small exports, logs, config, outputs
    jd = Path(job.job_dir)
    full = {c.step: c for c in job.checkpoints if c.kind == trainer_pb2.CHECKPOINT_KIND_FULL_STATE}
    export = {c.step: c for c in job.checkpoints if c.kind == trainer_pb2.CHECKPOINT_KIND_EXPORT}
    assert set(full) == {2, 3} and set(export) == {2, 3}
    assert export[3].size_bytes < full[3].size_bytes / 3
    with safe_open(export[3].path, "pt") as f:
        assert any(k.startswith("text_encoder.") for k in f.keys())  # noqa: SIM118
    with open(jd / "logs" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and any(r.get("train/prior_loss") for r in rows)
    assert list((jd / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (jd / "output" / "diffusers" / "model_index.json").exists()
    assert (jd / "output" / f"{job.job_id}.safetensors").stat().st_size > 1 << 20
    assert sorted(p.name for p in (jd / "samples" / "step-000003").iterdir()) == [
        "p00-seed1.png", "p00-seed2.png"]

    # registered in Catalog, with trigger phrase and base model
    model = stack.catalog_stub.GetModel(
        catalog_pb2.GetModelRequest(model_id=job.output_model_id), timeout=30).model
    assert model.kind == catalog_pb2.MODEL_KIND_FINE_TUNED
    assert model.trigger_phrase == "a zwx circle"
    assert model.origin.base_model_id == stack.base_model_id
    assert model.origin.training_job_id == job.job_id

    # the Generator uses the fine-tuned model at once, called up by its trigger phrase
    pixels = generate_pixels(stack, job.output_model_id,
                             f"{model.trigger_phrase} on a white background")
    assert pixels.shape == (64, 64, 3)

    # the saved config.yaml recreates the same job
    req = request_from_yaml(jd / "config.yaml")
    req.validate_only = True
    again = stack.trainer_stub.CreateTrainingJob(req, timeout=30).job
    assert again.config == job.config

    # the class images are cached: same class settings -> none generated ...
    hit = create(stack, job_config(stack.base_model_id, subject_pngs[:2], steps=1, prior=True))
    # ... a changed class prompt never reuses them
    miss = create(stack, job_config(stack.base_model_id, subject_pngs[:2], steps=1, prior=True,
                                    class_prompt="a large circle"))
    hit_events = watch(stack, hit.job_id, history=True)
    miss_events = watch(stack, miss.job_id, history=True)
    progress = trainer_pb2.ClassImagesProgress
    assert class_events(hit_events)[-1] == progress(ready=2, total=2, cached=2)
    assert class_events(miss_events)[-1] == progress(ready=2, total=2, cached=0)
    assert get(stack, miss.job_id).state == JobState.TRAINING_JOB_STATE_SUCCEEDED


def test_cancel_resume_delete(stack, subject_pngs):
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=500)
    job = create(stack, cfg)
    wait_job(stack, job.job_id, lambda j: j.step >= 1)
    cancelled = stack.trainer_stub.CancelTrainingJob(
        trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id), timeout=30).job
    assert cancelled.state in (JobState.TRAINING_JOB_STATE_CANCELLING,
                               JobState.TRAINING_JOB_STATE_CANCELLED)
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_CANCELLED}, timeout=300)
    assert job.resumable and 1 <= job.step < 500
    full = [c for c in job.checkpoints if c.kind == trainer_pb2.CHECKPOINT_KIND_FULL_STATE]
    assert full and full[-1].step == job.step and Path(full[-1].path).exists()
    stopped_at = job.step

    resumed = stack.trainer_stub.ResumeTrainingJob(
        trainer_pb2.ResumeTrainingJobRequest(job_id=job.job_id), timeout=30).job
    assert resumed.state == JobState.TRAINING_JOB_STATE_QUEUED
    wait_job(stack, job.job_id, lambda j: j.step > stopped_at)
    stack.trainer_stub.CancelTrainingJob(trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id))
    wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_CANCELLED}, timeout=300)
    events = watch(stack, job.job_id, history=True)
    running = [e.state_changed for e in events if e.WhichOneof("event") == "state_changed"
               and e.state_changed.state == JobState.TRAINING_JOB_STATE_RUNNING]
    assert running[-1].reason == "RESUMED"
    assert f"step-{stopped_at:06d}" in running[-1].message

    # deleting an unfinished (here: queued again) job needs force; then every file goes
    stack.trainer_stub.ResumeTrainingJob(trainer_pb2.ResumeTrainingJobRequest(job_id=job.job_id))
    with pytest.raises(grpc.RpcError) as info:
        stack.trainer_stub.DeleteTrainingJob(trainer_pb2.DeleteTrainingJobRequest(job_id=job.job_id))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    freed = stack.trainer_stub.DeleteTrainingJob(
        trainer_pb2.DeleteTrainingJobRequest(job_id=job.job_id, force=True), timeout=60).freed_bytes
    assert freed > 1 << 20 and not Path(job.job_dir).exists()
    with pytest.raises(grpc.RpcError) as info:
        get(stack, job.job_id)
    assert decode_rpc_error(info.value).code == grpc.StatusCode.NOT_FOUND


def check_kohya_export(base: Path, diffusers_file: Path, kohya_file: Path) -> None:
    """The kohya/A1111 copy holds the diffusers file's factors, converts back to itself, and
    diffusers' own kohya loader draws with it the diffusers file's image."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from boothstudio.services.diffusion import lora_layouts

    ours, kohya = lora_layouts.read_lora(diffusers_file), lora_layouts.read_lora(kohya_file)
    assert kohya.layout == lora_layouts.KOHYA and kohya.modules.keys() == ours.modules.keys()
    assert all(torch.equal(kohya.modules[k].down, m.down) and torch.equal(kohya.modules[k].up, m.up)
               for k, m in ours.modules.items())
    stored = load_file(str(kohya_file))
    again = lora_layouts.to_kohya(lora_layouts.parse(lora_layouts.to_diffusers(kohya)))
    assert again.keys() == stored.keys() and all(torch.equal(again[k], stored[k]) for k in stored)

    def draw(lora: Path) -> np.ndarray:
        pipe = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(lora))
        return pipe("a zwx circle", num_inference_steps=3, output_type="np",
                    generator=torch.Generator().manual_seed(2)).images[0]

    assert np.array_equal(draw(kohya_file), draw(diffusers_file))


def test_lora_job(stack, subject_pngs, untrained_model):
    # a high learning rate so that two steps move the adapter visibly
    # adapters on the UNet and the text encoder (the text encoder's through peft, which the
    # Generator's diffusers loader must read back)
    cfg = job_config(stack.base_model_id, subject_pngs[:3], steps=2, learning_rate=5e-3,
                     method=trainer_pb2.TRAINING_METHOD_LORA, lora=trainer_pb2.LoraConfig(rank=4),
                     train_text_encoder=True)
    job, _ = run_to_success(stack, cfg)
    model = stack.catalog_stub.GetModel(
        catalog_pb2.GetModelRequest(model_id=job.output_model_id), timeout=30).model
    assert model.kind == catalog_pb2.MODEL_KIND_LORA
    assert model.origin.base_model_id == stack.base_model_id
    lora_file = Path(job.job_dir) / "output" / "lora" / "pytorch_lora_weights.safetensors"
    assert lora_file.exists() and lora_file.stat().st_size < 1 << 20
    with safe_open(str(lora_file), "pt") as f:
        parts = {key.split(".")[0] for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    assert parts == {"unet", "text_encoder"}
    check_kohya_export(untrained_model, lora_file,
                       lora_file.parent / "kohya" / f"{job.job_id}.safetensors")
    export = [c for c in job.checkpoints if c.kind == trainer_pb2.CHECKPOINT_KIND_EXPORT][-1]
    full = [c for c in job.checkpoints if c.kind == trainer_pb2.CHECKPOINT_KIND_FULL_STATE][-1]
    assert export.size_bytes < 1 << 20 and full.size_bytes < 2 << 20  # adapters only

    # the Generator applies the adapter on top of the base model, for the LoRA's requests only
    base = generate_pixels(stack, stack.base_model_id, model.trigger_phrase)
    tuned = generate_pixels(stack, model.id, model.trigger_phrase)
    assert abs(tuned - base).mean() > 0.5
    assert (generate_pixels(stack, stack.base_model_id, model.trigger_phrase) == base).all()


def test_ddp_two_cpu_processes(stack, subject_pngs):
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=2,
                     strategy=trainer_pb2.STRATEGY_DDP, devices=2, accelerator="cpu")
    job = create(stack, cfg)
    started = time.monotonic()
    watch(stack, job.job_id)
    job = get(stack, job.job_id)
    log = worker_log(stack, job)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, log
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log
    assert time.monotonic() - started < 300


def test_class_prompts_from_captions(stack, subject_pngs):
    """Captioned instance images with class_prompts_from_captions: the class images are
    generated from each caption without the identifier, split evenly, each prompt cached on
    its own, and every class image trains with its own prompt."""
    import json

    cfg = job_config(stack.base_model_id, [], steps=1, prior=True)
    for i, (data, bg) in enumerate(zip(subject_pngs[:3], ("gray", "green", "gray"),
                                       strict=True)):
        cfg.instance_images.add(data=data, filename=f"s{i}.png",
                                caption=f"a {{identifier}} circle on a {bg} background")
    cfg.prior_preservation.class_image_count = 3
    cfg.prior_preservation.class_prompts_from_captions = True
    job, events = run_to_success(stack, cfg)
    assert class_events(events)[-1] == trainer_pb2.ClassImagesProgress(ready=3, total=3, cached=0)
    cache = next(p for p in Path(job.job_dir).parents if (p / "class_images").is_dir())
    counts = {}
    for manifest in (cache / "class_images").glob("*/manifest.json"):
        prompt = json.loads(manifest.read_text())["prompt"]
        counts[prompt] = len(list(manifest.parent.glob("*.png")))
    # two distinct captions share 3 images: 2 + 1
    assert counts["a circle on a gray background"] == 2
    assert counts["a circle on a green background"] == 1
