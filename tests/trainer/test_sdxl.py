"""SDXL DreamBooth LoRA on a tiny random SDXL pipeline (two text encoders, pooled embeddings,
size conditioning): a job through a real Catalog + Trainer, its LoRA (diffusers and kohya files)
in plain diffusers' StableDiffusionXLPipeline and through the Generator, exact resume. (A full
fine-tune of an SDXL base is refused: tests/trainer/test_validation.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from boothstudio.v1 import catalog_pb2, trainer_pb2
from tests.diffusion.tiny_sdxl import build_tiny_sdxl
from tests.trainer.helpers import (
    job_config,
    run_to_success,
    start_stack,
)
from tests.trainer.test_jobs import generate_pixels
from tests.trainer.test_resume import _weights


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory, untrained_model: Path) -> Path:
    out = tmp_path_factory.mktemp("tiny-sdxl") / "model"
    build_tiny_sdxl(out, untrained_model / "tokenizer")
    return out


def _draw(base: Path, lora: Path | None) -> np.ndarray:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(base, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe("a zwx circle", num_inference_steps=3, width=32, height=32, output_type="np",
                generator=torch.Generator().manual_seed(2)).images[0]


def test_sdxl_lora_job_through_the_services(start_service, tiny_sdxl, subject_pngs):
    stack = start_stack(start_service, tiny_sdxl)
    stack.extra["generator"] = start_service(
        "generator", env={"BOOTHSTUDIO_CATALOG_ADDRESS": stack.catalog.address})
    # both text encoders get adapters too; prior preservation draws SDXL class images
    cfg = job_config(stack.base_model_id, subject_pngs[:3], steps=2, learning_rate=5e-2,
                     method=trainer_pb2.TRAINING_METHOD_LORA, lora=trainer_pb2.LoraConfig(rank=4),
                     train_text_encoder=True, text_encoder_learning_rate=1e-2,
                     text_encoder_2_learning_rate=5e-3, resolution=32,
                     random_flip=True, prior=True, class_prompt="a circle", identifier="zwx")
    job, _ = run_to_success(stack, cfg)
    model = stack.catalog_stub.GetModel(
        catalog_pb2.GetModelRequest(model_id=job.output_model_id), timeout=30).model
    assert model.kind == catalog_pb2.MODEL_KIND_LORA
    assert model.origin.base_model_id == stack.base_model_id
    lora_file = Path(job.job_dir) / "output" / "lora" / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora_file), "pt") as f:
        parts = {key.split(".")[0] for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    assert parts == {"unet", "text_encoder", "text_encoder_2"}
    plain = _draw(tiny_sdxl, None)
    tuned = _draw(tiny_sdxl, lora_file)
    assert np.abs(tuned - plain).mean() > 1e-3  # the LoRA changes the image
    # the kohya/A1111 copy (lora_te1_/lora_te2_) draws the same image through diffusers'
    # own kohya loader
    kohya = lora_file.parent / "kohya" / f"{job.job_id}.safetensors"
    with safe_open(str(kohya), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("lora_te1_") for k in keys)
    assert any(k.startswith("lora_te2_") for k in keys)
    assert np.allclose(_draw(tiny_sdxl, kohya), tuned, atol=1e-4)
    # the Generator draws the LoRA model on its SDXL base
    size = {"width": 64, "height": 64}
    base = generate_pixels(stack, stack.base_model_id, model.trigger_phrase, **size)
    adapted = generate_pixels(stack, model.id, model.trigger_phrase, **size)
    assert abs(adapted - base).mean() > 0.5


def _sdxl_spec(tmp: Path, name: str, model: Path, pngs: list[bytes], steps: int,
               train_te: bool, **kw):
    from boothstudio.services.trainer.options import Limits, resolve
    from boothstudio.services.trainer.train import JobSpec

    job_dir = tmp / name
    (job_dir / "instance").mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(pngs[:2]):
        (job_dir / "instance" / f"{i}.png").write_bytes(data)
    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id="tiny-sdxl", class_noun="circle", max_train_steps=steps, seed=5,
        learning_rate=1e-2, text_encoder_learning_rate=1e-3, train_text_encoder=train_te,
        method=trainer_pb2.TRAINING_METHOD_LORA, lora=trainer_pb2.LoraConfig(rank=4),
        random_flip=True, resolution=32, validation_prompts=["a {identifier} circle"],
        caption_dropout=0.3)
    cfg.prior_preservation.enabled = True
    cfg.prior_preservation.class_image_count = 2
    cfg.prior_preservation.generation.steps = 2
    for i, data in enumerate(pngs[:2]):
        cfg.instance_images.add(data=data, filename=f"{i}.png")
    resolved = resolve(cfg, base_model={"native_resolution": 32}, limits=Limits()).config
    return JobSpec(name, job_dir, resolved, {"id": "tiny-sdxl", "source_path": str(model),
                                            "format": "diffusers", "architecture": "sdxl"},
                   tmp / "class_cache", tmp / "memo.json", sample_steps=2, **kw)


@pytest.mark.parametrize("train_te", [True, False], ids=["text-encoders", "frozen-encoders"])
def test_sdxl_stop_and_resume_gives_the_same_weights(tmp_path, tiny_sdxl, subject_pngs,
                                                      train_te):
    """Frozen text encoders: their prompt encodings are kept between steps, and a resumed run
    computes them again."""
    from boothstudio.services.trainer.train import Reporter, run_job

    steps = 4
    full = run_job(_sdxl_spec(tmp_path, "full", tiny_sdxl, subject_pngs, steps, train_te),
                   Reporter())
    assert full.outcome == "succeeded" and full.step == steps
    first = run_job(_sdxl_spec(tmp_path, "split", tiny_sdxl, subject_pngs, steps, train_te,
                               stop_at_step=2), Reporter())
    assert first.outcome == "stopped" and first.step == 2
    second = run_job(_sdxl_spec(tmp_path, "split", tiny_sdxl, subject_pngs, steps, train_te),
                     Reporter())
    assert second.outcome == "succeeded" and second.step == steps

    a = _weights(tmp_path / "full" / "checkpoints" / "step-000004.ckpt")
    b = _weights(tmp_path / "split" / "checkpoints" / "step-000004.ckpt")
    assert a.keys() == b.keys()
    assert any(k.startswith("text_encoder_2.") for k in a) == train_te
    base = _weights(tmp_path / "split" / "checkpoints" / "step-000002.ckpt")
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-4  # it did train
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed run differs by {worst}"
