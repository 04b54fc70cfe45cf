"""Bad input meets one layer, in every service: each service as its own process on loopback.

What every RPC gets from shared/ (request checks, token decoder, error clipping, reflection),
checked against the real processes; the property-based sweep over every RPC is tests/fuzz/.

Rerun: `.venv/bin/pytest tests/test_bad_input.py -v`
"""

from __future__ import annotations

import base64
import json
import math
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client.parser import text_string_to_metric_families

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    generator_pb2,
    generator_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.helpers import SERVICE_FULL_NAMES, ServiceProcess

SERVICES = ("catalog", "generator", "trainer")
LIST_CALLS: dict[str, tuple[str, Any]] = {
    "catalog": ("ListModels", catalog_pb2.ListModelsRequest),
    "generator": ("ListImages", generator_pb2.ListImagesRequest),
    "trainer": ("ListTrainingJobs", trainer_pb2.ListTrainingJobsRequest),
}
STUBS = {
    "catalog": catalog_pb2_grpc.CatalogServiceStub,
    "generator": generator_pb2_grpc.GeneratorServiceStub,
    "trainer": trainer_pb2_grpc.TrainerServiceStub,
}


def forged(payload: Any) -> str:
    """A page token as the services encode them, holding whatever a forger wants."""
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


FORGED_TOKENS = [
    forged({"p": 10**40, "s": "0"}),
    forged({"p": -1, "s": "0"}),
    forged({"p": 1.5, "s": "0"}),
    forged({"p": "10", "s": "0"}),
    forged({"p": [1], "s": "0"}),
    forged({"p": True, "s": "0"}),
    forged([1, 2]),
    forged("x"),
    "%%%not-base64%%%",
    "A" * 5000,
]


def error_of(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


@pytest.fixture(scope="module", params=SERVICES)
def svc(request: pytest.FixtureRequest, module_services: Any) -> ServiceProcess:
    extra = ["--set", "preload=false"] if request.param == "generator" else []
    s: ServiceProcess = module_services(request.param, extra)
    return s


@pytest.mark.parametrize("token", FORGED_TOKENS, ids=range(len(FORGED_TOKENS)))
def test_forged_page_tokens_are_invalid_argument(svc: ServiceProcess, token: str) -> None:
    method, request_type = LIST_CALLS[svc.name]
    call = getattr(STUBS[svc.name](svc.channel()), method)
    err = error_of(lambda: call(request_type(page_token=token), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert decode_rpc_error(err).fields == ["page_token"]


def test_undecodable_request_bytes_are_invalid_argument(svc: ServiceProcess) -> None:
    """Every method, unary or streaming, answers INVALID_ARGUMENT to bytes that are no message
    (the server library alone would say UNKNOWN)."""
    channel = svc.channel()
    service = descriptor_pool.Default().FindServiceByName(SERVICE_FULL_NAMES[svc.name])
    garbage = b"\xff\xff\xff\xff\x0f"  # a varint key that never ends
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        kind = (method.client_streaming, method.server_streaming)
        with pytest.raises(grpc.RpcError) as info:
            if kind == (False, False):
                channel.unary_unary(path)(garbage, timeout=10)
            elif kind == (False, True):
                list(channel.unary_stream(path)(garbage, timeout=10))
            elif kind == (True, False):
                channel.stream_unary(path)(iter([garbage]), timeout=10)
            else:
                list(channel.stream_stream(path)(iter([garbage]), timeout=10))
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, err.details())
        assert decode_rpc_error(err).reason == "MALFORMED_REQUEST"


def hostile_request(name: str) -> tuple[Callable[[grpc.Channel], Any], str]:
    """One call per service carrying a non-finite number or a control character, and the field
    path the answer must name."""
    if name == "catalog":
        request = catalog_pb2.GetModelRequest(model_id="tiny\x00../../etc/passwd")
        return lambda ch: STUBS[name](ch).GetModel(request, timeout=10), "model_id"
    if name == "generator":
        request = generator_pb2.GenerateRequest(
            prompt="a red circle",
            sampler_options={"eta": common_pb2.OptionValue(float_value=math.nan)},
        )
        return (
            lambda ch: list(STUBS[name](ch).Generate(request, timeout=10)),
            "sampler_options.eta",
        )
    request = trainer_pb2.CreateTrainingJobRequest(
        config=trainer_pb2.DreamBoothConfig(weight_decay=math.inf), validate_only=True
    )
    return lambda ch: STUBS[name](ch).CreateTrainingJob(request, timeout=10), "config.weight_decay"


def test_non_finite_numbers_and_control_characters_name_their_field(svc: ServiceProcess) -> None:
    call, field = hostile_request(svc.name)
    err = error_of(lambda: call(svc.channel()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in decode_rpc_error(err).fields


def test_huge_ids_are_refused_without_echoing_them(svc: ServiceProcess) -> None:
    """A 200 kB id used to come back in the error until the trailer passed the client's 8 KiB
    metadata limit, and the client saw RESOURCE_EXHAUSTED instead of the real answer."""
    huge = "a" * 200_000
    stub = STUBS[svc.name](svc.channel())
    calls = {
        "catalog": lambda: stub.GetModel(catalog_pb2.GetModelRequest(model_id=huge), timeout=10),
        "generator": lambda: stub.GetImage(
            generator_pb2.GetImageRequest(image_id=huge), timeout=10
        ),
        "trainer": lambda: stub.GetTrainingJob(
            trainer_pb2.GetTrainingJobRequest(job_id=huge), timeout=10
        ),
    }
    err = error_of(calls[svc.name])
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert len(err.details()) < 1024


def test_reflection_answers_v1_and_v1alpha(svc: ServiceProcess) -> None:
    channel = svc.channel()
    for version in ("v1", "v1alpha"):
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        asks = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=svc.full_name),
        ]
        listed, described = list(call(iter(asks), timeout=10))
        names = {s.name for s in listed.list_services_response.service}
        assert {svc.full_name, "grpc.reflection.v1.ServerReflection"} <= names, version
        assert described.file_descriptor_response.file_descriptor_proto, version


def test_metrics_have_no_created_series_and_a_component_label(svc: ServiceProcess) -> None:
    with urllib.request.urlopen(svc.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert not [s.name for s in samples if s.name.endswith("_created")]
    (info,) = [s for s in samples if s.name == "boothstudio_build_info"]
    assert info.labels["component"] == svc.name
    assert "service" not in info.labels  # scrape configs attach their own `service` label


# --------------------------------------------------------------------------- catalog imports


@pytest.fixture(scope="module")
def catalog(module_services: Any) -> ServiceProcess:
    s: ServiceProcess = module_services("catalog")
    return s


def model_ids(catalog: ServiceProcess) -> list[str]:
    stub = catalog_pb2_grpc.CatalogServiceStub(catalog.channel())
    return [m.id for m in stub.ListModels(catalog_pb2.ListModelsRequest(), timeout=10).models]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"diffusers_path": "/tmp/" + "x" * 300}, "diffusers_path"),
        ({"diffusers_path": "/tmp/" + "a/" * 2100}, "diffusers_path"),
        ({"single_file_path": "m.safetensors", "config_path": "/" + "c" * 256}, "config_path"),
        ({"diffusers_path": "/tmp", "display_name": "n" * 1000}, "display_name"),
        ({"diffusers_path": "/tmp", "origin": {"base_model_id": "../../etc"}},
         "origin.base_model_id"),
    ],
    ids=["long-name", "long-path", "long-config", "long-display-name", "path-as-id"],
)
def test_import_refuses_bad_paths_by_field_and_leaves_nothing(
    catalog: ServiceProcess, request_fields: dict[str, Any], field: str
) -> None:
    before = model_ids(catalog)
    stub = catalog_pb2_grpc.CatalogServiceStub(catalog.channel())
    request = catalog_pb2.ImportModelRequest(copy_files=True, **request_fields)
    err = error_of(lambda: stub.ImportModel(request, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in decode_rpc_error(err).fields
    assert model_ids(catalog) == before
    models_dir = catalog.data_dir / "catalog" / "models"
    assert not models_dir.exists() or not any(models_dir.iterdir())


def test_import_of_an_unreadable_path_names_the_field(
    catalog: ServiceProcess, tmp_path: Path
) -> None:
    """A file where a folder belongs (and the like) used to surface as INTERNAL."""
    not_a_folder = tmp_path / "weights.bin"
    not_a_folder.write_bytes(b"\0" * 16)
    stub = catalog_pb2_grpc.CatalogServiceStub(catalog.channel())
    for source in ({"diffusers_path": str(not_a_folder)},
                   {"single_file_path": str(tmp_path), "config_path": str(tmp_path)}):
        err = error_of(
            lambda source=source: stub.ImportModel(
                catalog_pb2.ImportModelRequest(**source), timeout=10
            )
        )
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
            source, err.code(), err.details())
        assert next(iter(source)) in decode_rpc_error(err).fields
