"""Registered models' files in the artifact store (shared.artifact_store).

- A copy (ImportModel with copy_files) is a committed folder under a prefix of its own import
  attempt, `catalog/models/<model_id>/<token>/` (a short random token): a diffusers folder at
  `.../<token>/<folder name>/` with its manifest, a single file at `.../<token>/<file name>` with
  the manifest beside it. Replicas importing the same id at once never write, nor clean up, each
  other's objects; the loser's own copy goes, the winner's stays. (Rows made before recorded
  `catalog/models/<id>` itself; they are read and deleted the same way.) The recorded
  source_path is its store.url_of: with the default store data_dir/catalog/models/..., where a
  copy is made under a temporary name and renamed into place (all or nothing), then committed by
  its manifest; with s3:// the objects, manifest last.
- A location in the store (s3://... of this store) is inspected there: the few small files that
  inspection reads (configs; a checkpoint's header only) are fetched into a temporary skeleton,
  so the same checks run as on a local folder.
- Deleting removes only what the Catalog owns (under catalog/models/), the manifest first.
"""

from __future__ import annotations

import contextlib
import re
import secrets
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


def owned_key(name: str) -> str:
    """The prefix of a model's own copy: `name` is an attempt's `<id>/<token>` (attempt_name),
    or a bare id in rows made before."""
    return f"{MODELS_PREFIX}/{name}"


def attempt_name(model_id: str) -> str:
    """`<id>/<token>`: where one import attempt puts the model's copy, so that attempts on the
    same id (other replicas) never share a key."""
    return f"{model_id}/{secrets.token_hex(4)}"


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


def copy_in(src: Path, models_dir: Path, name: str) -> Path:
    """Copy a local file or folder to models_dir/<name>/<its name>: to a temporary sibling,
    then renamed (all or nothing). Both names are the attempt's own (attempt_name): nothing
    that is there already is replaced or removed."""
    final = models_dir / name
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.mkdir(parents=True)
    try:
        if src.is_dir():
            shutil.copytree(src, tmp / src.name)
        else:
            shutil.copy2(src, tmp / src.name)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / src.name


def copy_local(store: ArtifactStore, src: Path, name: str) -> tuple[str, Manifest]:
    """Store a local file or folder as the model's own copy under owned_key(name): (the key to
    record, manifest); a failure removes that prefix (the attempt's own) and nothing else."""
    owned = owned_key(name)
    key = f"{owned}/{src.name}"
    try:
        if store.is_local:
            # in place at once; committing it below hashes the files and copies nothing
            src = copy_in(src, Path(store.path_of(MODELS_PREFIX)), name)
        if src.is_dir():
            return key, store.put_tree(src, key)
        art = store.put_file(src, key)
        manifest = Manifest({src.name: (art.size, art.sha256)})
        store.put_bytes(f"{owned}/{MANIFEST}", manifest.to_json())
        return key, manifest
    except BaseException:
        delete_owned_tree(store, owned)
        raise


def copy_config(store: ArtifactStore, config_dir: Path, name: str) -> str:
    """Store a single file's local config folder with the model's copy (replicas elsewhere
    cannot read this host's disk): the key to record as its config_path."""
    key = f"{owned_key(name)}/config"
    store.put_tree(config_dir, key)
    return key


def copy_stored(store: ArtifactStore, stored: StoredFolder, name: str) -> tuple[str, Manifest]:
    """Copy a stored folder, or the one file of it that a location names, inside the store as
    the model's own under owned_key(name) (server-side on S3): (the key to record, manifest)."""
    owned = owned_key(name)
    try:
        if stored.inner:
            return f"{owned}/{stored.inner}", store.copy_tree(
                stored.prefix, owned, only=[stored.inner])
        key = f"{owned}/{PurePosixPath(stored.prefix).name}"
        return key, store.copy_tree(stored.prefix, key)
    except BaseException:
        delete_owned_tree(store, owned)
        raise


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
    delete_owned_tree(store, key)
    return freed


def delete_owned_tree(store: ArtifactStore, key: str) -> None:
    """Remove a copy's prefix; in a local store also the <id>/ folder it leaves empty (never
    one that holds anything: another attempt's copy)."""
    store.delete_tree(key)
    local = store.local_path(key)
    if local is not None and local.parent != Path(store.path_of(MODELS_PREFIX)):
        with contextlib.suppress(OSError):
            local.parent.rmdir()
