"""Registered models' files in the artifact store (shared.artifact_store).

- A copy (ImportModel with copy_files) is a committed folder under `catalog/models/<model_id>/`:
  a diffusers folder at `catalog/models/<id>/<folder name>/` with its manifest, a single file at
  `catalog/models/<id>/<file name>` with the manifest beside it. The recorded source_path is its
  store.url_of: with the default store data_dir/catalog/models/<id>/..., as before the store,
  where a copy is made under a temporary name and renamed into place (all or nothing), then
  committed by its manifest; with s3:// the objects, manifest last.
- A location in the store (s3://... of this store) is inspected there: the few small files that
  inspection reads (configs; a checkpoint's header only) are fetched into a temporary skeleton,
  so the same checks run as on a local folder.
- Deleting removes only what the Catalog owns (under catalog/models/), the manifest first.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from boothstudio.services.diffusion import loading
from boothstudio.services.diffusion.checkpoint_headers import MAX_HEADER_BYTES
from boothstudio.shared.artifact_store import MANIFEST, ArtifactStore, Manifest, StoredFolder
from boothstudio.shared.errors import InvalidArgument, NotFound
from boothstudio.shared.storage import folder_size

MODELS_PREFIX = "catalog/models"
#: what loading.inspect_folder reads of a diffusers folder
CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json",
                "scheduler/scheduler_config.json")
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def owned_key(model_id: str) -> str:
    return f"{MODELS_PREFIX}/{model_id}"


def stored_location(store: ArtifactStore, location: str, field: str) -> StoredFolder | None:
    """The stored folder a requested location names, or None for a local path. NOT_FOUND when
    it is in this store but not committed (no manifest: unfinished, deleted, or never there);
    INVALID_ARGUMENT for a URL of another store, which no replica could read."""
    if store.is_remote_location(location):
        stored = store.locate(location)
        if stored is None:
            raise NotFound(
                f"{field}: {location} is neither a committed folder of the artifact store "
                f"(with its {MANIFEST}) nor a file in one",
                reason="MODEL_NOT_FOUND",
                field=field,
            )
        return stored
    if _URL.match(location):
        raise InvalidArgument(
            f"{field}: {location} is not in this service's artifact store ({store.describe()})",
            reason="LOCATION_NOT_IN_STORE",
            violations=[(field, f"not in the artifact store {store.describe()}")],
        )
    return None


def fetch_configs(store: ArtifactStore, stored: StoredFolder, into: Path) -> Path:
    """A local skeleton of a stored diffusers folder: the configs inspection reads, no weights
    (one that is missing stays missing, and inspection says so)."""
    into.mkdir(parents=True, exist_ok=True)
    for rel in CONFIG_FILES:
        if rel in stored.manifest.files:
            data = store.get_bytes(f"{stored.prefix}/{rel}", stored.manifest.files[rel][1])
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            (into / rel).write_bytes(data)
    return into


def fetch_header(store: ArtifactStore, stored: StoredFolder, into: Path) -> Path:
    """A local stand-in for a stored single file: its .safetensors header (8-byte length +
    JSON) and nothing else, which is all checkpoint_headers reads."""
    into.mkdir(parents=True, exist_ok=True)
    path = into / stored.inner
    key = f"{stored.prefix}/{stored.inner}"
    data = b""
    if path.suffix == ".safetensors":  # other suffixes are refused by name alone
        data = store.read_range(key, 0, 8)
        if len(data) == 8:
            (length,) = struct.unpack("<Q", data)
            if length <= MAX_HEADER_BYTES:  # a longer one is refused from the length alone
                data += store.read_range(key, 8, length)
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def reported_as(local: Path, location: str) -> Iterator[None]:
    """Inspection errors about a skeleton name the stored location, not the temporary path."""
    try:
        yield
    except loading.ModelLoadError as err:
        message = str(err).replace(str(local), location)
        raise loading.ModelLoadError(err.reason, message, err.field) from err


def missing_weights(names: Iterable[str]) -> list[str]:
    """The components of a diffusers folder with no weights, from its files' relative paths."""
    have = {
        PurePosixPath(n).parent.as_posix()
        for n in names
        if PurePosixPath(n).suffix in (".safetensors", ".bin")
    }
    return [c for c in WEIGHTED_COMPONENTS if c not in have]


def copy_in(src: Path, models_dir: Path, model_id: str) -> Path:
    """Copy a local file or folder to models_dir/<model_id>/<its name>: to a temporary name,
    then renamed (all or nothing)."""
    final = models_dir / model_id
    tmp = models_dir / f".{model_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if src.is_dir():
            shutil.copytree(src, tmp / src.name)
        else:
            shutil.copy2(src, tmp / src.name)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / src.name


def copy_local(store: ArtifactStore, src: Path, model_id: str) -> tuple[str, Manifest]:
    """Store a local file or folder as the model's own copy: (the key to record, manifest)."""
    owned = owned_key(model_id)
    key = f"{owned}/{src.name}"
    try:
        if store.is_local:
            # in place at once; committing it below hashes the files and copies nothing
            src = copy_in(src, Path(store.path_of(MODELS_PREFIX)), model_id)
        if src.is_dir():
            return key, store.put_tree(src, key)
        art = store.put_file(src, key)
        manifest = Manifest({src.name: (art.size, art.sha256)})
        store.put_bytes(f"{owned}/{MANIFEST}", manifest.to_json())
        return key, manifest
    except BaseException:
        store.delete_tree(owned)
        raise


def copy_config(store: ArtifactStore, config_dir: Path, model_id: str) -> str:
    """Store a single file's local config folder with the model (replicas elsewhere cannot
    read this host's disk): the key to record as its config_path."""
    key = f"{owned_key(model_id)}/config"
    store.put_tree(config_dir, key)
    return key


def copy_stored(store: ArtifactStore, stored: StoredFolder, model_id: str) -> tuple[str, Manifest]:
    """Copy a stored folder, or the one file of it that a location names, inside the store as
    the model's own (server-side on S3): (the key to record, manifest)."""
    owned = owned_key(model_id)
    if stored.inner:
        return f"{owned}/{stored.inner}", store.copy_tree(stored.prefix, owned, only=[stored.inner])
    key = f"{owned}/{PurePosixPath(stored.prefix).name}"
    return key, store.copy_tree(stored.prefix, key)


def remove_owned(store: ArtifactStore, owned_location: str, source_path: str) -> int:
    """Delete a model's own copy, never anything outside catalog/models/: the manifest of its
    folder first (readers stop seeing it at once), then the rest. Bytes freed."""
    key = store.key_of(owned_location) if owned_location else None
    if key is None or not key.startswith(f"{MODELS_PREFIX}/"):
        return 0
    stored = store.locate(source_path) if source_path else None
    if stored is not None and f"{stored.prefix}/".startswith(f"{key}/"):
        freed = stored.manifest.size
        store.delete_tree(stored.prefix)
    else:  # a copy made before the store kept manifests, or a half-deleted one
        local = store.local_path(key)
        freed = folder_size(local) if local is not None else 0
    store.delete_tree(key)
    return freed
