"""Single-file checkpoints checked from their headers alone: no weights are read.

The Catalog registers a .safetensors checkpoint only when its header names a Stable Diffusion
architecture that matches the config folder it comes with; the weights load when a job first
uses the model (loading.load_pipeline).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from boothstudio.services.diffusion import loading

#: A header longer than this is not a checkpoint header (real ones are a few MB at most).
MAX_HEADER_BYTES = 100_000_000


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a .safetensors header (8-byte length + JSON), without loading weights."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
        return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise loading.ModelLoadError(
            "MODEL_CORRUPT", f"{path.name} is not a readable .safetensors file: {exc}"
        ) from exc


def inspect_single_file(path: Path, config: str | None) -> loading.ModelInfo:
    """Check an original-layout checkpoint against its config folder from headers alone (the
    weights load when a job first uses the model)."""
    if not path.is_file():
        raise loading.ModelLoadError("MODEL_NOT_FOUND", f"no such file: {path}")
    if path.suffix == ".ckpt":
        raise loading.ModelLoadError(
            "PICKLE_NOT_ALLOWED",
            ".ckpt files are pickles and are not imported: convert to .safetensors",
        )
    if path.suffix != ".safetensors":
        raise loading.ModelLoadError("MODEL_UNSUPPORTED", "expected a .safetensors file")
    if not config:
        raise loading.ModelLoadError(
            "CONFIG_REQUIRED",
            "a single-file checkpoint needs config_path: a local diffusers folder of the same "
            "architecture (no hub is reachable)",
            field="config",
        )
    cfg = loading.inspect_folder(Path(config))
    shapes = safetensors_shapes(path)
    arch, in_ch = loading.single_file_architecture(set(shapes), shapes)
    cfg_arch = "sd1" if cfg.architecture == "tiny-sd" else cfg.architecture
    if arch != cfg_arch or in_ch != cfg.unet_in_channels:
        raise loading.ModelLoadError(
            "CONFIG_MISMATCH",
            f"checkpoint is {arch} ({in_ch} UNet channels) but the config folder is "
            f"{cfg.architecture} ({cfg.unet_in_channels})",
            field="config",
        )
    return loading.ModelInfo(
        cfg.architecture,
        cfg.native_resolution,
        cfg.prediction_type,
        in_ch,
        cfg.pipeline_class,
        "single_file",
        str(path),
    )
