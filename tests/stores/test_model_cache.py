"""The local model cache (services/diffusion/model_cache.py) pulling from a real S3 endpoint:
bounded by bytes with LRU eviction, pins, one download for concurrent users (threads and
processes), corrupted objects refused with nothing half-written, reuse after a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from boothstudio.services.diffusion.model_cache import PULLED_BYTES, ModelCache
from boothstudio.shared.artifact_store import (
    ArtifactCorrupt,
    ArtifactStore,
    Manifest,
    StoreUnavailable,
    open_artifact_store,
)
from boothstudio.shared.errors import FailedPrecondition, ResourceExhausted
from tests.helpers import free_port
from tests.stores.s3 import S3Target

SIZE = 40_000  # bytes of each test model's weights


@pytest.fixture
def store(s3_bucket: S3Target, tmp_path: Path) -> ArtifactStore:
    return open_artifact_store(s3_bucket.url, tmp_path / "data", s3_bucket.options)


def put_model(store: ArtifactStore, tmp_path: Path, name: str) -> tuple[str, Manifest]:
    """A small model folder stored under catalog/models/<name>; (its location, manifest)."""
    src = tmp_path / "src" / name
    (src / "unet").mkdir(parents=True)
    (src / "model_index.json").write_text(json.dumps({"name": name}))
    (src / "unet" / "model.safetensors").write_bytes(os.urandom(SIZE))
    manifest = store.put_tree(src, f"catalog/models/{name}")
    return store.url_of(f"catalog/models/{name}"), manifest


def cached_names(cache: ModelCache) -> list[str]:
    return sorted(e.name for e in cache.entries())


def leftovers(cache_dir: Path) -> list[str]:
    """What the cache dir holds besides its entries and lock files (temporary folders)."""
    return sorted(p.name for p in cache_dir.iterdir()
                  if p.name.startswith(".") and p.name not in (".locks", ".lock", ".locations"))


def pulled_bytes() -> float:
    return PULLED_BYTES._value.get()


def test_a_model_is_pulled_once_with_progress_then_reused_even_after_a_restart(
    store: ArtifactStore, tmp_path: Path
) -> None:
    location, manifest = put_model(store, tmp_path, "m1")
    cache_dir = tmp_path / "cache"
    cache = ModelCache(store, cache_dir, 10 * SIZE)
    seen: list[tuple[int, int]] = []
    with cache.local(location, lambda d, t: seen.append((d, t))) as path:
        assert path == cache_dir / manifest.digest
        assert (path / "unet" / "model.safetensors").read_bytes() == (
            tmp_path / "src" / "m1" / "unet" / "model.safetensors").read_bytes()
    assert seen[0] == (0, manifest.size) and seen[-1] == (manifest.size, manifest.size)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})  # never backwards
    # a single file inside the stored folder (a single-file model, a LoRA): the file
    with cache.local(f"{location}/model_index.json") as file:
        assert file == cache_dir / manifest.digest / "model_index.json"
    # a new cache on the same folder (a restarted replica) finds it complete: no download
    before, again = pulled_bytes(), []
    with ModelCache(store, cache_dir, 10 * SIZE).local(
            location, lambda d, t: again.append((d, t))) as path:
        assert (path / "model_index.json").exists()
    assert (again, pulled_bytes()) == ([], before)


def test_least_recently_used_models_are_evicted_by_bytes_and_pinned_ones_never(
    store: ArtifactStore, tmp_path: Path
) -> None:
    (a, ma), (b, _), (c, mc), (d, md) = (put_model(store, tmp_path, n) for n in "abcd")
    size = ma.size
    cache = ModelCache(store, tmp_path / "cache", int(2.5 * size))  # room for two
    for loc in (a, b, a, c):  # a used again after b: b is the least recently used
        with cache.local(loc):
            pass
    assert cached_names(cache) == sorted([ma.digest, mc.digest])
    assert cache.size() <= cache.max_bytes
    # a is now the least recently used, but pinned while d is pulled: c goes instead
    with cache.local(a) as pinned:
        with cache.local(d):
            pass
        assert (pinned / "model_index.json").exists()
        assert cached_names(cache) == sorted([ma.digest, md.digest])
        # both held: no room for a third, a clear retryable error naming the setting
        with cache.local(d), pytest.raises(ResourceExhausted) as info, cache.local(b):
            pass
    assert info.value.reason == "MODEL_CACHE_FULL" and "model_cache_bytes" in info.value.message
    assert cached_names(cache) == sorted([ma.digest, md.digest])
    assert leftovers(tmp_path / "cache") == []


def test_a_model_larger_than_the_cache_is_refused_naming_the_setting(
    store: ArtifactStore, tmp_path: Path
) -> None:
    location, _ = put_model(store, tmp_path, "big")
    cache = ModelCache(store, tmp_path / "cache", SIZE // 2)
    with pytest.raises(FailedPrecondition) as info, cache.local(location):
        pass
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == "MODEL_CACHE_TOO_SMALL"
    assert "model_cache_bytes" in info.value.message
    assert not (tmp_path / "cache").exists()


def test_two_threads_needing_the_same_model_download_it_once(
    store: ArtifactStore, tmp_path: Path
) -> None:
    location, manifest = put_model(store, tmp_path, "shared")
    cache = ModelCache(store, tmp_path / "cache", 10 * SIZE)
    start, paths, errors = threading.Barrier(2), [], []

    def use() -> None:
        start.wait()
        try:
            with cache.local(location) as path:
                paths.append((path / "unet" / "model.safetensors").stat().st_size)
        except Exception as err:  # reported below
            errors.append(err)

    before = pulled_bytes()
    threads = [threading.Thread(target=use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and paths == [SIZE, SIZE]
    assert pulled_bytes() - before == manifest.size


_USE_IN_A_PROCESS = """
import json, sys
from pathlib import Path
from boothstudio.services.diffusion.model_cache import PULLED_BYTES, ModelCache
from boothstudio.shared.artifact_store import open_artifact_store
url, options, cache_dir, location = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
store = open_artifact_store(url, Path(cache_dir).parent / "data", options)
sys.stdin.readline()  # start together
with ModelCache(store, Path(cache_dir), 10**9).local(location) as path:
    assert (path / "model_index.json").exists()
print(int(PULLED_BYTES._value.get()))
"""


def test_two_processes_sharing_a_cache_dir_download_a_model_once(
    store: ArtifactStore, s3_bucket: S3Target, tmp_path: Path
) -> None:
    location, manifest = put_model(store, tmp_path, "procs")
    args = [sys.executable, "-c", _USE_IN_A_PROCESS, s3_bucket.url,
            json.dumps(s3_bucket.options), str(tmp_path / "cache"), location]
    procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:  # released together once imported; overlapping or not, one download
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(int(out) for out, _ in outputs) == [0, manifest.size]


def test_a_corrupted_object_is_refused_and_nothing_half_written_stays(
    store: ArtifactStore, s3_bucket: S3Target, tmp_path: Path
) -> None:
    location, manifest = put_model(store, tmp_path, "torn")
    # the object changes behind the manifest's back (a torn upload, tampering)
    store.put_bytes("catalog/models/torn/unet/model.safetensors", os.urandom(SIZE))
    cache = ModelCache(store, tmp_path / "cache", 10 * SIZE)
    with pytest.raises(ArtifactCorrupt) as info, cache.local(location):
        pass
    assert info.value.code == grpc.StatusCode.DATA_LOSS
    assert cached_names(cache) == [] and leftovers(tmp_path / "cache") == []
    assert not (tmp_path / "cache" / manifest.digest).exists()


def test_a_location_of_another_store_is_refused_and_local_paths_pass_through(
    store: ArtifactStore, tmp_path: Path
) -> None:
    cache = ModelCache(store, tmp_path / "cache", 10 * SIZE)
    with pytest.raises(FailedPrecondition) as info, cache.local("s3://elsewhere/models/m1"):
        pass
    assert info.value.reason == "MODEL_NOT_IN_STORE" and "storage_url" in info.value.message
    with cache.local(str(tmp_path / "model")) as path:
        assert path == tmp_path / "model"
    assert not (tmp_path / "cache").exists()


def test_a_cached_model_is_served_while_the_store_is_unreachable(
    store: ArtifactStore, s3_bucket: S3Target, tmp_path: Path
) -> None:
    """A replica keeps serving the models it holds when the store goes away; one it never
    pulled is UNAVAILABLE (STORAGE_UNAVAILABLE), as before."""
    location, manifest = put_model(store, tmp_path, "m1")
    other, _ = put_model(store, tmp_path, "m2")
    cache_dir = tmp_path / "cache"
    with ModelCache(store, cache_dir, 10 * SIZE).local(location) as path:
        expected = (path / "unet" / "model.safetensors").read_bytes()
    # the same bucket through an endpoint nobody listens on: the store is down
    down = open_artifact_store(s3_bucket.url, tmp_path / "data", {
        **s3_bucket.options, "endpoint_url": f"http://127.0.0.1:{free_port()}"}, check=False)
    offline = ModelCache(down, cache_dir, 10 * SIZE)
    with offline.local(location) as path:
        assert path == cache_dir / manifest.digest
        assert (path / "unet" / "model.safetensors").read_bytes() == expected
    with offline.local(f"{location}/model_index.json") as file:
        assert file == cache_dir / manifest.digest / "model_index.json"
    with pytest.raises(StoreUnavailable) as info, offline.local(other):
        pass
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # a damaged copy is not served: the store's answer stands
    (cache_dir / manifest.digest / "unet" / "model.safetensors").write_bytes(b"short")
    with pytest.raises(StoreUnavailable), offline.local(location):
        pass
