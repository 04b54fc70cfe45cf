"""One loader for every way a user hands us Stable Diffusion weights.

- a diffusers folder (``model_index.json``),
- a Hugging Face cache id, resolved offline (local files only: no hub is reachable),
- a single-file checkpoint in the original layout (.safetensors; .ckpt only with an explicit
  opt-in and weights-only unpickling) plus a local diffusers folder that supplies the configs.

SD 1.x, 2.x and SDXL are told apart from the configs (or, for a single file, from its keys),
and the right pipeline class is chosen.  Every failure is a ``ModelLoadError`` naming what is
wrong, never a bare traceback from deep inside diffusers.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "embedded_model"
EMBEDDED_MODEL_ID = "boothstudio-tiny"


class ModelLoadError(Exception):
    """A model could not be loaded. ``reason`` is machine-readable, ``field`` the culprit."""

    def __init__(self, reason: str, message: str, field: str = "source") -> None:
        super().__init__(message)
        # MODEL_NOT_FOUND, MODEL_CORRUPT, MODEL_UNSUPPORTED, CONFIG_REQUIRED, ...
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class ModelInfo:
    architecture: str  # sd1 | sd2 | sdxl | tiny-sd
    native_resolution: int
    prediction_type: str  # epsilon | v_prediction | sample
    unet_in_channels: int  # 4, or 9 for an inpainting model
    pipeline_class: str
    source_format: str  # diffusers | single_file | hf_cache
    path: str

    @property
    def inpainting(self) -> bool:
        return self.unet_in_channels == 9

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ModelLoadError("MODEL_CORRUPT", f"missing {path.name} in {path.parent}") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError("MODEL_CORRUPT", f"unreadable {path}: {exc}") from exc


def _architecture(unet_cfg: dict[str, Any]) -> str:
    if unet_cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    cross = unet_cfg.get("cross_attention_dim")
    if cross == 768:
        return "sd1"
    if cross == 1024:
        return "sd2"
    return "tiny-sd"


def inspect_folder(folder: Path, source_format: str = "diffusers") -> ModelInfo:
    """Read a diffusers folder's configs without loading any weights."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelLoadError("MODEL_NOT_FOUND", f"no such model folder: {folder}")
    index = _read_json(folder / "model_index.json")
    unet_cfg = _read_json(folder / "unet" / "config.json")
    vae_cfg = _read_json(folder / "vae" / "config.json")
    sched_cfg = _read_json(folder / "scheduler" / "scheduler_config.json")
    vae_scale = 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
    sample = unet_cfg.get("sample_size", 64)
    sample = sample[0] if isinstance(sample, list) else sample
    arch = _architecture(unet_cfg)
    cls = str(index.get("_class_name", "StableDiffusionPipeline"))
    if cls not in SUPPORTED_PIPELINES:
        supported = sorted(SUPPORTED_PIPELINES)
        raise ModelLoadError("MODEL_UNSUPPORTED",
                             f"unsupported pipeline {cls!r}; supported: {supported}")
    return ModelInfo(arch, int(sample) * vae_scale, sched_cfg.get("prediction_type", "epsilon"),
                     int(unet_cfg.get("in_channels", 4)), cls, source_format, str(folder))


#: the text encoders' config files of a diffusers folder (SDXL has two)
TEXT_ENCODER_CONFIGS = ("text_encoder/config.json", "text_encoder_2/config.json")


def text_encoder_widths(folder: Path) -> tuple[int, ...]:
    """Width of each text encoder's token vectors (what an embedding must match), from the
    configs alone: (768,) for SD 1.x, (768, 1280) for SDXL."""
    widths = []
    for rel in TEXT_ENCODER_CONFIGS:
        if (Path(folder) / rel).is_file():
            cfg = _read_json(Path(folder) / rel)
            widths.append(int(cfg.get("hidden_size", 0)))
    if not widths:
        raise ModelLoadError("MODEL_CORRUPT", f"no text encoder config in {folder}")
    return tuple(widths)


SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline", "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
}


def resolve_hf_cache(repo_id: str, cache_dir: str | None = None) -> Path:
    """The local snapshot folder of a Hugging Face id, without touching the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError) as exc:
        raise ModelLoadError("MODEL_NOT_FOUND",
                             f"{repo_id!r} is not in the local Hugging Face cache "
                             "(no hub is reachable: download it on a machine with access)") from exc


def single_file_architecture(keys: set[str], shapes: dict[str, tuple[int, ...]]) -> tuple[str, int]:
    """(architecture, unet in_channels) of an original-layout checkpoint, from its keys."""
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        arch = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        arch = "sd2"
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        arch = "sd1"
    else:
        raise ModelLoadError("MODEL_UNSUPPORTED",
                             "not a Stable Diffusion checkpoint: no known text-encoder keys")
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is None:
        raise ModelLoadError("MODEL_UNSUPPORTED", "not a Stable Diffusion checkpoint: no UNet keys")
    return arch, int(conv_in[1])


def _single_file_header(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for a bad header
        raise ModelLoadError("MODEL_CORRUPT",
                             f"corrupt safetensors file {path.name}: {exc}") from exc


def _ckpt_to_safetensors(path: Path, tmpdir: Path) -> Path:
    """Unpickle a .ckpt weights-only (no code runs) and rewrite it as safetensors."""
    import torch
    from safetensors.torch import save_file

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = f"cannot read {path.name} as a weights-only checkpoint: {exc}"
        raise ModelLoadError("MODEL_CORRUPT", msg) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ModelLoadError("MODEL_CORRUPT", f"{path.name} holds no state dict")
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    out = tmpdir / (path.stem + ".safetensors")
    save_file(tensors, str(out))
    return out


def load_pipeline(source: str | Path, *, source_format: str | None = None,
                  config: str | Path | None = None, allow_pickle: bool = False,
                  dtype: Any = None, device: str = "cpu") -> tuple[Any, ModelInfo]:
    """Load any supported model; returns (diffusers pipeline, ModelInfo)."""
    import diffusers

    source_str = str(source)
    path = Path(source_str)
    if source_format is None:
        if path.is_dir():
            source_format = "diffusers"
        elif path.suffix in (".safetensors", ".ckpt"):
            source_format = "single_file"
        elif "/" in source_str and not path.exists() and not source_str.startswith(("/", ".")):
            source_format = "hf_cache"
        else:
            raise ModelLoadError("MODEL_NOT_FOUND", f"no model at {source_str}")
    import torch

    if dtype is None:
        # Weights may be stored in fp16 (the embedded model is); CPUs compute in fp32.
        dtype = torch.float32 if device == "cpu" else torch.float16
    kwargs: dict[str, Any] = {"local_files_only": True, "torch_dtype": dtype}

    if source_format in ("diffusers", "hf_cache"):
        folder = resolve_hf_cache(source_str) if source_format == "hf_cache" else path
        info = inspect_folder(folder, source_format)
        cls = getattr(diffusers, info.pipeline_class)
        try:
            pipe = cls.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError("MODEL_CORRUPT", f"cannot load {folder}: {exc}") from exc
        return pipe.to(device), info

    if source_format != "single_file":
        raise ModelLoadError("INVALID_FORMAT", f"unknown source format {source_format!r}",
                             field="source_format")
    if not path.is_file():
        raise ModelLoadError("MODEL_NOT_FOUND", f"no such file: {path}")
    if config is None:
        raise ModelLoadError("CONFIG_REQUIRED",
                             "a single-file checkpoint needs a local diffusers folder of the same "
                             "architecture for its configs (no hub is reachable)", field="config")
    cfg_info = inspect_folder(Path(config))
    with tempfile.TemporaryDirectory() as tmp:
        if path.suffix == ".ckpt":
            if not allow_pickle:
                raise ModelLoadError("PICKLE_NOT_ALLOWED",
                                     ".ckpt files are pickles: opt in with allow_pickle "
                                     "(loaded weights-only) or convert to .safetensors",
                                     field="allow_pickle")
            path = _ckpt_to_safetensors(path, Path(tmp))
        shapes = _single_file_header(path)
        arch, in_ch = single_file_architecture(set(shapes), shapes)
        cfg_arch = "sd1" if cfg_info.architecture == "tiny-sd" else cfg_info.architecture
        if arch != cfg_arch or in_ch != cfg_info.unet_in_channels:
            raise ModelLoadError("CONFIG_MISMATCH",
                                 f"checkpoint is {arch} ({in_ch} UNet channels) but the config "
                                 f"folder is {cfg_info.architecture} "
                                 f"({cfg_info.unet_in_channels})", field="config")
        cls = getattr(diffusers, cfg_info.pipeline_class)
        try:
            pipe = cls.from_single_file(str(path), config=str(config), **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError("MODEL_CORRUPT", f"cannot load {source_str}: {exc}") from exc
    info = ModelInfo(cfg_info.architecture, cfg_info.native_resolution, cfg_info.prediction_type,
                     in_ch, cfg_info.pipeline_class, "single_file", source_str)
    return pipe.to(device), info


def embedded_model_dir() -> Path:
    """The shipped default model's folder."""
    if not (EMBEDDED_MODEL_DIR / "model_index.json").exists():
        raise ModelLoadError("MODEL_NOT_FOUND",
                             f"embedded model missing at {EMBEDDED_MODEL_DIR}: run "
                             "`python -m research.embedded_model.train`")
    return EMBEDDED_MODEL_DIR
