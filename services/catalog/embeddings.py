"""ImportModel for textual-inversion embeddings (kind EMBEDDING).

An embedding is one small file (services.diffusion.embeddings reads its layouts, pickles
weights-only), local or in the artifact store. It is registered per architecture: its vectors
must have the width of the text encoders of the models it will be used with, checked against
- origin.base_model_id's text encoders (their configs), when set;
- else the `architecture` asked for, when its widths are fixed (sd1, sd2, sdxl);
- else the architecture is the one those widths name (768: sd1, 1024: sd2, 768 + 1280: sdxl),
  or the embedded default model's when its text encoder has those widths.
A mismatch is INVALID_ARGUMENT (EMBEDDING_MISMATCH) naming the field that chose the target.
The model id is the embedding's name: the word that calls it up in a prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boothstudio.services.diffusion import embeddings, loading
from boothstudio.shared.artifact_store import ArtifactStore, StoredFolder
from boothstudio.shared.errors import InvalidArgument, NotFound
from boothstudio.v1 import catalog_pb2


def _widths_text(widths: tuple[int, ...]) -> str:
    return " + ".join(str(w) for w in widths)


def _mismatch(field: str, emb: tuple[int, ...], target: tuple[int, ...], what: str) -> None:
    if emb != target:
        message = (f"the embedding's vectors are {_widths_text(emb)} wide, {what}'s text "
                   f"encoders take {_widths_text(target)}")
        raise InvalidArgument(message, reason="EMBEDDING_MISMATCH", violations=[(field, message)])


def base_widths(base: Any, store: ArtifactStore, scratch: Path) -> tuple[int, ...]:
    """Widths of a registered model's text encoders, from its configs (fetched from the store
    when it lives there)."""
    fmt = base["format"]
    folder_location = base["config_path"] if fmt == catalog_pb2.MODEL_FORMAT_SINGLE_FILE else (
        base["source_path"])
    try:
        if fmt == catalog_pb2.MODEL_FORMAT_HF_CACHE:
            return loading.text_encoder_widths(loading.resolve_hf_cache(folder_location))
        if store.is_remote_location(folder_location):
            stored = store.locate(folder_location)
            if stored is None:
                raise loading.ModelLoadError("MODEL_NOT_FOUND", f"{folder_location} is gone")
            folder = scratch / "base"
            for rel in loading.TEXT_ENCODER_CONFIGS:
                if rel in stored.manifest.files:
                    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    (folder / rel).write_bytes(store.get_bytes(
                        f"{stored.prefix}/{rel}", stored.manifest.files[rel][1]))
            return loading.text_encoder_widths(folder)
        return loading.text_encoder_widths(Path(folder_location))
    except loading.ModelLoadError as err:
        raise InvalidArgument(
            f"cannot read the text encoders of base model {base['id']!r}: {err}",
            reason=err.reason, violations=[("origin.base_model_id", str(err))],
        ) from err


def _widths_or_none(model: Any, store: ArtifactStore, scratch: Path) -> tuple[int, ...] | None:
    try:
        return base_widths(model, store, scratch)
    except InvalidArgument:
        return None


def target_architecture(
    request: catalog_pb2.ImportModelRequest, base: Any, widths: tuple[int, ...],
    store: ArtifactStore, scratch: Path, source_field: str, default_base: Any = None,
) -> tuple[str, int]:
    """(architecture, native resolution) the embedding is registered for (see module doc)."""
    if base is not None:
        if base["kind"] in (catalog_pb2.MODEL_KIND_LORA, catalog_pb2.MODEL_KIND_EMBEDDING):
            raise InvalidArgument.for_field(
                "origin.base_model_id", "name a base or fine-tuned model (its text encoders)")
        _mismatch("origin.base_model_id", widths, base_widths(base, store, scratch),
                  f"base model {base['id']!r}")
        return base["architecture"], base["native_resolution"]
    if request.architecture:
        known = embeddings.KNOWN_WIDTHS.get(request.architecture)
        if known is None:
            raise InvalidArgument.for_field(
                "architecture",
                f"the text encoder widths of {request.architecture!r} are not fixed (known: "
                f"{', '.join(embeddings.KNOWN_WIDTHS)}): name a model of it in "
                "origin.base_model_id")
        _mismatch("architecture", widths, known, request.architecture)
        return request.architecture, 0
    architecture = embeddings.architecture_of(widths)
    if architecture:
        return architecture, 0
    if default_base is not None and _widths_or_none(default_base, store, scratch) == widths:
        return default_base["architecture"], default_base["native_resolution"]
    message = (f"vectors {_widths_text(widths)} wide match no known architecture (sd1: 768, "
               "sd2: 1024, sdxl: 768 + 1280): name the model they belong to in "
               "origin.base_model_id")
    raise InvalidArgument(message, reason="EMBEDDING_MISMATCH",
                          violations=[(source_field, message)])


def inspect(
    request: catalog_pb2.ImportModelRequest, source_field: str, source: str, base: Any,
    store: ArtifactStore, stored: StoredFolder | None, scratch: Path, default_base: Any = None,
) -> tuple[dict[str, Any], str]:
    """(registry values, the file's location) of an embedding file; blocking (reads the file
    and configs): run in a thread."""
    path = Path(source)
    if source_field != "single_file_path" or path.suffix not in embeddings.SUFFIXES:
        raise InvalidArgument.for_field(
            source_field, f"an embedding is one {', '.join(embeddings.SUFFIXES)} file "
            "(single_file_path)")
    if stored is not None:
        size, sha256 = stored.manifest.files[stored.inner]
        if size > embeddings.MAX_EMBEDDING_BYTES:
            raise InvalidArgument.for_field(
                source_field, f"{size} bytes; an embedding is at most "
                f"{embeddings.MAX_EMBEDDING_BYTES}")
        local = scratch / "embedding" / stored.inner
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(store.get_bytes(f"{stored.prefix}/{stored.inner}", sha256))
        location = source
    elif not path.is_file():
        raise NotFound(f"no such file: {path}", reason="MODEL_NOT_FOUND", field=source_field)
    else:
        local, location = path, str(path.resolve())
    try:
        emb = embeddings.read_embedding(local)
    except embeddings.EmbeddingError as err:
        raise InvalidArgument(str(err), reason=err.reason,
                              violations=[(source_field, str(err))]) from err
    architecture, native = target_architecture(request, base, emb.widths, store, scratch,
                                               source_field, default_base)
    values = {
        "architecture": architecture,
        "native_resolution": native,
        "format": catalog_pb2.MODEL_FORMAT_EMBEDDING,
        "embedding_vectors": emb.vectors,
        "embedding_widths": ",".join(str(w) for w in emb.widths),
        "sha256": embeddings.file_sha256(local),
    }
    if stored is None:
        values["size_bytes"] = local.stat().st_size
    return values, location

