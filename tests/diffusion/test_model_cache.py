"""The model cache (services/diffusion/model_cache.py) on the default store, the data dir: every
location is a local path, used as is (nothing copied, no cache folder made), and a URL of
another store is refused by name. Pulls from a remote store: tests/stores/test_model_cache.py.

Rerun: `.venv/bin/pytest tests/diffusion/test_model_cache.py -q`
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR
from boothstudio.services.diffusion.model_cache import ModelCache
from boothstudio.shared.artifact_store import open_artifact_store
from boothstudio.shared.config import ServiceConfig
from boothstudio.shared.errors import FailedPrecondition


def test_on_the_default_store_locations_are_used_in_place(tmp_path: Path) -> None:
    store = open_artifact_store("", tmp_path / "data")
    model = tmp_path / "data" / "catalog" / "models" / "m1"
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    cache = ModelCache(store, tmp_path / "data" / "generator" / "model_cache", 0)
    progress: list[tuple[int, int]] = []
    for location in (store.url_of("catalog/models/m1"), str(EMBEDDED_MODEL_DIR)):
        with cache.local(location, lambda d, t: progress.append((d, t))) as path:
            assert path == Path(location)
    assert progress == [] and cache.entries() == []
    assert not (tmp_path / "data" / "generator" / "model_cache").exists()


def test_a_location_in_a_store_this_replica_does_not_use_is_refused(tmp_path: Path) -> None:
    cache = ModelCache(open_artifact_store("", tmp_path / "data"), tmp_path / "cache", 10**9)
    with pytest.raises(FailedPrecondition) as info, cache.local("s3://bucket/catalog/models/m1"):
        pass
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.reason == "MODEL_NOT_IN_STORE" and "storage_url" in info.value.message


def test_a_service_keeps_its_cache_under_its_own_data_dir(tmp_path: Path) -> None:
    config = ServiceConfig(service="trainer", data_dir=tmp_path / "data")
    cache = ModelCache.for_service(config, 1234)
    assert (cache.cache_dir, cache.max_bytes) == (tmp_path / "data" / "trainer" / "model_cache",
                                                  1234)
