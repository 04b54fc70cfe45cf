"""The artifact store (shared/artifact_store.py) on a local folder and on a real S3 endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from boothstudio.shared.artifact_store import (
    ArtifactCorrupt,
    ArtifactMissing,
    ArtifactStore,
    StoreUnavailable,
    open_artifact_store,
)
from boothstudio.shared.config import ConfigError
from tests.stores.helpers import isolated_env, start_error
from tests.stores.s3 import MotoServer, S3Target


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return open_artifact_store("", tmp_path / "data")
    bucket: S3Target = request.getfixturevalue("s3_bucket")
    return open_artifact_store(bucket.url, tmp_path / "data", bucket.options)


def test_an_object_round_trips_with_its_hash_and_a_wrong_hash_is_data_loss(
    store: ArtifactStore,
) -> None:
    art = store.put_bytes("generator/images/a.png", b"png bytes")
    assert store.get_bytes(art.key, art.sha256) == b"png bytes"
    assert store.key_of(store.url_of(art.key)) == art.key
    with pytest.raises(ArtifactCorrupt) as info:
        store.get_bytes(art.key, "0" * 64)
    assert info.value.code == grpc.StatusCode.DATA_LOSS
    store.delete(art.key)
    with pytest.raises(ArtifactMissing):
        store.get_bytes(art.key)


def test_a_folder_exists_for_readers_only_with_its_manifest(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = tmp_path / "model"
    (src / "unet").mkdir(parents=True)
    (src / "model_index.json").write_text("{}")
    (src / "unet" / "w.bin").write_bytes(b"w" * 5000)
    manifest = store.put_tree(src, "catalog/models/m1")
    assert set(manifest.files) == {"model_index.json", "unet/w.bin"}
    seen: list[tuple[int, int]] = []
    out = store.get_tree(
        "catalog/models/m1", tmp_path / "pulled", progress=lambda d, t: seen.append((d, t))
    )
    assert (out.digest, (tmp_path / "pulled" / "unet" / "w.bin").read_bytes()) == (
        manifest.digest, b"w" * 5000)
    assert seen[-1] == (manifest.size, manifest.size)
    # a folder whose manifest is gone (being deleted, or never finished) is not there
    store.delete("catalog/models/m1/MANIFEST.json")
    assert store.read_manifest("catalog/models/m1") is None
    with pytest.raises(ArtifactMissing):
        store.get_tree("catalog/models/m1", tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_a_torn_file_in_a_folder_is_refused_and_nothing_is_left_half_pulled(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = tmp_path / "model"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 100)
    store.put_tree(src, "m")
    store.put_bytes("m/a.bin", b"a" * 50)  # replaced behind the manifest's back
    with pytest.raises(ArtifactCorrupt):
        store.get_tree("m", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled")]


def test_delete_tree_removes_every_object(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a")
    store.put_tree(src, "catalog/models/m2")
    store.put_bytes("catalog/models/keep.txt", b"k")
    store.delete_tree("catalog/models/m2")
    assert store.list_keys("catalog") == ["catalog/models/keep.txt"]


def test_the_default_store_is_the_data_dir_and_copies_nothing(tmp_path: Path) -> None:
    store = open_artifact_store("", tmp_path)
    local = tmp_path / "trainer" / "jobs" / "j1" / "x.ckpt"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"state")
    art = store.put_file(local, "trainer/jobs/j1/x.ckpt")
    assert store.local_path(art.key) == local.resolve()
    assert store.url_of(art.key) == str(local.resolve())
    assert not store.is_remote_location(str(local))


def test_a_missing_bucket_or_bad_url_is_a_config_error_naming_storage_url(
    s3_bucket: S3Target, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="storage_url: bucket 'no-such-bucket' not found"):
        open_artifact_store("s3://no-such-bucket/x", tmp_path, s3_bucket.options)
    with pytest.raises(ConfigError, match="storage_url"):
        open_artifact_store("nosuchproto://x/y", tmp_path)


def test_an_unreachable_store_is_unavailable_and_recovers_by_itself(tmp_path: Path) -> None:
    server = MotoServer.start()
    try:
        bucket = server.new_bucket("outage")
        store = open_artifact_store(bucket.url, tmp_path, bucket.options)
        store.put_bytes("k", b"v")
        server.stop()
        with pytest.raises(StoreUnavailable) as info:
            store.get_bytes("k")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert info.value.reason == "STORAGE_UNAVAILABLE" and info.value.retry_after
        server.restart()  # moto starts empty: the bucket is made again
        server.new_bucket("outage")
        store.put_bytes("k", b"v2")
        assert store.get_bytes("k") == b"v2"
    finally:
        server.stop()


def test_a_location_names_a_folder_or_a_file_in_one_and_folders_copy_inside_the_store(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = tmp_path / "lora"
    src.mkdir()
    (src / "w.safetensors").write_bytes(b"lora")
    store.put_tree(src, "trainer/jobs/j1/export/lora")
    whole = store.locate(store.url_of("trainer/jobs/j1/export/lora"))
    one = store.locate(store.url_of("trainer/jobs/j1/export/lora/w.safetensors"))
    assert whole is not None and (whole.prefix, whole.inner) == ("trainer/jobs/j1/export/lora", "")
    assert one is not None and one.inner == "w.safetensors" and one.prefix == whole.prefix
    assert store.locate(store.url_of("trainer/jobs/j1/export/other")) is None
    copied = store.copy_tree("trainer/jobs/j1/export/lora", "catalog/models/m1")
    assert copied.digest == whole.manifest.digest
    assert store.get_bytes("catalog/models/m1/w.safetensors", copied.files["w.safetensors"][1]) == (
        b"lora")


def test_a_range_reads_part_of_an_object_and_one_file_of_a_folder_copies_alone(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = tmp_path / "job"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"0123456789")
    (src / "step-1.ckpt").write_bytes(b"state")
    store.put_tree(src, "trainer/jobs/j2/export")
    key = "trainer/jobs/j2/export/model.safetensors"
    assert store.read_range(key, 0, 4) == b"0123"
    assert store.read_range(key, 8, 100) == b"89"  # fewer at the end
    with pytest.raises(ArtifactMissing):
        store.read_range("trainer/jobs/j2/export/nope.safetensors", 0, 8)
    copied = store.copy_tree("trainer/jobs/j2/export", "catalog/models/m3",
                             only=["model.safetensors"])
    assert list(copied.files) == ["model.safetensors"]
    assert store.list_keys("catalog/models/m3") == [
        "catalog/models/m3/MANIFEST.json", "catalog/models/m3/model.safetensors"]
    assert store.read_manifest("catalog/models/m3") == copied
    with pytest.raises(ArtifactMissing):
        store.copy_tree("trainer/jobs/j2/export", "catalog/models/m4", only=["nope.bin"])


@pytest.mark.parametrize("service", ["catalog", "generator", "trainer"])
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nosuchproto://bucket/boothstudio", "cannot use 'nosuchproto://bucket/boothstudio'"),
        ("s3://no-such-bucket/boothstudio", "bucket 'no-such-bucket' not found"),
    ],
)
def test_a_wrong_storage_url_stops_a_service_with_one_line_naming_the_key(
    start_service: Any, s3_bucket: S3Target, service: str, url: str, says: str
) -> None:
    env = isolated_env(**{**s3_bucket.env, "BOOTHSTUDIO_STORAGE_URL": url})
    args = ["--set", "preload=false"] if service == "generator" else []
    error = start_error(lambda: start_service(service, args, env=env, timeout=120),
                        secret=s3_bucket.env["AWS_SECRET_ACCESS_KEY"])
    assert error.startswith("cannot start: storage_url: ") and says in error, error
