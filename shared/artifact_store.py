"""The artifact store: every file the services keep (model files, gallery PNGs, uploaded
datasets, class images, training checkpoints and exports), behind one interface over fsspec.

Where it lives (`storage_url`, env BOOTHSTUDIO_STORAGE_URL):
- empty (the default): the data directory itself. Keys are paths under `data_dir`, so the
  single-host layout is exactly what it was (data/generator/images/<id>.png, ...) and nothing is
  copied: a key's `local_path` is the file.
- a folder or `file:///mnt/shared`: a shared filesystem (NFS and the like), same layout.
- `s3://bucket/prefix`: any S3-compatible store through s3fs. `storage_options` in the YAML go
  to s3fs (e.g. `{endpoint_url: "http://minio:9000", key: ..., secret: ...}`); the standard AWS
  variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION) work too.

Every service uses the same keys, relative to the data directory ("generator/images/x.png",
"trainer/jobs/<id>/checkpoints/step-000050.ckpt", "catalog/models/<id>/..."), so any replica of
any service finds what another one wrote.

Guarantees:
- A reader never sees half an object. One object: a local write goes to a temporary name and is
  renamed; an S3 PUT is atomic. A folder (a diffusers model, a job's inputs): its files are
  written first and a manifest (`MANIFEST.json`: every file's size and SHA-256) last, and a
  folder without a manifest does not exist for readers (`get_tree`, `read_manifest`).
- Content hashes: `put_*` return the SHA-256 the caller records (a gallery row, the manifest);
  `get_*` given a hash check it and raise ArtifactCorrupt (DATA_LOSS) on a mismatch, so a torn or
  tampered object is never used.
- A store that cannot be reached raises StoreUnavailable (UNAVAILABLE, reason
  STORAGE_UNAVAILABLE, retry_after); it is not remembered, so the next call after the store is
  back succeeds.

Calls block (fsspec's sync API): async code runs them with asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import grpc

from boothstudio.shared.config import ConfigError
from boothstudio.shared.errors import BoothStudioError, NotFound, Unavailable
from boothstudio.shared.storage import atomic_write_bytes

KEY = "storage_url"
MANIFEST = "MANIFEST.json"
RETRY_AFTER_S = 2.0
CHUNK = 4 * 1024 * 1024
#: (bytes done, bytes total) after each file of a get_tree
Progress = Callable[[int, int], None]


class StoreUnavailable(Unavailable):
    default_reason = "STORAGE_UNAVAILABLE"
    default_message = "artifact store unavailable"


class ArtifactCorrupt(BoothStudioError):
    """An object whose content does not match the hash recorded for it."""

    code = grpc.StatusCode.DATA_LOSS
    default_reason = "ARTIFACT_CORRUPT"
    default_message = "stored file does not match its recorded hash"


class ArtifactMissing(NotFound):
    default_reason = "ARTIFACT_MISSING"
    default_message = "stored file not found"


@dataclass(frozen=True)
class Artifact:
    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class StoredFolder:
    """Where a recorded location lives: the folder (with its manifest) and, when the location
    names one file in it (a single-file model, a LoRA), that file's path inside the folder."""

    prefix: str
    manifest: Manifest
    inner: str = ""


@dataclass
class Manifest:
    """A folder's files: relative POSIX path -> (size, sha256)."""

    files: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(size for size, _ in self.files.values())

    @property
    def digest(self) -> str:
        """One hash for the whole folder (over the sorted file list)."""
        text = json.dumps(sorted(self.files.items()), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> bytes:
        body = {"version": 1, "files": {k: {"size": s, "sha256": h}
                                         for k, (s, h) in sorted(self.files.items())}}
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        body = json.loads(data)
        return cls({k: (int(v["size"]), str(v["sha256"])) for k, v in body["files"].items()})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_key(key: str) -> str:
    """A key is a relative POSIX path without '..' (callers build keys from checked ids)."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or key != str(path):
        raise ValueError(f"bad artifact key {key!r}")
    return key


def _is_unreachable(err: BaseException) -> bool:
    """Whether an error from the filesystem means "cannot reach the store" (vs. a missing key,
    which callers see as FileNotFoundError)."""
    if isinstance(err, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return False
    names = {cls.__name__ for cls in type(err).__mro__}
    # botocore's connection errors, aiohttp's, timeouts, and OSErrors such as ECONNREFUSED
    return bool(names & {"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError",
                         "ReadTimeoutError", "ClientConnectorError", "ServerDisconnectedError",
                         "ClientOSError", "TimeoutError", "ConnectionError"}) or isinstance(
        err, OSError)


class ArtifactStore:
    """One store (a local folder or an fsspec URL); see the module docstring."""

    def __init__(self, url: str, data_dir: Path, options: Mapping[str, Any] | None = None) -> None:
        import fsspec  # type: ignore[import-untyped]

        self.options = dict(options or {})
        self.data_dir = Path(data_dir)
        if not url or "://" not in url or url.startswith("file://"):
            root = Path(url.removeprefix("file://")) if url else self.data_dir
            self.root = str(root.resolve())
            self.is_local = True
            self.fs = fsspec.filesystem("file")
            self.url = self.root
        else:
            options = dict(self.options)
            if url.startswith(("s3://", "s3a://")):
                # replicas write behind each other's backs: never answer from a stale listing;
                # fail over to UNAVAILABLE in seconds, not after botocore's long default retries
                options.setdefault("use_listings_cache", False)
                options.setdefault("config_kwargs", {"connect_timeout": 5, "read_timeout": 60,
                                                     "retries": {"max_attempts": 3}})
            try:
                self.fs, path = fsspec.core.url_to_fs(url, **options)
            except (ImportError, ValueError, TypeError) as err:
                raise ConfigError(f"{KEY}: cannot use {url!r}: {err}") from err
            self.root = path.rstrip("/")
            self.is_local = False
            self.url = url.rstrip("/")

    # ---------------------------------------------------------------- names

    def path_of(self, key: str) -> str:
        """The filesystem path of a key (inside the fsspec filesystem)."""
        return f"{self.root}/{_check_key(key)}"

    def url_of(self, key: str) -> str:
        """What to record where a location is shown (a local absolute path, or s3://...)."""
        return self.path_of(key) if self.is_local else f"{self.url}/{_check_key(key)}"

    def key_of(self, location: str) -> str | None:
        """The key of a location from url_of (None when it is not in this store)."""
        base = self.root if self.is_local else self.url
        if self.is_local:
            with contextlib.suppress(OSError):
                location = str(Path(location).resolve())
        if location.startswith(base + "/"):
            return location[len(base) + 1:].rstrip("/")
        return None

    def local_path(self, key: str) -> Path | None:
        """The file itself when the store is a local folder, else None."""
        return Path(self.path_of(key)) if self.is_local else None

    def is_remote_location(self, location: str) -> bool:
        """Whether a recorded location needs pulling from this store (not a local path)."""
        return not self.is_local and self.key_of(location) is not None

    def describe(self) -> str:
        return self.url

    # ---------------------------------------------------------------- errors

    @contextlib.contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        try:
            yield
        except (BoothStudioError, FileNotFoundError, ValueError):
            raise
        except Exception as err:
            if _is_unreachable(err):
                first = (str(err).splitlines() or [type(err).__name__])[0]
                raise StoreUnavailable(
                    f"artifact store {self.describe()} unavailable while {what}: {first}",
                    retry_after=RETRY_AFTER_S,
                ) from err
            raise

    def check_reachable(self) -> None:
        """Start-up check: the root exists (created for a local folder) and can be listed.
        Raises ConfigError naming storage_url otherwise."""
        try:
            if self.is_local:
                Path(self.root).mkdir(parents=True, exist_ok=True)
                if not os.access(self.root, os.W_OK):
                    raise ConfigError(f"{KEY}: {self.root} is not writable")
                return
            bucket = self.root.split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise ConfigError(f"{KEY}: bucket {bucket!r} not found at {self.url}")
            self.fs.ls(self.root) if self.fs.exists(self.root) else None
        except ConfigError:
            raise
        except Exception as err:
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"{KEY}: cannot reach {self.url}: {first}") from err

    # ---------------------------------------------------------------- one object

    def put_bytes(self, key: str, data: bytes) -> Artifact:
        digest = hashlib.sha256(data).hexdigest()
        with self._calls(f"writing {key}"):
            if self.is_local:
                path = Path(self.path_of(key))
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, data)
            else:
                self.fs.pipe_file(self.path_of(key), data)
        return Artifact(key, digest, len(data))

    def get_bytes(self, key: str, sha256: str | None = None) -> bytes:
        with self._calls(f"reading {key}"):
            try:
                data = self.fs.cat_file(self.path_of(key))
            except FileNotFoundError:
                raise ArtifactMissing(f"{key} is not in the artifact store") from None
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactCorrupt(f"{key}: content does not match its recorded SHA-256")
        return bytes(data)

    def put_file(self, local: Path, key: str) -> Artifact:
        """Store a local file under `key` (nothing copied when it already is that file)."""
        digest = sha256_file(local)
        size = local.stat().st_size
        with self._calls(f"writing {key}"):
            if self.is_local:
                target = Path(self.path_of(key))
                if target.resolve() != local.resolve():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
                    shutil.copyfile(local, tmp)
                    os.replace(tmp, target)
            else:
                self.fs.put_file(str(local), self.path_of(key))
        return Artifact(key, digest, size)

    def get_file(self, key: str, local: Path, sha256: str | None = None) -> Path:
        """Copy `key` to `local` atomically (checked against `sha256` when given)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self._calls(f"reading {key}"):
                try:
                    self.fs.get_file(self.path_of(key), str(tmp))
                except FileNotFoundError:
                    raise ArtifactMissing(f"{key} is not in the artifact store") from None
            if sha256 and sha256_file(tmp) != sha256:
                raise ArtifactCorrupt(f"{key}: content does not match its recorded SHA-256")
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of `key` from offset `start` (fewer at its end): a file's header
        without fetching the file."""
        with self._calls(f"reading {key}"):
            try:
                data = self.fs.cat_file(self.path_of(key), start=start, end=start + length)
                return bytes(data)
            except FileNotFoundError:
                raise ArtifactMissing(f"{key} is not in the artifact store") from None

    def exists(self, key: str) -> bool:
        with self._calls(f"looking up {key}"):
            return bool(self.fs.exists(self.path_of(key)))

    def delete(self, key: str) -> None:
        with self._calls(f"deleting {key}"), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path_of(key))

    # ---------------------------------------------------------------- folders

    def put_tree(self, local_dir: Path, prefix: str) -> Manifest:
        """Store every file under `local_dir` at `prefix/...`, then the manifest (last: the
        folder exists for readers from that moment)."""
        manifest = Manifest()
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            if rel == MANIFEST or path.name.startswith("."):
                continue
            art = self.put_file(path, f"{prefix}/{rel}")
            manifest.files[rel] = (art.size, art.sha256)
        self.put_bytes(f"{prefix}/{MANIFEST}", manifest.to_json())
        return manifest

    def read_manifest(self, prefix: str) -> Manifest | None:
        """The folder's manifest, or None while it is absent (not written yet, or deleted)."""
        try:
            return Manifest.from_json(self.get_bytes(f"{prefix}/{MANIFEST}"))
        except (ArtifactMissing, NotADirectoryError):  # the latter: the prefix is a local file
            return None

    def get_tree(self, prefix: str, local_dir: Path, progress: Progress | None = None,
                 manifest: Manifest | None = None) -> Manifest:
        """Copy a folder to `local_dir` (absent before): files fetched into a temporary
        sibling, each checked against the manifest, then renamed into place at once."""
        manifest = manifest or self.read_manifest(prefix)
        if manifest is None:
            raise ArtifactMissing(f"{prefix} is not in the artifact store")
        total, done = manifest.size, 0
        tmp = local_dir.with_name(f".{local_dir.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            for rel, (size, digest) in sorted(manifest.files.items()):
                self.get_file(f"{prefix}/{rel}", tmp / rel, sha256=digest)
                done += size
                if progress:
                    progress(done, total)
            atomic_write_bytes(tmp / MANIFEST, manifest.to_json())
            local_dir.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, local_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return manifest

    def locate(self, location: str) -> StoredFolder | None:
        """The stored folder of a location from url_of: the folder itself, or the folder of
        which it names a file (None when it is not in this store or not committed)."""
        key = self.key_of(location)
        if key is None:
            return None
        manifest = self.read_manifest(key)
        if manifest is not None:
            return StoredFolder(key, manifest)
        parent, _, name = key.rpartition("/")
        manifest = self.read_manifest(parent) if parent else None
        if manifest is not None and name in manifest.files:
            return StoredFolder(parent, manifest, name)
        return None

    def copy_tree(self, src_prefix: str, dst_prefix: str,
                  only: Collection[str] | None = None) -> Manifest:
        """Copy a committed folder inside the store (server-side on S3), manifest last; with
        `only`, just those files of it (one file of a folder, committed as a folder of its own)."""
        manifest = self.read_manifest(src_prefix)
        if manifest is None:
            raise ArtifactMissing(f"{src_prefix} is not in the artifact store")
        if only is not None:
            missing = sorted(set(only) - set(manifest.files))
            if missing:
                raise ArtifactMissing(f"{src_prefix} has no {', '.join(missing)}")
            manifest = Manifest({rel: manifest.files[rel] for rel in only})
        with self._calls(f"copying {src_prefix}"):
            for rel in sorted(manifest.files):
                dst = self.path_of(f"{dst_prefix}/{rel}")
                if self.is_local:
                    Path(dst).parent.mkdir(parents=True, exist_ok=True)
                    tmp = f"{dst}.{uuid.uuid4().hex[:8]}.tmp"
                    shutil.copyfile(self.path_of(f"{src_prefix}/{rel}"), tmp)
                    os.replace(tmp, dst)
                else:
                    self.fs.copy(self.path_of(f"{src_prefix}/{rel}"), dst)
        self.put_bytes(f"{dst_prefix}/{MANIFEST}", manifest.to_json())
        return manifest

    def delete_tree(self, prefix: str) -> None:
        """Remove a folder: the manifest first (readers stop seeing it at once), then the rest."""
        self.delete(f"{prefix}/{MANIFEST}")
        with self._calls(f"deleting {prefix}"), contextlib.suppress(FileNotFoundError):
            path = self.path_of(prefix)
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    def list_keys(self, prefix: str) -> list[str]:
        """Keys of the objects under `prefix` (recursively)."""
        with self._calls(f"listing {prefix}"):
            try:
                found = self.fs.find(self.path_of(prefix))
            except FileNotFoundError:
                return []
        base = self.root.rstrip("/") + "/"
        return sorted(str(p)[len(base):] if str(p).startswith(base) else str(p) for p in found)


def open_artifact_store(url: str, data_dir: Path, options: Mapping[str, Any] | None = None,
                        check: bool = True) -> ArtifactStore:
    """The store for `storage_url` (the data directory when empty); with `check`, a store that
    cannot be used fails now with one ConfigError naming storage_url."""
    store = ArtifactStore(url.strip(), data_dir, options)
    if check:
        store.check_reachable()
    return store


def store_for(config: Any) -> ArtifactStore:
    """The store a service configuration names (ServiceConfig's storage_url, storage_options,
    data_dir)."""
    return open_artifact_store(config.storage_url, config.data_dir, config.storage_options)
