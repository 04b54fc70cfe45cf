"""The SDK's transport behaviour against small in-process fake servers (fast, no services):
retries on UNAVAILABLE for idempotent calls only, deadlines, the API key, round-robin over
generator addresses, and cancellation when a generation stream is left or cancelled, for the
sync and the asyncio client.

Rerun: `.venv/bin/pytest tests/sdk/test_transport.py -q`
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from boothstudio.clients.sdk import (
    AsyncBoothStudio,
    BoothStudio,
    DeadlineExceeded,
    Finished,
    GenerationStatus,
    InvalidArgument,
    Progress,
    RetryPolicy,
    Unavailable,
)
from boothstudio.shared import errors as shared_errors
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, generator_pb2, generator_pb2_grpc

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)


class FakeCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self) -> None:
        self.fail_next = 0
        self.calls: list[str] = []
        self.keys: list[str | None] = []

    def _maybe_fail(self, name: str, context: Any) -> None:
        self.calls.append(name)
        self.keys.append(dict(context.invocation_metadata()).get("x-api-key"))
        if self.fail_next:
            self.fail_next -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    def ListModels(self, request: Any, context: Any) -> Any:
        self._maybe_fail("ListModels", context)
        return catalog_pb2.ListModelsResponse(
            models=[catalog_pb2.Model(id="tiny-sd")], total_size=1
        )

    def ImportModel(self, request: Any, context: Any) -> Any:
        self._maybe_fail("ImportModel", context)
        return catalog_pb2.ImportModelResponse(model=catalog_pb2.Model(id="new"))

    def GetModel(self, request: Any, context: Any) -> Any:
        self._maybe_fail("GetModel", context)
        if request.model_id == "slow":
            time.sleep(5.0)
        if request.model_id == "bad":
            status = shared_errors.InvalidArgument.for_field("model_id", "bad id").to_grpc_status()
            context.abort_with_status(status)
        return catalog_pb2.GetModelResponse(model=catalog_pb2.Model(id=request.model_id))


class FakeGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """Streams queued, started, `steps` progress events (0.05 s apart), one image, finished."""

    def __init__(self, steps: int = 40) -> None:
        self.steps = steps
        self.generate_calls = 0
        self.client_left = threading.Event()
        self.cancel_requests: list[str] = []
        self._cancelled: set[str] = set()

    def Generate(self, request: Any, context: Any) -> Iterator[Any]:
        self.generate_calls += 1
        context.add_callback(self.client_left.set)
        job = request.job_id
        yield generator_pb2.GenerateResponse(job_id=job, queued=generator_pb2.GenerationQueued())
        yield generator_pb2.GenerateResponse(
            job_id=job, started=generator_pb2.GenerationStarted(seeds=[request.seed])
        )
        for step in range(1, self.steps + 1):
            if not context.is_active():
                return
            if job in self._cancelled:
                yield generator_pb2.GenerateResponse(
                    job_id=job,
                    finished=generator_pb2.GenerationFinished(
                        status=generator_pb2.GENERATION_STATUS_CANCELLED,
                        error_reason="CANCELLED_BY_USER",
                    ),
                )
                return
            time.sleep(0.05 if self.steps > 3 else 0)
            yield generator_pb2.GenerateResponse(
                job_id=job,
                progress=generator_pb2.GenerationProgress(step=step, total_steps=self.steps),
            )
        yield generator_pb2.GenerateResponse(
            job_id=job,
            image=generator_pb2.GeneratedImage(
                png=b"\x89PNG", seed=request.seed, finish_reason=generator_pb2.FINISH_REASON_STOP
            ),
        )
        yield generator_pb2.GenerateResponse(
            job_id=job,
            finished=generator_pb2.GenerationFinished(
                status=generator_pb2.GENERATION_STATUS_SUCCEEDED, image_count=1
            ),
        )

    def CancelGeneration(self, request: Any, context: Any) -> Any:
        self.cancel_requests.append(request.job_id)
        self._cancelled.add(request.job_id)
        return generator_pb2.CancelGenerationResponse(cancelled=True)


def serve(servicer: Any, add: Any) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def fakes() -> Iterator[dict[str, Any]]:
    cat = FakeCatalog()
    gens = [FakeGenerator(), FakeGenerator()]
    servers = []
    s, cat_addr = serve(cat, catalog_pb2_grpc.add_CatalogServiceServicer_to_server)
    servers.append(s)
    gen_addrs = []
    for g in gens:
        s, addr = serve(g, generator_pb2_grpc.add_GeneratorServiceServicer_to_server)
        servers.append(s)
        gen_addrs.append(addr)
    yield {"catalog": cat, "generators": gens, "catalog_addr": cat_addr, "gen_addrs": gen_addrs}
    for s in servers:
        s.stop(None)


def client_for(f: dict[str, Any], **kw: Any) -> BoothStudio:
    return BoothStudio(f["catalog_addr"], f["gen_addrs"], "127.0.0.1:1", retry=FAST_RETRY, **kw)


def test_idempotent_call_retried_on_unavailable(fakes: dict[str, Any]) -> None:
    cat = fakes["catalog"]
    cat.fail_next = 2
    with client_for(fakes) as client:
        assert [m.id for m in client.list_models()] == ["tiny-sd"]
    assert cat.calls == ["ListModels"] * 3


def test_mutating_call_not_retried(fakes: dict[str, Any]) -> None:
    cat = fakes["catalog"]
    cat.fail_next = 1
    with client_for(fakes) as client, pytest.raises(Unavailable):
        client.import_model("org/name")
    assert cat.calls == ["ImportModel"]


def test_retries_give_up_after_max_attempts(fakes: dict[str, Any]) -> None:
    fakes["catalog"].fail_next = 10
    with client_for(fakes) as client, pytest.raises(Unavailable, match="warming up"):
        client.get_model("m")
    assert len(fakes["catalog"].calls) == FAST_RETRY.max_attempts


def test_deadline_and_api_key(fakes: dict[str, Any]) -> None:
    with client_for(fakes, api_key="secret") as client:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.get_model("slow", timeout=0.2)
        assert time.monotonic() - t0 < 4.0
        with pytest.raises(InvalidArgument) as e:
            client.get_model("bad")
        assert e.value.fields == ["model_id"]
    assert fakes["catalog"].keys == ["secret", "secret"]


def test_round_robin_over_generators(fakes: dict[str, Any]) -> None:
    for g in fakes["generators"]:
        g.steps = 1
    with client_for(fakes) as client:
        for i in range(4):
            assert len(client.generate("p", seed=i)) == 1
    assert [g.generate_calls for g in fakes["generators"]] == [2, 2]


def test_breaking_out_of_the_stream_cancels_the_rpc(fakes: dict[str, Any]) -> None:
    gc.disable()  # no reliance on the cycle collector: the dropped stream is freed at once
    try:
        with client_for(fakes) as client:
            for event in client.stream_generate("p", seed=1):
                if isinstance(event, Progress):
                    break
            gen = next(g for g in fakes["generators"] if g.generate_calls)
            assert gen.client_left.wait(30), "the server did not see the client leave"
    finally:
        gc.enable()


def test_cancel_keeps_stream_until_finished(fakes: dict[str, Any]) -> None:
    with client_for(fakes) as client:
        stream = client.stream_generate("p", seed=1)
        events = []
        for event in stream:
            events.append(event)
            if isinstance(event, Progress) and event.step == 2:
                assert stream.cancel()
        assert isinstance(events[-1], Finished)
        assert events[-1].status is GenerationStatus.CANCELLED
        served = [g for g in fakes["generators"] if g.generate_calls]
        assert served[0].cancel_requests == [stream.job_id]  # sent to the generator running it


async def test_async_client_same_surface(fakes: dict[str, Any]) -> None:
    fakes["catalog"].fail_next = 1
    for g in fakes["generators"]:
        g.steps = 1
    async with AsyncBoothStudio(
        fakes["catalog_addr"],
        fakes["gen_addrs"],
        "127.0.0.1:1",
        retry=FAST_RETRY,
        api_key="k",
    ) as client:
        page = await client.list_models()
        assert [m.id for m in page] == ["tiny-sd"]
        results = [await client.generate("p", seed=s) for s in (3, 4)]
        assert [r.seeds for r in results] == [[3], [4]]
        with pytest.raises(InvalidArgument):
            await client.get_model("bad")
    assert [g.generate_calls for g in fakes["generators"]] == [1, 1]
    assert set(fakes["catalog"].keys) == {"k"}


async def test_async_break_and_cancel(fakes: dict[str, Any]) -> None:
    async with AsyncBoothStudio(fakes["catalog_addr"], fakes["gen_addrs"], "x:1") as client:
        async with client.stream_generate("p") as stream:
            async for event in stream:
                if isinstance(event, Progress):
                    break
        gen = next(g for g in fakes["generators"] if g.generate_calls)
        assert gen.client_left.wait(30)

        stream2 = client.stream_generate("p")
        last = None
        async for event in stream2:
            last = event
            if isinstance(event, Progress) and event.step == 1:
                assert await stream2.cancel()
        assert isinstance(last, Finished) and last.status is GenerationStatus.CANCELLED


def test_generation_fails_over_to_a_reachable_generator(fakes: dict[str, Any]) -> None:
    fakes["generators"][0].steps = 1
    with BoothStudio(
        fakes["catalog_addr"], ["127.0.0.1:1", fakes["gen_addrs"][0]], "x:1", retry=FAST_RETRY
    ) as client:
        for seed in range(3):  # whichever address comes first, the job ends on the live one
            assert client.generate("p", seed=seed).seeds == [seed]
    assert fakes["generators"][0].generate_calls == 3


def test_api_key_on_streams_and_break(fakes: dict[str, Any]) -> None:
    with client_for(fakes, api_key="secret") as client:
        with client.stream_generate("p") as stream:
            for event in stream:
                if isinstance(event, Progress):
                    break
        gen = next(g for g in fakes["generators"] if g.generate_calls)
        assert gen.client_left.wait(30)
        assert client.cancel_generation("unknown-job") is True  # fake answers cancelled=True
    assert all(g.cancel_requests == ["unknown-job"] for g in fakes["generators"])  # sent to all
