"""ImportModel for LoRAs (kind LORA): one .safetensors file, local or in the artifact store, in
the kohya/A1111 layout or the diffusers/PEFT one (services.diffusion.lora_layouts reads both).

- Base architecture: read off the tensor shapes (text encoder widths, cross-attention width, the
  UNet's attention channels) and checked against origin.base_model_id's configs; a LoRA made
  for another model is INVALID_ARGUMENT (LORA_MISMATCH) on origin.base_model_id, and one whose
  shapes name a known architecture (sd1, sd2, sdxl) other than the `architecture` asked for is
  refused on `architecture`. It is registered with its base's architecture.
- Trigger words: the request's trigger_phrase, else what the file's kohya metadata names
  (`modelspec.trigger_phrase`, else the most frequent tags of `ss_tag_frequency`).
- Preview: unless the request gives one, the thumbnail the file embeds (kohya's
  `modelspec.thumbnail`), then a picture beside it as A1111/ComfyUI expect (previews.py); none
  is drawn here (that needs the base model loaded: the Generator's work). The layout, rank and
  adapted parts go in the description when the request has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from boothstudio.services.catalog import previews
from boothstudio.services.diffusion import loading, lora_layouts
from boothstudio.shared.artifact_store import ArtifactStore, StoredFolder
from boothstudio.shared.errors import InvalidArgument, NotFound
from boothstudio.v1 import catalog_pb2

_BASE_CONFIGS = ("unet/config.json", *loading.TEXT_ENCODER_CONFIGS)
_LAYOUT_NAMES = {lora_layouts.KOHYA: "kohya/A1111", lora_layouts.DIFFUSERS: "diffusers/PEFT"}


def _base_config_folder(base: Any, store: ArtifactStore, scratch: Path) -> Path | None:
    """A local folder with the base model's UNet and text encoder configs (fetched from the
    store when it lives there); None for a model whose configs are not here (remote backend)."""
    fmt = base["format"]
    location = base["config_path"] if fmt == catalog_pb2.MODEL_FORMAT_SINGLE_FILE else (
        base["source_path"])
    if fmt == catalog_pb2.MODEL_FORMAT_HF_CACHE:
        return loading.resolve_hf_cache(location)
    if fmt not in (catalog_pb2.MODEL_FORMAT_DIFFUSERS, catalog_pb2.MODEL_FORMAT_SINGLE_FILE) or (
            not location):
        return None
    if not store.is_remote_location(location):
        return Path(location)
    stored = store.locate(location)
    if stored is None:
        raise loading.ModelLoadError("MODEL_NOT_FOUND", f"{location} is gone")
    folder = scratch / "base"
    for rel in _BASE_CONFIGS:
        if rel in stored.manifest.files:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(store.get_bytes(f"{stored.prefix}/{rel}",
                                                       stored.manifest.files[rel][1]))
    return folder


def base_signature(base: Any, store: ArtifactStore, scratch: Path) -> lora_layouts.Signature | None:
    """The shapes a LoRA of the base model has, from its configs."""
    try:
        folder = _base_config_folder(base, store, scratch)
        if folder is None:
            return None
        unet = json.loads((folder / "unet" / "config.json").read_text())
        widths = {}
        for part in ("text_encoder", "text_encoder_2"):
            cfg = folder / part / "config.json"
            if cfg.is_file():
                widths[part] = int(json.loads(cfg.read_text()).get("hidden_size", 0))
    except (OSError, ValueError, loading.ModelLoadError) as err:
        raise InvalidArgument(
            f"cannot read the configs of base model {base['id']!r}: {err}",
            reason="MODEL_CORRUPT", violations=[("origin.base_model_id", str(err))],
        ) from err
    return lora_layouts.base_signature(unet, widths)


def _local_copy(source_field: str, source: str, stored: StoredFolder | None,
                store: ArtifactStore, scratch: Path) -> tuple[Path, str]:
    """(a local path to read, the location to register)."""
    path = Path(source)
    if stored is not None:
        size, sha256 = stored.manifest.files[stored.inner]
        if size > lora_layouts.MAX_LORA_BYTES:
            raise InvalidArgument.for_field(
                source_field, f"{size} bytes; a LoRA is at most {lora_layouts.MAX_LORA_BYTES}")
        local = scratch / "lora" / stored.inner
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(store.get_bytes(f"{stored.prefix}/{stored.inner}", sha256))
        return local, source
    if not path.is_file():
        raise NotFound(f"no such file: {path}", reason="MODEL_NOT_FOUND", field=source_field)
    return path, str(path.resolve())


def inspect(
    request: catalog_pb2.ImportModelRequest, source_field: str, source: str, base: Any,
    store: ArtifactStore, stored: StoredFolder | None, scratch: Path,
) -> tuple[dict[str, Any], str]:
    """(registry values, the file's location) of a LoRA file; blocking (reads the file and the
    base's configs): run in a thread."""
    if source_field != "single_file_path" or Path(source).suffix != ".safetensors":
        raise InvalidArgument.for_field(source_field, "a LoRA is a single .safetensors file")
    if base["kind"] in (catalog_pb2.MODEL_KIND_LORA, catalog_pb2.MODEL_KIND_EMBEDDING):
        raise InvalidArgument.for_field(
            "origin.base_model_id", "name a base or fine-tuned model (the one the LoRA adapts)")
    local, location = _local_copy(source_field, source, stored, store, scratch)
    try:
        weights = lora_layouts.read_lora(local)
    except lora_layouts.LoraFormatError as err:
        raise InvalidArgument(f"{source_field}: {err}", reason="LORA_UNREADABLE",
                              violations=[(source_field, str(err))]) from err
    sig = lora_layouts.signature(weights)
    detected = sig.architecture()
    if request.architecture and detected and request.architecture != detected:
        message = f"the LoRA's shapes are {detected}'s, not {request.architecture}'s"
        raise InvalidArgument(message, reason="LORA_MISMATCH",
                              violations=[("architecture", message)])
    target = base_signature(base, store, scratch)
    problem = "" if target is None else lora_layouts.mismatch(sig, target)
    if problem:
        message = f"does not fit base model {base['id']!r}: {problem}"
        raise InvalidArgument(message, reason="LORA_MISMATCH",
                              violations=[("origin.base_model_id", message)])
    values = {
        "architecture": base["architecture"],
        "native_resolution": base["native_resolution"],
        "prediction_type": base["prediction_type"],
        "format": catalog_pb2.MODEL_FORMAT_LORA,
        "trigger_phrase": lora_layouts.trigger_words(weights.metadata),
        "description": (f"LoRA, {_LAYOUT_NAMES[weights.layout]} layout, rank {weights.rank}, "
                        f"adapts {' + '.join(weights.parts)}"),
    }
    if stored is None:
        values["size_bytes"] = local.stat().st_size
    if not request.preview:
        # not a registry column: the servicer takes it out and stores the first usable one
        embedded = previews.embedded(weights.metadata)
        values["preview_candidates"] = [*([embedded] if embedded else []), *(
            previews.sidecar_local(local) if stored is None
            else previews.sidecar_stored(store, stored))]
    return values, location
