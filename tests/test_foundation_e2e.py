"""End-to-end checks of the foundation against each service running as its own OS process.

Rerun: `.venv/bin/pytest tests/test_foundation_e2e.py -v`
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.helpers import ServiceProcess

SERVICES = ("catalog", "generator", "trainer")
ADMIN_KEY, READ_KEY, GEN_KEY = "admin-key-123", "read-key-456", "gen-key-789"
KEYS_ENV = {"BOOTHSTUDIO_API_KEYS": f"{ADMIN_KEY}=admin;{READ_KEY}=read;{GEN_KEY}=generate"}


# One cheap read call and one mutating call per service.
def read_call(name: str, ch: grpc.Channel, **kw: Any) -> Any:
    if name == "catalog":
        return catalog_pb2_grpc.CatalogServiceStub(ch).ListModels(
            catalog_pb2.ListModelsRequest(**kw), timeout=10
        )
    if name == "generator":
        return generator_pb2_grpc.GeneratorServiceStub(ch).ListImages(
            generator_pb2.ListImagesRequest(**kw), timeout=10
        )
    return trainer_pb2_grpc.TrainerServiceStub(ch).ListTrainingJobs(
        trainer_pb2.ListTrainingJobsRequest(**kw), timeout=10
    )


READ_METHOD = {"catalog": "ListModels", "generator": "ListImages", "trainer": "ListTrainingJobs"}


def mutating_call(name: str, ch: grpc.Channel) -> Any:
    if name == "catalog":
        return catalog_pb2_grpc.CatalogServiceStub(ch).DeleteModel(
            catalog_pb2.DeleteModelRequest(model_id="nope"), timeout=10
        )
    if name == "generator":
        return generator_pb2_grpc.GeneratorServiceStub(ch).DeleteImages(
            generator_pb2.DeleteImagesRequest(image_ids=["nope"]), timeout=10
        )
    return trainer_pb2_grpc.TrainerServiceStub(ch).DeleteTrainingJob(
        trainer_pb2.DeleteTrainingJobRequest(job_id="nope"), timeout=10
    )


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def scrape(svc: ServiceProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse /metrics (Prometheus text format) into {(sample name, labels): value}."""
    with urllib.request.urlopen(svc.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def handled(samples: dict[Any, float], svc: ServiceProcess, method: str, code: str) -> float:
    labels = (
        ("grpc_code", code),
        ("grpc_method", method),
        ("grpc_service", svc.full_name),
        ("grpc_type", "unary"),
    )
    return samples.get(("grpc_server_handled_total", labels), 0.0)


@pytest.fixture(scope="module", params=SERVICES)
def svc(request: pytest.FixtureRequest, module_services: Any) -> ServiceProcess:
    """Each service, auth off."""
    s: ServiceProcess = module_services(request.param)
    return s


@pytest.fixture(scope="module", params=SERVICES)
def secured(request: pytest.FixtureRequest, module_services: Any) -> ServiceProcess:
    """Each service with API keys configured."""
    s: ServiceProcess = module_services(request.param, env=KEYS_ENV)
    return s


def test_health_serving(svc: ServiceProcess) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert svc.health() == serving
    assert svc.health("") == serving  # overall server status
    err = rpc_error(lambda: svc.health("boothstudio.v1.NoSuchService"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_service(svc: ServiceProcess) -> None:
    db = ProtoReflectionDescriptorDatabase(svc.channel())
    services = db.get_services()
    assert svc.full_name in services
    assert "grpc.health.v1.Health" in services
    # The full descriptor is reachable through reflection, so generic tools can build requests.
    assert db.FindFileContainingSymbol(svc.full_name).package == "boothstudio.v1"


def test_metrics_parse_and_handled_total_rises(svc: ServiceProcess) -> None:
    method = READ_METHOD[svc.name]
    before = scrape(svc)
    assert any(name == "boothstudio_build_info" for name, _ in before)
    assert ("grpc_server_started_total", ()) not in before  # only labelled series
    read_call(svc.name, svc.channel())
    after = scrape(svc)
    assert handled(after, svc, method, "OK") == handled(before, svc, method, "OK") + 1
    # The histogram has buckets for the method.
    assert any(
        name == "grpc_server_handling_seconds_bucket" and ("grpc_method", method) in labels
        for name, labels in after
    )


def test_invalid_argument_names_the_field(svc: ServiceProcess) -> None:
    for bad in (-1, 1001):
        err = rpc_error(lambda bad=bad: read_call(svc.name, svc.channel(), page_size=bad))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = decode_rpc_error(err)
        assert details.fields == ["page_size"]
        assert details.reason == "INVALID_ARGUMENT"
        assert details.domain == "boothstudio"
        assert "Traceback" not in (err.details() or "")


def test_not_implemented_yet_is_unimplemented_not_internal(svc: ServiceProcess) -> None:
    err = rpc_error(lambda: mutating_call(svc.name, svc.channel()))
    # Skeleton servicers answer UNIMPLEMENTED; once implemented, "nope" is simply not found.
    assert err.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND)


def test_auth_no_key_is_unauthenticated(secured: ServiceProcess) -> None:
    err = rpc_error(lambda: read_call(secured.name, secured.channel()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert decode_rpc_error(err).reason == "API_KEY_MISSING"
    err = rpc_error(lambda: read_call(secured.name, secured.channel(api_key="wrong")))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert decode_rpc_error(err).reason == "API_KEY_INVALID"


def test_auth_read_key_cannot_mutate(secured: ServiceProcess) -> None:
    err = rpc_error(lambda: mutating_call(secured.name, secured.channel(api_key=READ_KEY)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    details = decode_rpc_error(err)
    assert details.reason == "ROLE_REQUIRED"
    assert details.metadata["required_role"] in ("admin", "generate", "train")


def test_auth_roles_that_allow(secured: ServiceProcess) -> None:
    # read key may read; the admin key passes auth everywhere.
    read_call(secured.name, secured.channel(api_key=READ_KEY))
    err = rpc_error(lambda: mutating_call(secured.name, secured.channel(api_key=ADMIN_KEY)))
    assert err.code() not in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # `authorization: Bearer <key>` works as well as x-api-key.
    ch = secured.channel()
    stub_call = {
        "catalog": lambda: catalog_pb2_grpc.CatalogServiceStub(ch).ListModels(
            catalog_pb2.ListModelsRequest(),
            metadata=[("authorization", f"Bearer {READ_KEY}")],
            timeout=10,
        ),
        "generator": lambda: generator_pb2_grpc.GeneratorServiceStub(ch).ListImages(
            generator_pb2.ListImagesRequest(),
            metadata=[("authorization", f"Bearer {READ_KEY}")],
            timeout=10,
        ),
        "trainer": lambda: trainer_pb2_grpc.TrainerServiceStub(ch).ListTrainingJobs(
            trainer_pb2.ListTrainingJobsRequest(),
            metadata=[("authorization", f"Bearer {READ_KEY}")],
            timeout=10,
        ),
    }[secured.name]
    stub_call()
    # Health stays public for probes.
    assert secured.health() == health_pb2.HealthCheckResponse.SERVING


def test_generate_key_scope(module_services: Any) -> None:
    gen = module_services("generator", env=KEYS_ENV)
    # A generate key may delete gallery images (passes auth) but not train.
    err = rpc_error(lambda: mutating_call("generator", gen.channel(api_key=GEN_KEY)))
    assert err.code() not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize("name", SERVICES)
def test_sigterm_exits_cleanly_within_grace(name: str, start_service: Any) -> None:
    grace = 3.0
    svc: ServiceProcess = start_service(name, grace_period=grace)
    # Hold a long-lived server stream open (health Watch) so shutdown has in-flight work.
    ch = svc.channel()
    watch = health_pb2_grpc.HealthStub(ch).Watch(
        health_pb2.HealthCheckRequest(service=svc.full_name)
    )
    seen: list[int] = []

    def consume() -> None:
        try:
            for resp in watch:
                seen.append(int(resp.status))
        except grpc.RpcError:
            pass

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    # waits on the event itself, with a deadline only a hung service reaches (machines are busy)
    deadline = time.monotonic() + 60
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen == [health_pb2.HealthCheckResponse.SERVING]

    slack = 20.0  # process teardown on a loaded machine; what is checked is "not hung"
    start = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    rc = svc.proc.wait(timeout=grace + slack + 10)
    elapsed = time.monotonic() - start
    t.join(timeout=30)
    logs = svc.logs()
    assert rc == 0, logs[-3000:]
    # in-flight calls get the whole grace period, then are cancelled; allow process teardown
    assert elapsed < grace + slack, f"took {elapsed:.1f}s with grace {grace}s"
    # Watchers were told the service is going away before it stopped.
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen
    assert '"msg": "shutting down"' in logs and '"msg": "stopped"' in logs


@pytest.mark.parametrize("name", SERVICES)
def test_sigterm_idle_exits_within_grace(name: str, start_service: Any) -> None:
    grace = 10.0
    svc: ServiceProcess = start_service(name, grace_period=grace)
    start = time.monotonic()
    assert svc.terminate(timeout=grace + 10) == 0, svc.logs()[-3000:]
    assert time.monotonic() - start < grace


def test_structured_logs_are_json(svc: ServiceProcess) -> None:
    import json

    read_call(svc.name, svc.channel())
    lines = [json.loads(line) for line in svc.logs().splitlines() if line.startswith("{")]
    rpc = [x for x in lines if x.get("grpc_method", "").endswith(READ_METHOD[svc.name])]
    assert rpc and {"ts", "level", "service", "grpc_code", "duration_ms"} <= set(rpc[-1])
