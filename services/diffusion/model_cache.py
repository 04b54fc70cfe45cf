"""A bounded local cache of models pulled from the artifact store (Generator and Trainer).

    cache = ModelCache(store, cache_dir, max_bytes)      # or ModelCache.for_service(config, n)
    with cache.local(location, progress) as path:        # a local Path, pinned inside the block
        pipe = load_pipeline(path)                        # load from it here

`location` is what a model's row records (Catalog `source_path`, `config_path`):
- a local path (the default store is the data dir; a shared folder; the embedded model): `path`
  is that path itself, nothing is copied or pinned;
- a location in the configured remote store (`store.is_remote_location`): its stored folder
  (`store.locate`: the folder itself, or the folder that holds a single-file model or LoRA) is
  pulled once into `cache_dir/<manifest digest>/` and `path` is that folder, or the file in it;
- a URL of some other store: FAILED_PRECONDITION (MODEL_NOT_IN_STORE).
`progress(bytes_done, bytes_total)` is called a few times a second while a pull runs (first
at 0, last at the total); never when the model is already cached.

Guarantees:
- Verified: every file is checked against the manifest's SHA-256 as it arrives (get_tree; a
  mismatch is ArtifactCorrupt, DATA_LOSS) and the folder is renamed into place only when
  whole, so a partial download is never used, not even after a crash or restart. An entry found
  on disk (e.g. after a restart) is reused when its manifest equals the stored one and its
  files have the recorded sizes (not re-hashed: that would cost a full read of every model).
- Bounded: the complete entries never exceed `max_bytes`; before a pull the least recently used
  entries are evicted. A model larger than `max_bytes` is FAILED_PRECONDITION
  (MODEL_CACHE_TOO_SMALL) naming model_cache_bytes; a cache whose room is all held by models
  in use is RESOURCE_EXHAUSTED (MODEL_CACHE_FULL) with retry_after.
- Available while the store is down: each location remembers the entry it was last served
  from (`cache_dir/.locations/`); when the store cannot be reached, a complete entry is served
  from disk (stored folders never change under a location), so a replica goes on generating
  with the models it holds. A model it never pulled is UNAVAILABLE (STORAGE_UNAVAILABLE).
- Pinned while in use: an entry is never evicted inside a `local()` block. Callers pin only
  while loading: once the weights are in memory the files may go (a file still mapped by a
  process stays readable on POSIX until unmapped), so the bound is on disk, not on what the
  loaded pipelines hold, and a replica's in-memory pipeline cache needs no pins.
- Concurrency, threads and processes on one host alike (the Trainer's worker processes share
  their service's cache dir): pulls and evictions run under one exclusive file lock
  (`cache_dir/.lock`), so two requests for the same model download it once (the second waits,
  then finds it cached); a pin is a shared `flock` on `cache_dir/.locks/<digest>.lock`, which
  eviction must take exclusively (without waiting) before it removes an entry.

Calls block: async code runs them in a thread (the Generator calls them in its device thread).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from boothstudio.shared.artifact_store import (
    MANIFEST,
    RETRY_AFTER_S,
    ArtifactMissing,
    ArtifactStore,
    Manifest,
    StoredFolder,
    StoreUnavailable,
    store_for,
)
from boothstudio.shared.errors import FailedPrecondition, ResourceExhausted
from boothstudio.shared.storage import atomic_write_text

SETTING = "model_cache_bytes"
CACHE_DIR_NAME = "model_cache"
LOCKS_DIR = ".locks"
#: location -> the entry it was last served from (served from there while the store is down)
LOCATIONS_DIR = ".locations"
PULL_LOCK = ".lock"
#: seconds between progress samples of a running pull
PROGRESS_INTERVAL = 0.2
#: (bytes done, bytes total)
Progress = Callable[[int, int], None]

REQUESTS = Counter(
    "boothstudio_model_cache_requests",
    "Uses of models kept in a remote artifact store, by result (hit: already on local disk; "
    "offline: served from local disk while the store was unreachable).",
    ("result",),
)
PULLED_BYTES = Counter(
    "boothstudio_model_cache_pulled_bytes", "Bytes of models pulled from the artifact store."
)
EVICTIONS = Counter(
    "boothstudio_model_cache_evictions", "Models removed from the local cache to make room."
)
CACHED_BYTES = Gauge(
    "boothstudio_model_cache_bytes", "Bytes of complete models in the local model cache."
)


@dataclass(frozen=True)
class CacheEntry:
    """One complete cached folder."""

    name: str  # the stored folder's manifest digest
    path: Path
    size: int
    last_used: float


class ModelCache:
    """See the module docstring."""

    def __init__(self, store: ArtifactStore, cache_dir: Path, max_bytes: int) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.max_bytes = int(max_bytes)

    @classmethod
    def for_service(cls, config: Any, max_bytes: int) -> ModelCache:
        """The cache of a service: its configured store, `<data_dir>/<service>/model_cache`."""
        return cls(store_for(config), Path(config.service_dir) / CACHE_DIR_NAME, max_bytes)

    # ------------------------------------------------------------------ use

    @contextlib.contextmanager
    def local(self, location: str, progress: Progress | None = None) -> Iterator[Path]:
        """A local path for `location`, pulled first when it is in the remote store; the
        cached folder is pinned (never evicted) until the block ends."""
        if not self.store.is_remote_location(location):
            if "://" in location and not location.startswith("file://"):
                raise FailedPrecondition(
                    f"{location} is not in this replica's artifact store "
                    f"({self.store.describe()}): storage_url must name the store it was stored in",
                    reason="MODEL_NOT_IN_STORE",
                    metadata={"location": location},
                )
            yield Path(location.removeprefix("file://"))
            return
        try:
            folder = self.store.locate(location)
        except StoreUnavailable:
            # the store is down: a copy pulled earlier is still the model (stored folders
            # never change under a location), so a replica keeps serving what it has
            cached = self._last_pulled(location)
            if cached is None:
                raise
            with self._pinned_offline(cached) as entry:
                yield entry / cached["inner"] if cached["inner"] else entry
            return
        if folder is None:
            raise ArtifactMissing(
                f"{location}: no committed folder in the artifact store (its {MANIFEST} is "
                "missing: deleted, or never finished)"
            )
        size = folder.manifest.size
        if size > self.max_bytes:
            raise FailedPrecondition(
                f"the model at {location} has {size} bytes, more than the local model cache "
                f"holds ({SETTING} = {self.max_bytes}): raise {SETTING}",
                reason="MODEL_CACHE_TOO_SMALL",
                metadata={SETTING: self.max_bytes, "model_bytes": size},
            )
        with self._pinned(folder, progress) as entry:
            self._remember(location, folder)
            yield entry / folder.inner if folder.inner else entry

    # ------------------------------------------------------------------ while the store is down

    def _location_file(self, location: str) -> Path:
        return self.cache_dir / LOCATIONS_DIR / hashlib.sha256(location.encode()).hexdigest()

    def _remember(self, location: str, folder: StoredFolder) -> None:
        """Which entry (and file inside it) `location` was last served from."""
        record = json.dumps({"location": location, "digest": folder.manifest.digest,
                             "inner": folder.inner})
        path = self._location_file(location)
        with contextlib.suppress(OSError):  # only a hint for the offline case
            if not path.exists() or path.read_text() != record:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, record)

    def _last_pulled(self, location: str) -> dict[str, str] | None:
        """The remembered entry of `location`, or of a folder that holds it (a file of a
        model served before as a folder), when it is still complete on disk."""
        head, rest = location.rstrip("/"), ""
        while "/" in head.split("://", 1)[-1]:
            try:
                record = json.loads(self._location_file(head).read_text())
                entry = self.cache_dir / record["digest"]
                manifest = Manifest.from_json((entry / MANIFEST).read_bytes())
            except (OSError, ValueError, KeyError):
                record = None
            if record is not None and record.get("location") == head:
                if not _complete(entry, manifest):
                    return None
                inner = "/".join(p for p in (record["inner"], rest) if p)
                if not (entry / inner).exists():
                    return None
                return {**record, "inner": inner}
            head, _, name = head.rpartition("/")
            rest = f"{name}/{rest}" if rest else name
        return None

    @contextlib.contextmanager
    def _pinned_offline(self, cached: dict[str, str]) -> Iterator[Path]:
        name = cached["digest"]
        pin = _open_lock(self.cache_dir / LOCKS_DIR / f"{name}.lock")
        try:
            fcntl.flock(pin, fcntl.LOCK_SH)
            entry = self.cache_dir / name
            if not (entry / MANIFEST).exists():  # evicted between the check and the pin
                raise StoreUnavailable(f"the artifact store is unreachable and {name} is "
                                       "no longer cached", retry_after=RETRY_AFTER_S)
            REQUESTS.labels("offline").inc()
            yield entry
        finally:
            os.close(pin)

    def entries(self) -> list[CacheEntry]:
        """The complete entries on disk, least recently used first."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for path in self.cache_dir.iterdir():
                if path.name.startswith(".") or not path.is_dir():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    try:
                        size = Manifest.from_json((path / MANIFEST).read_bytes()).size
                    except (ValueError, KeyError, FileNotFoundError):
                        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                    found.append(CacheEntry(path.name, path, size, path.stat().st_mtime))
        return sorted(found, key=lambda e: e.last_used)

    def size(self) -> int:
        return sum(e.size for e in self.entries())

    # ------------------------------------------------------------------ pins and pulls

    @contextlib.contextmanager
    def _pinned(self, folder: StoredFolder, progress: Progress | None) -> Iterator[Path]:
        name = folder.manifest.digest
        entry = self.cache_dir / name
        (self.cache_dir / LOCKS_DIR).mkdir(parents=True, exist_ok=True)
        pin = _open_lock(self.cache_dir / LOCKS_DIR / f"{name}.lock")
        try:
            fcntl.flock(pin, fcntl.LOCK_SH)
            if _complete(entry, folder.manifest):
                REQUESTS.labels("hit").inc()
            else:
                fcntl.flock(pin, fcntl.LOCK_UN)
                with _locked(self.cache_dir / PULL_LOCK):
                    if _complete(entry, folder.manifest):  # pulled while this one waited
                        REQUESTS.labels("hit").inc()
                    else:
                        REQUESTS.labels("miss").inc()
                        self._pull(folder, entry, progress)
                    # pinned before the pull lock goes: nobody evicts in between
                    fcntl.flock(pin, fcntl.LOCK_SH)
            os.utime(entry)  # the folder's mtime is its last use (LRU order)
            yield entry
        finally:
            os.close(pin)

    def _pull(self, folder: StoredFolder, entry: Path, progress: Progress | None) -> None:
        """Under the pull lock: clear leftovers, make room, get the folder."""
        for stale in self.cache_dir.glob(".*"):
            # pulls and evictions hold the pull lock: any temporary folder is a dead one's
            if stale.is_dir() and stale.name not in (LOCKS_DIR, LOCATIONS_DIR):
                shutil.rmtree(stale, ignore_errors=True)
        if entry.exists() and not self._evict(entry.name):  # a damaged copy (files removed)
            raise ResourceExhausted(
                f"the cached copy of {folder.prefix} is damaged and in use; retry later",
                reason="MODEL_CACHE_BUSY", retry_after=5.0,
            )
        size = folder.manifest.size
        self._make_room(size)
        with _PullProgress(self.cache_dir, entry.name, size, progress) as report:
            self.store.get_tree(folder.prefix, entry, progress=report.files_done,
                                manifest=folder.manifest)
        PULLED_BYTES.inc(size)
        CACHED_BYTES.set(self.size())

    def _make_room(self, size: int) -> None:
        entries = self.entries()
        used = sum(e.size for e in entries)
        for e in entries:
            if used + size <= self.max_bytes:
                break
            if self._evict(e.name):
                used -= e.size
                EVICTIONS.inc()
        if used + size > self.max_bytes:
            raise ResourceExhausted(
                f"the local model cache ({SETTING} = {self.max_bytes}) has no room for "
                f"{size} more bytes: the models it holds are in use; retry later or raise "
                f"{SETTING}",
                reason="MODEL_CACHE_FULL",
                retry_after=10.0,
                metadata={SETTING: self.max_bytes, "model_bytes": size, "in_use_bytes": used},
            )

    def _evict(self, name: str) -> bool:
        """Remove an entry unless someone has it pinned (False then)."""
        lock = _open_lock(self.cache_dir / LOCKS_DIR / f"{name}.lock")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            # renamed first: a reader sees the whole folder or none
            doomed = self.cache_dir / f".evict-{uuid.uuid4().hex[:8]}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.cache_dir / name, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            return True
        finally:
            os.close(lock)


def _open_lock(path: Path) -> int:
    # lock files stay: removing one while another process waits on it would split the lock
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _complete(entry: Path, manifest: Manifest) -> bool:
    """Whether `entry` holds exactly `manifest`'s folder (sizes checked, hashes were on pull)."""
    try:
        if Manifest.from_json((entry / MANIFEST).read_bytes()).digest != manifest.digest:
            return False
        return all((entry / rel).stat().st_size == size
                   for rel, (size, _) in manifest.files.items())
    except (OSError, ValueError, KeyError):
        return False


class _PullProgress:
    """Reports a pull's bytes: after each file (get_tree) and, in between, what has arrived so
    far in its temporary folder (sampled by a thread), never going backwards; 0 first, the
    total last."""

    def __init__(self, cache_dir: Path, name: str, total: int, progress: Progress | None) -> None:
        self.pattern = f".{name}.*.part"
        self.cache_dir = cache_dir
        self.total = total
        self.progress = progress
        self.reported = -1
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="model-pull", daemon=True)

    def __enter__(self) -> _PullProgress:
        if self.progress is not None:
            self._report(0)
            self.thread.start()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        if exc_type is None and self.progress is not None:
            self._report(self.total, last=True)

    def files_done(self, done: int, total: int) -> None:
        if self.progress is not None:
            self._report(done)

    def _report(self, done: int, last: bool = False) -> None:
        assert self.progress is not None
        # the total only once everything is in place
        done = done if last else min(done, max(self.total - 1, 0))
        with self.lock:  # held while calling: two reporting threads stay in order
            if done <= self.reported:
                return
            self.reported = done
            self.progress(done, self.total)

    def _arrived(self) -> int:
        size = 0
        for part in self.cache_dir.glob(self.pattern):
            for f in part.rglob("*"):
                with contextlib.suppress(OSError):
                    size += f.stat().st_size if f.is_file() else 0
        return size

    def _sample(self) -> None:
        while not self.stop.wait(PROGRESS_INTERVAL):
            self._report(self._arrived())
