"""Model folders for service tests: an untrained tiny SD (the embedded architecture, random
weights), a 9-channel inpainting variant, and a single-file export. Built once per session."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

_built: dict[str, Path] = {}


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "boothstudio-tests"


def build_tiny(path: Path) -> Path:
    """The untrained tiny model, built once and cached across sessions (keyed by the builder's
    source, so a changed architecture rebuilds); `path` is used when the cache is unwritable."""
    import research.embedded_model.architecture as embedded

    if "tiny" in _built:
        return _built["tiny"]
    digest = hashlib.sha256(Path(embedded.__file__).read_bytes()).hexdigest()[:16]
    cached = _cache_root() / f"tiny-{digest}"
    if not (cached / "model_index.json").exists():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=cached.parent))
            embedded.build_untrained_pipeline(tmp / "model", seed=0)
            try:
                (tmp / "model").rename(cached)
            except OSError:  # built concurrently by another session: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            embedded.build_untrained_pipeline(path, seed=0)
            cached = path
    _built["tiny"] = cached
    return cached


def build_inpaint(tiny: Path, path: Path) -> Path:
    """The tiny model with a 9-channel UNet, saved as a StableDiffusionInpaintPipeline."""
    import torch
    from diffusers import UNet2DConditionModel

    from research.embedded_model.architecture import unet_config

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
    from boothstudio.services.diffusion.loading import load_pipeline
    from boothstudio.services.diffusion.single_file import export_single_file

    pipe, _ = load_pipeline(tiny)
    export_single_file(pipe, path)
    return path


def build_lora(tiny: Path, path: Path, *, rank: int = 4, seed: int = 3) -> Path:
    """A LoRA file for the tiny model with non-zero up-projections, so it changes the images.

    Written by diffusers' own `save_lora_weights` (the trainer's export path), read back by the
    Generator's `load_lora_weights`.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    path.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(path), unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        safe_serialization=True)
    return path / "pytorch_lora_weights.safetensors"
