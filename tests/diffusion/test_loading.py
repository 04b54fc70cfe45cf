"""The one loader: diffusers folders, single files in the original layout, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from boothstudio.services.diffusion.loading import (
    ModelLoadError,
    embedded_model_dir,
    inspect_folder,
    load_pipeline,
)
from boothstudio.services.diffusion.single_file import export_single_file, original_state_dict


def _image(pipe, seed: int = 3) -> np.ndarray:
    out = pipe(
        "a red circle on a white background",
        num_inference_steps=4,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return out.images[0]


def test_folder_reports_architecture_resolution_prediction(untrained_model_dir: Path) -> None:
    info = inspect_folder(untrained_model_dir)
    assert info.architecture == "tiny-sd"
    assert info.native_resolution == 64
    assert info.prediction_type == "epsilon"
    assert info.unet_in_channels == 4 and not info.inpainting


def test_single_file_round_trip_gives_the_same_image(tmp_path: Path) -> None:
    # The shipped model, exported to the layout A1111/ComfyUI load, and read back offline.
    model_dir = embedded_model_dir()
    pipe, _ = load_pipeline(model_dir)
    pipe.set_progress_bar_config(disable=True)
    single = export_single_file(pipe, tmp_path / "model.safetensors")
    keys = set(original_state_dict(pipe))
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    loaded, info = load_pipeline(single, config=model_dir)
    loaded.set_progress_bar_config(disable=True)
    assert info.source_format == "single_file" and info.architecture == "tiny-sd"
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert np.array_equal(_image(pipe), _image(loaded))


def test_ckpt_needs_opt_in_and_loads_weights_only(
    untrained_model_dir: Path, tmp_path: Path
) -> None:
    pipe, _ = load_pipeline(untrained_model_dir)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": original_state_dict(pipe)}, ckpt)
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(ckpt, config=untrained_model_dir)
    assert err.value.reason == "PICKLE_NOT_ALLOWED" and err.value.field == "allow_pickle"
    loaded, _ = load_pipeline(ckpt, config=untrained_model_dir, allow_pickle=True)
    assert torch.equal(loaded.unet.conv_in.weight, pipe.unet.conv_in.weight)


@pytest.mark.parametrize(
    ("make", "reason", "field"),
    [
        (lambda d, t: (t / "missing.safetensors", d), "MODEL_NOT_FOUND", "source"),
        (lambda d, t: (t / "no-such-folder", None), "MODEL_NOT_FOUND", "source"),
        (
            lambda d, t: (_write(t / "bad.safetensors", b"\x00garbage" * 8), d),
            "MODEL_CORRUPT",
            "source",
        ),
        (lambda d, t: (_write(t / "x.safetensors", b"{}"), None), "CONFIG_REQUIRED", "config"),
        (lambda d, t: ("someone/some-model", None), "MODEL_NOT_FOUND", "source"),
    ],
)
def test_bad_sources_are_clear_errors(
    untrained_model_dir: Path, tmp_path: Path, make, reason, field
) -> None:
    source, config = make(untrained_model_dir, tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(source, config=config)
    assert err.value.reason == reason
    assert err.value.field == field
    assert str(err.value)


def test_unsupported_pipeline_class_is_refused(untrained_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    copy = tmp_path / "weird"
    shutil.copytree(untrained_model_dir, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(copy)
    assert err.value.reason == "MODEL_UNSUPPORTED"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("pipeline_class", "unet_extra", "sample_size", "prediction", "arch", "resolution"),
    [
        ("StableDiffusionPipeline", {"cross_attention_dim": 768}, 64, "epsilon", "sd1", 512),
        ("StableDiffusionPipeline", {"cross_attention_dim": 1024}, 96, "v_prediction", "sd2", 768),
        ("StableDiffusionXLPipeline", {"cross_attention_dim": 2048,
                                       "addition_embed_type": "text_time"}, 128, "epsilon",
         "sdxl", 1024),
        ("StableDiffusionInpaintPipeline", {"cross_attention_dim": 768, "in_channels": 9}, 64,
         "epsilon", "sd1", 512),
    ],
)
def test_real_architectures_are_told_apart_from_their_configs(
        tmp_path: Path, pipeline_class, unet_extra, sample_size, prediction, arch,
        resolution) -> None:
    import json

    def write(rel: str, data: dict) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    write("model_index.json", {"_class_name": pipeline_class})
    write("unet/config.json", {"sample_size": sample_size, "in_channels": 4, **unet_extra})
    write("vae/config.json", {"block_out_channels": [128, 256, 512, 512]})
    write("scheduler/scheduler_config.json", {"prediction_type": prediction})
    info = inspect_folder(tmp_path)
    assert (info.architecture, info.native_resolution, info.prediction_type) == (
        arch, resolution, prediction)
    assert info.pipeline_class == pipeline_class
    assert info.inpainting == (unet_extra.get("in_channels") == 9)


def test_plain_from_pretrained_of_the_embedded_model_generates() -> None:
    """The obvious diffusers call, no dtype argument: every part must load in one dtype (the
    text encoder's config once said float16 while the UNet and VAE loaded as float32)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(embedded_model_dir()))
    parts = ("unet", "vae", "text_encoder")
    dtypes = {next(getattr(pipe, part).parameters()).dtype for part in parts}
    assert dtypes == {torch.float32}
    image = pipe("a red circle on a blue background", height=64, width=64,
                 num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
