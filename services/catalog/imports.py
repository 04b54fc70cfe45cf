"""ImportModel's work: check the request, inspect the source, copy it in if asked.

A model that is registered is one the Generator can load: a diffusers folder's configs and
weights, an offline Hugging Face cache id, or a single-file checkpoint with its config folder
(checked from headers, services.diffusion.checkpoint_headers). A remote backend's model is a
name there and is not inspected here. The embedded default model is described the same way at
every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from boothstudio.services.catalog import embeddings, loras, model_files, previews
from boothstudio.services.catalog.backend_health import DEFAULT_BACKEND
from boothstudio.services.catalog.mapping import FORMATS, PREDICTION
from boothstudio.services.catalog.registry import Registry
from boothstudio.services.diffusion import loading
from boothstudio.services.diffusion.checkpoint_headers import inspect_single_file
from boothstudio.shared.artifact_store import ArtifactStore, StoredFolder
from boothstudio.shared.errors import InvalidArgument, NotFound
from boothstudio.shared.ids import ID_RULE, is_valid_id
from boothstudio.shared.paths import path_problem
from boothstudio.shared.storage import folder_size
from boothstudio.v1 import catalog_pb2, common_pb2

# Lengths of the free-text fields of ImportModel (characters).
TEXT_LIMITS = {
    "display_name": 256,
    "description": 4096,
    "trigger_phrase": 512,
    "architecture": 64,
    "backend_id": 64,
}


def check_request(request: catalog_pb2.ImportModelRequest) -> tuple[str, str]:
    """(the source's field, its value) once every plain field is valid; else INVALID_ARGUMENT
    naming all that is wrong."""
    source_field = request.WhichOneof("source")
    violations: list[tuple[str, str]] = []
    if source_field is None:
        raise InvalidArgument.for_field(
            "source", "set one of diffusers_path, hf_cache_id, single_file_path"
        )
    source = str(getattr(request, source_field)).strip()
    if not source:
        violations.append((source_field, "must not be empty"))
    # a remote backend's model is a name there, not a path here, but still bounded
    for name, value in ((source_field, source), ("config_path", request.config_path)):
        problem = path_problem(value)
        if problem:
            violations.append((name, problem))
    for name, limit in TEXT_LIMITS.items():
        if len(getattr(request, name)) > limit:
            violations.append((name, f"longer than {limit} characters"))
    if request.model_id and not is_valid_id(request.model_id):
        violations.append(
            ("model_id", ID_RULE)
        )
    for name in ("base_model_id", "training_job_id"):
        value = getattr(request.origin, name)
        if value and not is_valid_id(value):
            violations.append((f"origin.{name}", "not a valid id"))
    if request.kind not in catalog_pb2.ModelKind.values():
        violations.append(("kind", f"unknown model kind {request.kind}"))
    if request.prediction_type not in catalog_pb2.PredictionType.values():
        violations.append(("prediction_type", f"unknown value {request.prediction_type}"))
    if violations:
        raise InvalidArgument(violations=violations)
    return source_field, source


def model_kind(request: catalog_pb2.ImportModelRequest, base: Any) -> int:
    """The kind asked for, else fine-tuned when there is a base model, else base."""
    kind = request.kind or (
        catalog_pb2.MODEL_KIND_FINE_TUNED if base is not None else catalog_pb2.MODEL_KIND_BASE
    )
    if kind == catalog_pb2.MODEL_KIND_LORA and base is None:
        raise InvalidArgument.for_field(
            "origin.base_model_id", "a LoRA needs the base model it applies to"
        )
    return kind


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    if not s or not s[0].isalpha():
        s = "m-" + s
    return s[:100]


def derive_id(registry: Registry, source: str, display_name: str) -> str:
    """A free model id from the display name or the source's name (-2, -3, ... when taken)."""
    base = slug(display_name or Path(source.rstrip("/")).stem or source)
    candidate, n = base, 2
    while registry.exists(candidate):
        candidate, n = f"{base}-{n}", n + 1
    return candidate


async def inspect_source(
    request: catalog_pb2.ImportModelRequest,
    source_field: str,
    source: str,
    backend_id: str,
    kind: int,
    base: Any,
    model_id: str,
    store: ArtifactStore,
    default_base: Any = None,
) -> tuple[dict[str, Any], list[common_pb2.Warning]]:
    """The registry values read from the source (a local path, or a location in the artifact
    store), copied into the store as the model's own when asked, and warnings; a source that is
    missing or cannot be loaded is an error on its field."""
    warnings: list[common_pb2.Warning] = []
    if kind == catalog_pb2.MODEL_KIND_EMBEDDING and backend_id != DEFAULT_BACKEND:
        raise InvalidArgument.for_field(
            "backend_id", "embeddings are loaded by the diffusers backend (a webui reads those "
            "in its own embeddings folder)")
    if backend_id != DEFAULT_BACKEND:
        # A remote backend's model: its name there; nothing to inspect locally.
        return {"source_path": source, "format": 0, "architecture": request.architecture}, []

    def field_of(err: loading.ModelLoadError) -> str:
        return {"config": "config_path", "allow_pickle": source_field}.get(err.field, source_field)

    def read_source(scratch: Path) -> tuple[dict[str, Any], str, StoredFolder | None, Path | None]:
        """(values, the source's location, its stored folder when in the store, a local config
        folder); blocking (headers, configs, folder walks, the store): run in a thread.
        `scratch` takes the skeletons of stored sources."""
        stored = None
        if source_field != "hf_cache_id":
            stored = model_files.stored_location(store, source, source_field)
        if stored is not None and source_field == "single_file_path" and not stored.inner:
            raise InvalidArgument.for_field(source_field, "a folder in the store, not a file")
        if stored is not None and source_field == "diffusers_path" and stored.inner:
            raise InvalidArgument.for_field(source_field, "a file in the store, not a folder")
        local_config = None
        if kind == catalog_pb2.MODEL_KIND_EMBEDDING:
            values, path_str = embeddings.inspect(
                request, source_field, source, base, store, stored, scratch, default_base)
        elif kind == catalog_pb2.MODEL_KIND_LORA:
            values, path_str = loras.inspect(
                request, source_field, source, base, store, stored, scratch)
        elif source_field == "single_file_path":
            config = request.config_path or None
            from_base = base is not None and base["format"] == FORMATS["diffusers"]
            if config is None and from_base:
                config = base["source_path"]
                warnings.append(
                    common_pb2.Warning(
                        reason="CONFIG_FROM_BASE",
                        message=f"configs taken from the base model {base['id']!r}",
                        field="config_path",
                    )
                )
            config_stored = None
            if config:
                config_stored = model_files.stored_location(store, config, "config_path")
            if config_stored is not None and config_stored.inner:
                raise InvalidArgument.for_field("config_path", "a file in the store, not a folder")
            checked = Path(source)
            if stored is not None:
                checked = model_files.fetch_header(store, stored, scratch / "file")
            if config_stored is not None:
                config_dir = model_files.fetch_configs(store, config_stored, scratch / "config")
                with model_files.reported_as(config_dir, str(config)):
                    info = inspect_single_file(checked, str(config_dir))
                values = info_values(info)
                values["config_path"] = store.url_of(config_stored.prefix)
            else:
                info = inspect_single_file(checked, config)
                values = info_values(info)
                values["config_path"] = str(Path(config).resolve()) if config else ""
                local_config = Path(config) if config else None
            path_str = str(Path(source).resolve()) if stored is None else source
        elif stored is not None:
            skeleton = model_files.fetch_configs(store, stored, scratch / "model")
            with model_files.reported_as(skeleton, source):
                info = loading.inspect_folder(skeleton)
            check_weights(model_files.missing_weights(stored.manifest.files), source, source_field)
            values = info_values(info)
            path_str = source
        else:
            if source_field == "hf_cache_id":
                folder = loading.resolve_hf_cache(source)
            else:
                folder = Path(source)
            info = loading.inspect_folder(folder)
            check_weights(model_files.missing_weights(
                p.relative_to(folder).as_posix()
                for c in model_files.WEIGHTED_COMPONENTS
                for p in (folder / c).glob("*")
            ), str(folder), source_field)
            values = info_values(info)
            path_str = source if source_field == "hf_cache_id" else str(folder.resolve())
            if source_field == "hf_cache_id":
                values["format"] = catalog_pb2.MODEL_FORMAT_HF_CACHE
                values["size_bytes"] = folder_size(folder)
        if stored is not None:
            path_str = store.url_of(f"{stored.prefix}/{stored.inner}".rstrip("/"))
            values["size_bytes"] = (
                stored.manifest.files[stored.inner][0] if stored.inner else stored.manifest.size
            )
        return values, path_str, stored, local_config

    def read_in_scratch() -> tuple[dict[str, Any], str, StoredFolder | None, Path | None]:
        with tempfile.TemporaryDirectory(prefix="catalog-import-") as scratch:
            return read_source(Path(scratch))

    try:
        values, path_str, stored, local_config = await asyncio.to_thread(read_in_scratch)
    except loading.ModelLoadError as err:
        f = field_of(err)
        if err.reason == "MODEL_NOT_FOUND":
            raise NotFound(str(err), reason=err.reason, field=f) from err
        raise InvalidArgument(str(err), reason=err.reason, violations=[(f, str(err))]) from err
    except OSError as err:
        # unreadable, not a folder, a folder where a file was expected: the path is at fault
        raise _path_error(err, source_field) from err
    values["source_path"] = path_str
    if request.copy_files and source_field != "hf_cache_id":
        values.update(await asyncio.to_thread(
            copy_model, store, model_id, Path(path_str), stored, local_config, source_field))
    if "size_bytes" not in values:
        values["size_bytes"] = await asyncio.to_thread(folder_size, Path(values["source_path"]))
    return values, warnings


def check_weights(missing: list[str], where: str, field: str) -> None:
    """INVALID_ARGUMENT (MODEL_CORRUPT) when components of a diffusers folder have no weights."""
    if missing:
        raise InvalidArgument(
            f"{where} has no weights for {', '.join(missing)}",
            reason="MODEL_CORRUPT",
            violations=[(field, f"no weights for {', '.join(missing)}")],
        )


def copy_model(
    store: ArtifactStore,
    model_id: str,
    local: Path,
    stored: StoredFolder | None,
    local_config: Path | None,
    source_field: str,
) -> dict[str, Any]:
    """The model's own copy in the store (from a local path, or inside the store), as the
    registry values that record it; a local config folder goes with it when the store is
    shared by other hosts. The copy is under a prefix of this attempt alone
    (model_files.attempt_name): another replica importing the same id at once writes elsewhere,
    and whichever of them loses removes only its own."""
    name = model_files.attempt_name(model_id)
    try:
        if stored is not None:
            key, manifest = model_files.copy_stored(store, stored, name)
        else:
            key, manifest = model_files.copy_local(store, local, name)
    except OSError as err:
        raise _path_error(err, source_field) from err
    owned = model_files.owned_key(name)
    values = {
        "source_path": store.url_of(key),
        "owned_path": store.url_of(owned),
        "size_bytes": manifest.size,
    }
    if local_config is not None and not store.is_local:
        try:
            values["config_path"] = store.url_of(
                model_files.copy_config(store, local_config, name))
        except BaseException:
            model_files.delete_owned_tree(store, owned)
            raise
    return values


async def register(registry: Registry, values: dict[str, Any], store: ArtifactStore,
                   preview_png: bytes | None = None) -> list[common_pb2.Warning]:
    """Insert the model's row, then store its preview and record it in that row (warnings).

    The row comes first: the preview's key is the model id's, and only the import whose row
    holds the id writes it, so one that loses the id to another replica never touches it.
    When the insert fails (lost, or the database failed) the copy made for this attempt goes,
    and only that (its prefix is the attempt's own)."""
    try:
        row = registry.insert(values)
    except BaseException:
        if values.get("owned_path"):
            await asyncio.to_thread(
                model_files.remove_owned, store, values["owned_path"], values["source_path"]
            )
        raise
    if preview_png is None:
        return []
    # in one thread: a cancelled call still finishes recording what it stored
    return await asyncio.to_thread(attach_preview, registry, store, row, preview_png)


def attach_preview(registry: Registry, store: ArtifactStore, row: dict[str, Any],
                   png: bytes) -> list[common_pb2.Warning]:
    """Store a registered model's preview and record its SHA-256 in the row. When that fails
    the model stays, without a preview (a warning says so), as after a crash in between: never
    a row naming a preview that is not there. Blocking: run in a thread."""
    model_id = row["id"]
    try:
        sha256 = previews.store_preview(store, model_id, png)
    except Exception as err:
        return [_preview_not_stored(err)]
    try:
        recorded = registry.set_preview(model_id, row["created"], sha256)
    except Exception as err:
        # the row still holds the id, so the object is this import's own
        with contextlib.suppress(Exception):
            previews.remove(store, model_id)
        return [_preview_not_stored(err)]
    # not recorded: the row was deleted meanwhile. Its picture stays (the key may already be a
    # newer import's of the same id, which overwrites it anyway).
    return [] if recorded else [_preview_not_stored("the model was deleted meanwhile")]


def _preview_not_stored(why: object) -> common_pb2.Warning:
    return common_pb2.Warning(reason="PREVIEW_NOT_STORED", field="preview",
                              message=f"the model is registered without its preview: {why}")


def add_request_values(
    values: dict[str, Any],
    warnings: list[common_pb2.Warning],
    request: catalog_pb2.ImportModelRequest,
    *,
    model_id: str,
    source: str,
    kind: int,
    backend_id: str,
) -> None:
    """What the request says about the model, over what inspection found; a detected
    architecture wins over a different one asked for (with a warning)."""
    values.update(
        id=model_id,
        display_name=request.display_name or Path(source).name or model_id,
        kind=kind,
        backend_id=backend_id,
        base_model_id=request.origin.base_model_id,
        training_job_id=request.origin.training_job_id,
        # an embedding is called up by its name, nothing else
        trigger_phrase=model_id if kind == catalog_pb2.MODEL_KIND_EMBEDDING
        else request.trigger_phrase or values.get("trigger_phrase", ""),
        # what inspection says of the file (a LoRA's layout) unless the request describes it
        description=request.description or values.get("description", ""),
        created=time.time(),
    )
    if request.architecture and request.architecture != values.get("architecture"):
        if values.get("architecture"):
            warnings.append(
                common_pb2.Warning(
                    reason="ARCHITECTURE_MISMATCH",
                    message=f"detected {values['architecture']!r}, "
                    f"not {request.architecture!r}; keeping the detected one",
                    field="architecture",
                )
            )
        else:
            values["architecture"] = request.architecture
    if request.prediction_type:
        values["prediction_type"] = request.prediction_type


def embedded_values(embedded_dir: Path, log: logging.Logger) -> dict[str, Any]:
    """The registry values of the embedded default model; still registered when its folder
    cannot be read, with the reason in its description."""
    values: dict[str, Any] = {
        "id": loading.EMBEDDED_MODEL_ID,
        "display_name": "BoothStudio tiny (embedded)",
        "kind": catalog_pb2.MODEL_KIND_BASE,
        "backend_id": DEFAULT_BACKEND,
        "architecture": "tiny-sd",
        "native_resolution": 64,
        "prediction_type": catalog_pb2.PREDICTION_TYPE_EPSILON,
        "source_path": str(embedded_dir),
        "format": catalog_pb2.MODEL_FORMAT_DIFFUSERS,
        "builtin": 1,
        "description": "The default model shipped with BoothStudio: a tiny Stable Diffusion "
        "trained on procedurally drawn 64 px scenes (shapes, colours, backgrounds).",
        "created": 0.0,
    }
    try:
        info = loading.inspect_folder(embedded_dir)
        values.update(
            architecture=info.architecture,
            native_resolution=info.native_resolution,
            prediction_type=PREDICTION.get(info.prediction_type, 0),
            inpainting=int(info.inpainting),
            size_bytes=folder_size(embedded_dir),
        )
    except loading.ModelLoadError as exc:
        log.warning("embedded model unavailable: %s", exc)
        values["description"] += f" (unavailable: {exc})"
    return values


def info_values(info: loading.ModelInfo) -> dict[str, Any]:
    return {
        "architecture": info.architecture,
        "native_resolution": info.native_resolution,
        "prediction_type": PREDICTION.get(info.prediction_type, 0),
        "format": FORMATS.get(info.source_format, 0),
        "inpainting": int(info.inpainting),
    }


def _path_error(err: OSError, field: str) -> InvalidArgument | NotFound:
    """An OSError met while reading an imported path, as the error of the field that named it."""
    what = err.strerror or type(err).__name__
    if isinstance(err, FileNotFoundError):
        return NotFound(f"{field}: {what}", reason="MODEL_NOT_FOUND", field=field)
    return InvalidArgument(
        f"{field}: cannot read it ({what})", reason="PATH_UNREADABLE", violations=[(field, what)]
    )
