"""Model folders for service tests: an untrained tiny SD (the embedded architecture, random
weights), a 9-channel inpainting variant, and a single-file export. Built once per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

_built: dict[str, Path] = {}


def build_tiny(path: Path) -> Path:
    """Build once per test session (catalog and generator tests share it)."""
    from services.diffusion.embedded import build_untrained_pipeline

    if "tiny" not in _built:
        build_untrained_pipeline(path, seed=0)
        _built["tiny"] = path
    return _built["tiny"]


def build_inpaint(tiny: Path, path: Path) -> Path:
    """The tiny model with a 9-channel UNet, saved as a StableDiffusionInpaintPipeline."""
    import torch
    from diffusers import UNet2DConditionModel

    from services.diffusion.embedded import unet_config

    shutil.copytree(tiny, path)
    torch.manual_seed(1)
    unet = UNet2DConditionModel(**{**unet_config(), "in_channels": 9})
    shutil.rmtree(path / "unet")
    unet.save_pretrained(path / "unet", safe_serialization=True)
    index = json.loads((path / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def build_single_file(tiny: Path, path: Path) -> Path:
    from services.diffusion.loading import load_pipeline
    from services.diffusion.single_file import export_single_file

    pipe, _ = load_pipeline(tiny)
    export_single_file(pipe, path)
    return path
