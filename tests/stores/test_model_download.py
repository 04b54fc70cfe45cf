"""A Generator whose model lives only in the S3 bucket: real Catalog and Generator processes, each
with its own empty data dir, and a real S3 endpoint (tests/stores/s3.py).

The first Generate pulls the model into the replica's model cache (<data_dir>/generator/
model_cache) and its stream reports the download (ModelDownload events from 0 to 100%) before
denoising progress and the image; the second finds it cached and reports none.

The model is registered twice over: a row written into the Catalog's registry directly
(source_path = the model's s3:// location), and an ImportModel of a folder in the bucket
(copy_files: copied inside the bucket by the Catalog). And in process, the diffusers adapter
with a LoRA (a file of a stored folder) on a base model, both only in the bucket.
Rerun: `.venv/bin/pytest tests/stores/test_model_download.py -v`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from boothstudio.services.catalog.registry import Registry
from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR, inspect_folder
from boothstudio.shared.artifact_store import open_artifact_store
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, generator_pb2_grpc
from boothstudio.v1 import generator_pb2 as pb
from tests.stores.helpers import isolated_env
from tests.stores.s3 import S3Target

MODEL_ID = "tiny-in-the-bucket"
NO_PRELOAD = ["--set", "preload=false", "--set", "torch_threads=1"]


def register_remote_model(catalog_dir: Path, location: str) -> None:
    info = inspect_folder(EMBEDDED_MODEL_DIR)
    registry = Registry(catalog_dir / "catalog" / "catalog.sqlite3")
    try:
        registry.insert({
            "id": MODEL_ID,
            "display_name": "the embedded model, kept in S3",
            "kind": catalog_pb2.MODEL_KIND_BASE,
            "backend_id": "diffusers",
            "architecture": info.architecture,
            "native_resolution": info.native_resolution,
            "prediction_type": catalog_pb2.PREDICTION_TYPE_EPSILON,
            "source_path": location,
            "format": catalog_pb2.MODEL_FORMAT_DIFFUSERS,
        })
    finally:
        registry.close()


def kinds(events: list[pb.GenerateResponse]) -> list[str]:
    return [e.WhichOneof("event") or "keepalive" for e in events]


def test_the_first_generation_on_a_replica_reports_the_model_download_then_images(
    start_service: Any, s3_bucket: S3Target, tmp_path: Path
) -> None:
    store = open_artifact_store(s3_bucket.url, tmp_path / "uploader", s3_bucket.options)
    manifest = store.put_tree(EMBEDDED_MODEL_DIR, f"catalog/models/{MODEL_ID}")
    register_remote_model(tmp_path / "catalog", store.url_of(f"catalog/models/{MODEL_ID}"))
    catalog = start_service("catalog", env=isolated_env(**s3_bucket.env),
                            data_dir=tmp_path / "catalog")
    gen = start_service(
        "generator", NO_PRELOAD,
        env=isolated_env(BOOTHSTUDIO_CATALOG_ADDRESS=catalog.address, **s3_bucket.env),
        data_dir=tmp_path / "generator", timeout=180,
    )
    stub = generator_pb2_grpc.GeneratorServiceStub(gen.channel())
    request = pb.GenerateRequest(prompt="a red circle", steps=2, width=64, height=64, seed=7,
                                 model_id=MODEL_ID, skip_gallery=True)

    first = list(stub.Generate(request, timeout=300))
    assert first[-1].finished.status == pb.GENERATION_STATUS_SUCCEEDED, first[-1]
    order = kinds(first)
    downloads = [e.model_download for e in first if e.HasField("model_download")]
    assert downloads, order
    assert {(d.model_id, d.bytes_total) for d in downloads} == {(MODEL_ID, manifest.size)}
    assert downloads[0].bytes_done == 0 and downloads[-1].bytes_done == manifest.size
    done = [d.bytes_done for d in downloads]
    assert done == sorted(done)
    # the download comes after the start and before any denoising step or image
    last_download = len(order) - 1 - order[::-1].index("model_download")
    assert order.index("started") < order.index("model_download")
    assert last_download < order.index("progress") < order.index("image")
    cached = tmp_path / "generator" / "generator" / "model_cache" / manifest.digest
    assert (cached / "model_index.json").exists()

    # cached on this replica now: no download the second time
    second = list(stub.Generate(pb.GenerateRequest(
        prompt="a blue square", steps=2, width=64, height=64, seed=8, model_id=MODEL_ID,
        skip_gallery=True), timeout=300))
    assert second[-1].finished.status == pb.GENERATION_STATUS_SUCCEEDED
    assert "model_download" not in kinds(second) and "image" in kinds(second)


def test_a_model_imported_from_the_bucket_through_the_catalog_is_pulled_by_the_generator(
    start_service: Any, s3_bucket: S3Target, tmp_path: Path
) -> None:
    store = open_artifact_store(s3_bucket.url, tmp_path / "uploader", s3_bucket.options)
    store.put_tree(EMBEDDED_MODEL_DIR, "uploads/tiny")
    catalog = start_service("catalog", env=isolated_env(**s3_bucket.env))
    imported = catalog_pb2_grpc.CatalogServiceStub(catalog.channel()).ImportModel(
        catalog_pb2.ImportModelRequest(diffusers_path=store.url_of("uploads/tiny"),
                                       model_id=MODEL_ID, copy_files=True), timeout=120).model
    assert imported.source_path.startswith(s3_bucket.url)
    stored = store.locate(imported.source_path)
    assert stored is not None
    gen = start_service(
        "generator", NO_PRELOAD,
        env=isolated_env(BOOTHSTUDIO_CATALOG_ADDRESS=catalog.address, **s3_bucket.env),
        timeout=180,
    )
    events = list(generator_pb2_grpc.GeneratorServiceStub(gen.channel()).Generate(
        pb.GenerateRequest(prompt="a red circle", steps=2, width=64, height=64, seed=7,
                           model_id=MODEL_ID, skip_gallery=True), timeout=300))
    assert events[-1].finished.status == pb.GENERATION_STATUS_SUCCEEDED, events[-1]
    downloads = [e.model_download for e in events if e.HasField("model_download")]
    assert downloads and downloads[-1].bytes_done == downloads[-1].bytes_total == (
        stored.manifest.size)
    assert (gen.data_dir / "generator" / "model_cache" / stored.manifest.digest).is_dir()


def test_a_lora_and_its_base_model_in_the_bucket_are_both_pulled_in_process(
    s3_bucket: S3Target, tmp_path: Path
) -> None:
    """The diffusers adapter itself: a LoRA (one file of a stored folder) on a base model, both
    only in the bucket; each is pulled once, with its own download reports, and the LoRA's
    picture differs from the base model's."""
    import numpy as np

    from boothstudio.services.diffusion.model_cache import ModelCache
    from boothstudio.services.generator.adapters.base import GenerationSpec, ModelRef, RunHooks
    from boothstudio.services.generator.adapters.diffusers import DiffusersAdapter
    from tests.generator.fixtures import build_lora

    store = open_artifact_store(s3_bucket.url, tmp_path / "data", s3_bucket.options)
    store.put_tree(EMBEDDED_MODEL_DIR, "catalog/models/base")
    lora_file = build_lora(EMBEDDED_MODEL_DIR, tmp_path / "lora")
    store.put_tree(lora_file.parent, "catalog/models/lora")
    base = ModelRef("base", "diffusers", store.url_of("catalog/models/base"), "diffusers",
                    native_resolution=64)
    lora = ModelRef("lora", "diffusers", store.url_of(f"catalog/models/lora/{lora_file.name}"),
                    "lora", base=base, native_resolution=64)
    adapter = DiffusersAdapter(model_cache=ModelCache(store, tmp_path / "cache", 10**9))
    reports: list[tuple[str, int, int]] = []

    def generate(model: ModelRef) -> np.ndarray:
        out: list[Any] = []
        adapter.run([GenerationSpec(prompt="a red circle", negative_prompt="", model=model,
                                    sampler="euler", schedule="normal", steps=2, cfg_scale=7.0,
                                    width=64, height=64, seeds=[11])],
                    RunHooks(on_step=lambda p: None, should_stop=lambda: False,
                             is_cancelled=lambda k: False,
                             on_image=lambda k, i, im: out.append(im),
                             on_warning=lambda *a: None,
                             on_download=lambda *r: reports.append(r)))
        return np.asarray(out[0], np.int16)

    plain = generate(base)
    assert {r[0] for r in reports} == {"base"} and reports[-1][1] == reports[-1][2]
    reports.clear()
    with_lora = generate(lora)
    assert {r[0] for r in reports} == {"lora"} and reports[-1][1] == reports[-1][2]
    assert np.abs(with_lora - plain).mean() > 2.0
    reports.clear()
    generate(lora)
    assert reports == []  # loaded: nothing pulled again
