"""The Catalog's model files in a real S3 bucket (moto's server through s3fs): one Catalog
process with storage_url = s3://<bucket>/boothstudio, its own empty data dir.

- a diffusers folder imported with copy_files becomes objects + a manifest under
  catalog/models/<id>/<token>/ (the import attempt's own prefix), recorded as an s3://
  source_path; deleting removes them;
- a folder already in the bucket (put by store.put_tree) is inspected there and referenced in
  place (never deleted by the Catalog), or copied inside the bucket;
- a single .safetensors file (local, or one file of a stored folder) goes into the store, its
  architecture read from the header alone, its configs from a stored folder; a LoRA the way
  the Trainer registers one;
- locations that no replica could read are refused by field: another bucket or scheme
  (INVALID_ARGUMENT), a folder of this bucket without its manifest (NOT_FOUND).

Rerun: `.venv/bin/pytest tests/stores/test_catalog_artifacts.py -v`
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR
from boothstudio.shared.artifact_store import MANIFEST, ArtifactStore, open_artifact_store
from boothstudio.v1 import catalog_pb2 as pb
from boothstudio.v1 import catalog_pb2_grpc
from tests.generator import fixtures
from tests.helpers import ServiceProcess
from tests.stores.helpers import isolated_env, rpc_error
from tests.stores.s3 import MotoServer, S3Target

MODELS = "catalog/models"


def copy_key(bucket: S3Target, location: str, model_id: str, name: str) -> str:
    """The key of a model's copy: `name` under catalog/models/<id>/<token>/, the prefix of the
    import attempt that made it."""
    key = location.removeprefix(f"{bucket.url}/")
    assert re.fullmatch(rf"{MODELS}/{re.escape(model_id)}/[0-9a-f]{{8}}/{re.escape(name)}",
                        key), location
    return key


@pytest.fixture(scope="module")
def bucket(s3_server: MotoServer) -> S3Target:
    return s3_server.new_bucket("catalog-artifacts")


@pytest.fixture(scope="module")
def store(bucket: S3Target, tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    """The same bucket, in-process: what another service (the Trainer) would have written."""
    return open_artifact_store(bucket.url, tmp_path_factory.mktemp("data"), bucket.options)


@pytest.fixture(scope="module")
def catalog(module_services: Any, bucket: S3Target) -> ServiceProcess:
    svc: ServiceProcess = module_services("catalog", env=isolated_env(**bucket.env))
    return svc


@pytest.fixture(scope="module")
def stub(catalog: ServiceProcess) -> catalog_pb2_grpc.CatalogServiceStub:
    return catalog_pb2_grpc.CatalogServiceStub(catalog.channel())


@pytest.fixture(scope="module")
def single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model as one original-layout .safetensors file."""
    return fixtures.build_single_file(
        EMBEDDED_MODEL_DIR, tmp_path_factory.mktemp("sf") / "tiny.safetensors"
    )


def test_a_copied_folder_is_objects_and_a_manifest_in_the_bucket_until_deleted(
    stub: catalog_pb2_grpc.CatalogServiceStub, bucket: S3Target, store: ArtifactStore,
    catalog: ServiceProcess,
) -> None:
    m = stub.ImportModel(pb.ImportModelRequest(
        diffusers_path=str(EMBEDDED_MODEL_DIR), model_id="copied", copy_files=True)).model
    prefix = copy_key(bucket, m.source_path, "copied", "embedded_model")
    assert m.format == pb.MODEL_FORMAT_DIFFUSERS and m.architecture == "tiny-sd"
    manifest = store.read_manifest(prefix)
    assert manifest is not None and m.size_bytes == manifest.size > 0
    keys = bucket.keys(f"{MODELS}/copied")
    assert f"{prefix}/{MANIFEST}" in keys and f"{prefix}/unet/config.json" in keys
    assert len(keys) == len(manifest.files) + 1
    assert not (catalog.data_dir / "catalog" / "models").exists()  # nothing on the local disk

    freed = stub.DeleteModel(pb.DeleteModelRequest(model_id="copied", delete_files=True))
    assert freed.freed_bytes == m.size_bytes
    assert bucket.keys(f"{MODELS}/copied") == []
    assert EMBEDDED_MODEL_DIR.exists()


def test_a_stored_folder_is_inspected_there_referenced_in_place_or_copied_inside(
    stub: catalog_pb2_grpc.CatalogServiceStub, bucket: S3Target, store: ArtifactStore,
) -> None:
    manifest = store.put_tree(EMBEDDED_MODEL_DIR, "trainer/jobs/j1/export/diffusers")
    location = store.url_of("trainer/jobs/j1/export/diffusers")

    ref = stub.ImportModel(pb.ImportModelRequest(
        diffusers_path=location, model_id="in-place")).model
    assert ref.source_path == location and ref.size_bytes == manifest.size
    assert ref.architecture == "tiny-sd" and ref.native_resolution == 64
    assert ref.prediction_type == pb.PREDICTION_TYPE_EPSILON and not ref.inpainting
    # outside the catalog's own prefix: delete_files leaves it where it is
    freed = stub.DeleteModel(pb.DeleteModelRequest(model_id="in-place", delete_files=True))
    assert freed.freed_bytes == 0
    assert store.read_manifest("trainer/jobs/j1/export/diffusers") == manifest

    # how the Trainer registers an export: copied, so the model outlives the job's folder
    own = stub.ImportModel(pb.ImportModelRequest(
        diffusers_path=location, model_id="from-job", copy_files=True)).model
    assert store.read_manifest(copy_key(bucket, own.source_path, "from-job", "diffusers")) == (
        manifest)
    store.delete_tree("trainer/jobs/j1")  # the job's folder goes; the model stays
    assert stub.GetModel(pb.GetModelRequest(model_id="from-job")).model.size_bytes == (
        manifest.size)
    stub.DeleteModel(pb.DeleteModelRequest(model_id="from-job", delete_files=True))
    assert bucket.keys(f"{MODELS}/from-job") == []


def test_a_single_file_goes_into_the_store_and_is_read_from_its_header(
    stub: catalog_pb2_grpc.CatalogServiceStub, bucket: S3Target, store: ArtifactStore,
    single_file: Path,
) -> None:
    size = single_file.stat().st_size
    # a local file, its config folder local too: both go into the store with the model
    m = stub.ImportModel(pb.ImportModelRequest(
        single_file_path=str(single_file), config_path=str(EMBEDDED_MODEL_DIR),
        model_id="sf-local", copy_files=True)).model
    assert m.format == pb.MODEL_FORMAT_SINGLE_FILE and m.architecture == "tiny-sd"
    key = copy_key(bucket, m.source_path, "sf-local", "tiny.safetensors")
    assert m.config_path == f"{bucket.url}/{key.rsplit('/', 1)[0]}/config"
    assert m.size_bytes == size
    assert store.locate(m.source_path) is not None and store.locate(m.config_path) is not None

    # one file of a stored folder, its configs from a stored folder: read in the store
    folder = single_file.parent
    (folder / "notes.txt").write_text("not part of the model")
    store.put_tree(folder, "trainer/jobs/j2/export")
    store.put_tree(EMBEDDED_MODEL_DIR, "shared/configs/tiny")
    location = store.url_of("trainer/jobs/j2/export/tiny.safetensors")
    config = store.url_of("shared/configs/tiny")
    ref = stub.ImportModel(pb.ImportModelRequest(
        single_file_path=location, config_path=config, model_id="sf-stored")).model
    assert (ref.source_path, ref.config_path, ref.size_bytes) == (location, config, size)
    assert ref.architecture == "tiny-sd" and ref.native_resolution == 64
    copied = stub.ImportModel(pb.ImportModelRequest(
        single_file_path=location, config_path=config, model_id="sf-copied",
        copy_files=True)).model
    key = copy_key(bucket, copied.source_path, "sf-copied", "tiny.safetensors")
    assert bucket.keys(f"{MODELS}/sf-copied") == [
        f"{key.rsplit('/', 1)[0]}/{MANIFEST}", key]

    for model_id in ("sf-local", "sf-copied"):
        freed = stub.DeleteModel(pb.DeleteModelRequest(model_id=model_id, delete_files=True))
        assert freed.freed_bytes == size
        assert bucket.keys(f"{MODELS}/{model_id}") == []
    stub.DeleteModel(pb.DeleteModelRequest(model_id="sf-stored", delete_files=True))
    assert store.locate(location) is not None  # referenced in place: never deleted


def test_a_lora_exported_to_the_store_is_registered_with_a_copy(
    stub: catalog_pb2_grpc.CatalogServiceStub, bucket: S3Target, store: ArtifactStore,
    tmp_path: Path,
) -> None:
    """How the Trainer registers a LoRA: one file of its export folder, copied."""
    lora = fixtures.build_lora(EMBEDDED_MODEL_DIR, tmp_path / "lora")
    store.put_tree(lora.parent, "trainer/jobs/j3/export/lora")
    m = stub.ImportModel(pb.ImportModelRequest(
        single_file_path=store.url_of(f"trainer/jobs/j3/export/lora/{lora.name}"),
        model_id="lora-j3", kind=pb.MODEL_KIND_LORA, copy_files=True,
        origin=pb.ModelOrigin(base_model_id="boothstudio-tiny", training_job_id="j3"))).model
    assert m.format == pb.MODEL_FORMAT_LORA and m.architecture == "tiny-sd"
    copy_key(bucket, m.source_path, "lora-j3", lora.name)
    assert m.size_bytes == lora.stat().st_size
    freed = stub.DeleteModel(pb.DeleteModelRequest(model_id="lora-j3", delete_files=True))
    assert freed.freed_bytes == m.size_bytes and bucket.keys(f"{MODELS}/lora-j3") == []


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"diffusers_path": "s3://another-bucket/models/tiny"},
         grpc.StatusCode.INVALID_ARGUMENT, "diffusers_path"),
        ({"single_file_path": "gs://elsewhere/tiny.safetensors", "config_path": "{model}"},
         grpc.StatusCode.INVALID_ARGUMENT, "single_file_path"),
        ({"single_file_path": "{file}", "config_path": "https://example.com/configs/tiny"},
         grpc.StatusCode.INVALID_ARGUMENT, "config_path"),
        ({"diffusers_path": "{half}"}, grpc.StatusCode.NOT_FOUND, "diffusers_path"),
        ({"diffusers_path": "{nothing}"}, grpc.StatusCode.NOT_FOUND, "diffusers_path"),
        ({"single_file_path": "{file}", "config_path": "{half}"},
         grpc.StatusCode.NOT_FOUND, "config_path"),
        ({"diffusers_path": "{file}"}, grpc.StatusCode.INVALID_ARGUMENT, "diffusers_path"),
    ],
    ids=["other-bucket", "other-scheme", "config-elsewhere", "no-manifest", "absent",
         "config-no-manifest", "file-as-folder"],
)
def test_locations_no_replica_could_read_are_refused_by_field_and_leave_nothing(
    stub: catalog_pb2_grpc.CatalogServiceStub, bucket: S3Target, store: ArtifactStore,
    single_file: Path, fields: dict[str, str], code: grpc.StatusCode, field: str,
) -> None:
    store.put_tree(EMBEDDED_MODEL_DIR, "bad/model")
    store.put_tree(single_file.parent, "bad/file")
    # a folder whose files are there but whose manifest never was (an interrupted upload)
    store.put_bytes("bad/half/model_index.json", (EMBEDDED_MODEL_DIR / "model_index.json")
                    .read_bytes())
    names = {"model": store.url_of("bad/model"), "half": store.url_of("bad/half"),
             "nothing": store.url_of("bad/nothing"),
             "file": store.url_of(f"bad/file/{single_file.name}")}
    request = pb.ImportModelRequest(model_id="refused", copy_files=True,
                                    **{k: v.format(**names) for k, v in fields.items()})
    err = rpc_error(lambda: stub.ImportModel(request))
    assert err.code == code and err.fields == [field], err
    assert rpc_error(lambda: stub.GetModel(pb.GetModelRequest(model_id="refused"))).code == (
        grpc.StatusCode.NOT_FOUND)
    assert bucket.keys(f"{MODELS}/refused") == []
