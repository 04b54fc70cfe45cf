"""SDXL conditioning in the trainer, against diffusers' own StableDiffusionXLPipeline: the text
embeddings and pooled embeddings, the size conditioning of each training picture (its original
size, its crop's corner in the flipped picture, the trained size), and the VAE kept in fp32
under mixed precision."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from boothstudio.services.trainer import sdxl
from boothstudio.services.trainer.module import DataSpec, DreamBoothModule, OptimSpec, StepBatches
from tests.diffusion.tiny_sdxl import build_tiny_sdxl


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory, untrained_model: Path):
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path_factory.mktemp("tiny-sdxl") / "model"
    build_tiny_sdxl(out, untrained_model / "tokenizer")
    return StableDiffusionXLPipeline.from_pretrained(out, local_files_only=True)


def _parts(pipe) -> dict:
    """Copies of the pipeline's parts (a module adds adapters to them)."""
    parts = {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
             "unet": pipe.unet, "scheduler": pipe.scheduler, **sdxl.extra_parts(pipe)}
    return {k: copy.deepcopy(v) for k, v in parts.items()}


def test_text_conditioning_is_the_pipelines(pipe) -> None:
    prompts = ["a zwx circle", "a circle on a beach"]
    length = pipe.tokenizer.model_max_length
    ids = sdxl.training_tokenizer(pipe)(prompts, padding="max_length", max_length=length,
                                        truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (2, 2, length)
    with torch.no_grad():
        ours, pooled = sdxl.encode_prompt(pipe.text_encoder, pipe.text_encoder_2, ids)
        ref, _, ref_pooled, _ = pipe.encode_prompt(prompts, device="cpu",
                                                   do_classifier_free_guidance=False)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(pooled, ref_pooled, atol=1e-6)
    dim = pipe.text_encoder_2.config.projection_dim
    expected = pipe._get_add_time_ids((40, 56), (3, 5), (32, 32), torch.float32, dim)
    assert torch.equal(sdxl.time_ids((40, 56), (3, 5), (32, 32))[None], expected)


def test_size_conditioning_of_each_picture() -> None:
    """Original size as given, the target the crop, and the corner where the crop was taken
    from the picture as it was flipped (diffusers flips, then crops)."""
    torch.manual_seed(0)
    wide = torch.rand(3, 32, 48) * 2 - 1  # resized already: short side 32
    data = StepBatches(DataSpec(3, 1, 32, False, True, size_conditioning=True), [wide],
                       torch.zeros(1, 2, 77, dtype=torch.long), total=40,
                       instance_sizes=[(400, 600)])
    corners = set()
    flips = set()
    for i in range(40):
        batch = data[i]
        orig_h, orig_w, top, left, h, w = (int(v) for v in batch["time_ids"][0])
        assert (orig_h, orig_w, h, w) == (400, 600, 32, 32)
        pixels = batch["pixels"][0]
        flipped = torch.equal(wide.flip(-1)[:, top:top + 32, left:left + 32], pixels)
        assert flipped or torch.equal(wide[:, top:top + 32, left:left + 32], pixels)
        corners.add((top, left))
        flips.add(flipped)
    assert flips == {True, False} and len(corners) > 3


def test_vae_encodes_in_fp32_under_mixed_precision(pipe) -> None:
    parts = _parts(pipe)
    module = DreamBoothModule(parts, OptimSpec(1e-4, 1e-4, 0.0, "constant", 0, 2),
                              lora={"rank": 4, "alpha": 4, "dropout": 0.0,
                                    "target_modules": ["to_q", "to_v"]})
    seen: list[torch.dtype] = []
    hook = parts["vae"].encoder.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    batch = {"pixels": torch.rand(1, 3, 32, 32) * 2 - 1, "n_instance": 1, "noise_seed": 1,
             "input_ids": torch.zeros(1, 2, pipe.tokenizer.model_max_length, dtype=torch.long),
             "time_ids": sdxl.time_ids((32, 32), (0, 0), (32, 32))[None]}
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _, _ = module.compute_loss(batch)
    finally:
        hook.remove()
    assert seen == [torch.float32] and torch.isfinite(loss)


@pytest.mark.parametrize("own_rate", [None, 3e-3])
def test_second_text_encoder_learning_rate(pipe, own_rate) -> None:
    """With train_text_encoder, both encoders' adapters train: the second at its own rate when
    one is given, else at text_encoder_learning_rate."""
    optim = OptimSpec(1e-4, 2e-4, 0.0, "constant", 0, 2, train_text_encoder=True,
                      text_encoder_2_learning_rate=own_rate)
    module = DreamBoothModule(_parts(pipe), optim,
                              lora={"rank": 4, "alpha": 4, "dropout": 0.0,
                                    "target_modules": ["to_q", "to_v"]})
    groups = module.configure_optimizers()["optimizer"].param_groups
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    te1 = [p for p in module.text_encoder.parameters() if p.requires_grad]
    te2 = [p for p in module.text_encoder_2.parameters() if p.requires_grad]
    assert te1 and te2
    assert {rate[id(p)] for p in te1} == {2e-4}
    assert {rate[id(p)] for p in te2} == {own_rate or 2e-4}


def test_second_text_encoder_learning_rate_is_checked_by_field() -> None:
    from boothstudio.services.trainer.options import Limits, resolve
    from boothstudio.shared.errors import InvalidArgument
    from boothstudio.v1 import trainer_pb2

    cfg = trainer_pb2.DreamBoothConfig(base_model_id="m", class_noun="circle",
                                       text_encoder_2_learning_rate=2.0)
    cfg.instance_images.add(data=b"", filename="0.png")
    with pytest.raises(InvalidArgument) as err:
        resolve(cfg, base_model={"native_resolution": 32}, limits=Limits())
    assert any(v.field.endswith("text_encoder_2_learning_rate") for v in err.value.violations)


def test_size_conditioning_in_aspect_buckets() -> None:
    """A bucketed micro-batch's target size is its bucket, for its class image as well."""
    torch.manual_seed(1)
    wide = torch.rand(3, 32, 48) * 2 - 1
    square = torch.rand(3, 32, 32) * 2 - 1
    data = StepBatches(DataSpec(3, 1, 32, True, False, bucket_multiple=4,
                                size_conditioning=True), [wide],
                       torch.zeros(1, 2, 77, dtype=torch.long), [square],
                       torch.zeros(1, 2, 77, dtype=torch.long), total=2,
                       instance_sizes=[(320, 480)], class_sizes=[(64, 64)])
    batch = data[0]
    h, w = batch["pixels"].shape[-2:]
    assert w > h  # a wide bucket, not the square
    assert batch["time_ids"][:, 4:].tolist() == [[h, w], [h, w]]
    assert batch["time_ids"][:, :2].tolist() == [[320, 480], [64, 64]]
