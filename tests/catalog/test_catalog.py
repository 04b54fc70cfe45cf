"""CatalogService against a real process on loopback: registry, imports, samplers, backends."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import catalog_pb2 as pb
from boothstudio.v1 import catalog_pb2_grpc
from tests.helpers import ServiceProcess, free_port

EMBEDDED = "boothstudio-tiny"


@pytest.fixture(scope="module")
def hf_cache(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache holding `acme/tiny-sd` (snapshot + refs/main), read offline."""
    root = tmp_path_factory.mktemp("hf")
    repo = root / "models--acme--tiny-sd"
    snap = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    return root


@pytest.fixture(scope="module")
def catalog(module_services, tiny_model: Path, hf_cache: Path) -> ServiceProcess:  # type: ignore[no-untyped-def]
    return module_services(
        "catalog",
        env={
            "BOOTHSTUDIO_EMBEDDED_MODEL": str(tiny_model),
            "HF_HUB_CACHE": str(hf_cache),
            "HF_HUB_OFFLINE": "1",
            # nothing listens there: the diffusers backend is reported unreachable
            "BOOTHSTUDIO_GENERATOR_ADDRESS": f"127.0.0.1:{free_port()}",
            "BOOTHSTUDIO_TRAINER_ADDRESS": f"127.0.0.1:{free_port()}",
        },
    )


@pytest.fixture
def stub(catalog: ServiceProcess) -> catalog_pb2_grpc.CatalogServiceStub:
    return catalog_pb2_grpc.CatalogServiceStub(catalog.channel())


def error(call) -> tuple[grpc.StatusCode, list[str], str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    d = decode_rpc_error(info.value)
    return d.code, d.fields, d.reason


def test_embedded_default_is_always_present_and_undeletable(stub) -> None:  # type: ignore[no-untyped-def]
    model = stub.GetModel(pb.GetModelRequest(model_id=EMBEDDED)).model
    assert model.builtin and model.kind == pb.MODEL_KIND_BASE
    assert model.architecture == "tiny-sd" and model.native_resolution == 64
    assert model.backend_id == "diffusers"
    assert model.format == pb.MODEL_FORMAT_DIFFUSERS
    code, fields, reason = error(lambda: stub.DeleteModel(pb.DeleteModelRequest(model_id=EMBEDDED)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and fields == ["model_id"]
    assert reason == "MODEL_BUILTIN"
    assert stub.GetModel(pb.GetModelRequest(model_id=EMBEDDED)).model.id == EMBEDDED


def test_import_folder_copy_and_delete_files(stub, tiny_model: Path, catalog) -> None:  # type: ignore[no-untyped-def]
    resp = stub.ImportModel(
        pb.ImportModelRequest(
            diffusers_path=str(tiny_model),
            model_id="copied",
            copy_files=True,
            description="a copy",
        )
    )
    m = resp.model
    assert m.id == "copied" and m.format == pb.MODEL_FORMAT_DIFFUSERS
    assert m.architecture == "tiny-sd" and not m.inpainting and m.size_bytes > 0
    assert Path(m.source_path).is_relative_to(catalog.data_dir)
    assert (Path(m.source_path) / "model_index.json").exists()
    code, fields, _ = error(
        lambda: stub.ImportModel(
            pb.ImportModelRequest(diffusers_path=str(tiny_model), model_id="copied")
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and fields == ["model_id"]
    freed = stub.DeleteModel(
        pb.DeleteModelRequest(model_id="copied", delete_files=True)
    ).freed_bytes
    assert freed == m.size_bytes
    assert not Path(m.source_path).exists()
    assert tiny_model.exists()  # the original is never touched
    code, fields, _ = error(lambda: stub.GetModel(pb.GetModelRequest(model_id="copied")))
    assert code == grpc.StatusCode.NOT_FOUND and fields == ["model_id"]


def test_import_single_file_and_hf_cache(stub, tiny_model: Path, single_file: Path) -> None:  # type: ignore[no-untyped-def]
    m = stub.ImportModel(
        pb.ImportModelRequest(single_file_path=str(single_file), config_path=str(tiny_model))
    ).model
    assert m.format == pb.MODEL_FORMAT_SINGLE_FILE and m.config_path == str(tiny_model.resolve())
    assert m.id == "tiny" and m.architecture == "tiny-sd"
    code, fields, reason = error(
        lambda: stub.ImportModel(pb.ImportModelRequest(single_file_path=str(single_file)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["config_path"]
    assert reason == "CONFIG_REQUIRED"
    hf = stub.ImportModel(pb.ImportModelRequest(hf_cache_id="acme/tiny-sd")).model
    assert hf.format == pb.MODEL_FORMAT_HF_CACHE and hf.source_path == "acme/tiny-sd"
    code, fields, _ = error(
        lambda: stub.ImportModel(pb.ImportModelRequest(hf_cache_id="acme/nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND and fields == ["hf_cache_id"]


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (pb.ImportModelRequest(), grpc.StatusCode.INVALID_ARGUMENT, "source"),
        (
            pb.ImportModelRequest(diffusers_path="/no/such/dir"),
            grpc.StatusCode.NOT_FOUND,
            "diffusers_path",
        ),
        (
            pb.ImportModelRequest(diffusers_path="/tmp", model_id="Bad Id"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "model_id",
        ),
        (
            pb.ImportModelRequest(diffusers_path="/tmp", backend_id="nope"),
            grpc.StatusCode.NOT_FOUND,
            "backend_id",
        ),
        (
            pb.ImportModelRequest(diffusers_path="/tmp", origin=pb.ModelOrigin(base_model_id="x")),
            grpc.StatusCode.NOT_FOUND,
            "origin.base_model_id",
        ),
    ],
)
def test_import_errors_name_the_field(stub, request_, code, field) -> None:  # type: ignore[no-untyped-def]
    got, fields, _ = error(lambda: stub.ImportModel(request_))
    assert got == code and field in fields


def test_fine_tuned_registration_filters_and_pagination(stub, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        m = stub.ImportModel(
            pb.ImportModelRequest(
                diffusers_path=str(tiny_model),
                model_id=f"ft-{i}",
                origin=pb.ModelOrigin(base_model_id=EMBEDDED, training_job_id=f"job-{i}"),
                trigger_phrase="a zwx circle",
            )
        ).model
        assert m.kind == pb.MODEL_KIND_FINE_TUNED and m.origin.training_job_id == f"job-{i}"
    seen, token = [], ""
    while True:
        page = stub.ListModels(
            pb.ListModelsRequest(page_size=2, page_token=token, base_model_id=EMBEDDED)
        )
        assert page.total_size == 3
        seen += [m.id for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["ft-2", "ft-1", "ft-0"]  # newest first
    kinds = stub.ListModels(pb.ListModelsRequest(kind=pb.MODEL_KIND_BASE)).models
    assert EMBEDDED in [m.id for m in kinds] and all(m.kind == pb.MODEL_KIND_BASE for m in kinds)
    code, fields, _ = error(
        lambda: stub.ListModels(pb.ListModelsRequest(page_size=2, page_token=token or "x"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["page_token"]


def test_samplers_with_schemas_and_aliases(stub) -> None:  # type: ignore[no-untyped-def]
    resp = stub.ListSamplers(pb.ListSamplersRequest())
    assert resp.backend_id == "diffusers" and resp.default_sampler == "dpmpp_2m"
    by_id = {s.id: s for s in resp.samplers}
    assert len(by_id) >= 12
    assert "DPM++ 2M Karras" in by_id["dpmpp_2m"].aliases
    assert by_id["dpmpp_2m"].default_schedule == "karras"
    eta = {p.name: p for p in by_id["ddim"].parameters}["eta"]
    assert eta.type == pb.PARAMETER_TYPE_FLOAT and eta.min_value == 0 and eta.max_value == 1
    assert {"karras", "exponential", "normal"} <= {s.id for s in resp.schedules}
    same = stub.ListSamplers(pb.ListSamplersRequest(model_id=EMBEDDED))
    assert [s.id for s in same.samplers] == list(by_id)
    code, fields, _ = error(lambda: stub.ListSamplers(pb.ListSamplersRequest(model_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND and fields == ["model_id"]
    code, fields, _ = error(lambda: stub.ListSamplers(pb.ListSamplersRequest(backend_id="a1111")))
    assert code == grpc.StatusCode.NOT_FOUND and fields == ["backend_id"]


def test_backends_report_reachability(stub) -> None:  # type: ignore[no-untyped-def]
    resp = stub.ListBackends(pb.ListBackendsRequest(refresh=True))
    assert resp.default_backend_id == "diffusers"
    (local,) = resp.backends
    assert local.kind == pb.BACKEND_KIND_DIFFUSERS and local.device == "cpu"
    assert local.capabilities.inpaint and local.capabilities.training
    assert not local.reachable and "not reachable" in local.message


async def test_a_model_that_is_not_registered_leaves_no_copy(tmp_path: Path) -> None:
    """ImportModel with copy_files copies first and registers after; when the row cannot be
    written, the copy goes too."""
    import sqlite3

    from boothstudio.services.catalog import imports, model_files
    from boothstudio.shared.artifact_store import open_artifact_store

    store = open_artifact_store("", tmp_path)
    src = tmp_path / "elsewhere" / "model"
    (src / "unet").mkdir(parents=True)
    (src / "unet" / "weights.safetensors").write_bytes(b"x")
    key, _ = model_files.copy_local(store, src, "m")
    copy = tmp_path / "catalog" / "models" / "m"
    assert (copy / "model" / "unet" / "weights.safetensors").exists()

    class FailingRegistry:
        def insert(self, values: dict[str, Any]) -> None:
            raise sqlite3.OperationalError("database is locked")

    values = {"id": "m", "owned_path": str(copy), "source_path": store.url_of(key)}
    with pytest.raises(sqlite3.OperationalError):
        await imports.register(FailingRegistry(), values, store)  # type: ignore[arg-type]
    assert not copy.exists() and src.exists()
