"""Queue control through a real Catalog + Generator: priorities and the per-key limit.

The Generator runs with two API keys (BOOTHSTUDIO_API_KEYS); a long job keeps the device busy
while the jobs under test wait, so their order in the queue is what decides.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import generator_pb2, generator_pb2_grpc
from tests.generator.stack import Stack, scrape, start_stack, stop_stack

KEY_A, KEY_B = "key-a-secret", "key-b-secret"
LIMIT = 2


@pytest.fixture(scope="module")
def stack(tiny_model: Path) -> Iterator[Stack]:
    s = start_stack(
        tiny_model,
        ["queue_size=8", f"max_queued_per_key={LIMIT}", "max_batch_images=8", "preload=false"],
        generator_env={"BOOTHSTUDIO_API_KEYS": f"{KEY_A}=generate;{KEY_B}=generate"},
    )
    yield s
    stop_stack(s)


def stub(stack: Stack, key: str) -> generator_pb2_grpc.GeneratorServiceStub:
    return generator_pb2_grpc.GeneratorServiceStub(stack.generator.channel(api_key=key))


class Follower:
    """Reads one Generate stream in a thread, keeping its events."""

    def __init__(self, gen: generator_pb2_grpc.GeneratorServiceStub, **request: Any) -> None:
        self.events: list[generator_pb2.GenerateResponse] = []
        self.queued = threading.Event()
        self.progressed = threading.Event()
        self.call = gen.Generate(generator_pb2.GenerateRequest(**request), timeout=900)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for e in self.call:
            self.events.append(e)
            if e.HasField("queued"):
                self.queued.set()
            if e.HasField("progress"):
                self.progressed.set()

    def first(self, kind: str) -> Any:
        return next(getattr(e, kind) for e in self.events if e.HasField(kind))

    def finished(self) -> generator_pb2.GenerationFinished:
        self.thread.join(600)
        assert not self.thread.is_alive(), "the stream did not end"
        return self.first("finished")


def busy(stack: Stack, job_id: str) -> Follower:
    """A long job running (not waiting) until cancelled."""
    blocker = Follower(stub(stack, KEY_A), prompt="long", steps=150, seed=1, job_id=job_id,
                       skip_gallery=True)
    assert blocker.progressed.wait(300), "the long job never progressed"
    return blocker


def test_batch_job_queued_first_runs_after_an_interactive_one(stack: Stack) -> None:
    blocker = busy(stack, "busy-priority")
    common = {"prompt": "a red circle", "steps": 2, "seed": 5}
    batch = Follower(stub(stack, KEY_A), job_id="bulk-1",
                     priority=generator_pb2.PRIORITY_BATCH, **common)
    assert batch.queued.wait(60)
    interactive = Follower(stub(stack, KEY_B), job_id="person-1", **common)
    assert interactive.queued.wait(60)
    # behind the running job; the interactive one goes ahead of the batch job queued before it
    assert batch.first("queued").position == 1
    assert interactive.first("queued").position == 1
    depth = scrape(stack.generator)
    assert depth['boothstudio_generator_queue_depth_by_priority{priority="batch"}'] == 1
    assert depth['boothstudio_generator_queue_depth_by_priority{priority="interactive"}'] == 1
    assert stub(stack, KEY_A).CancelGeneration(
        generator_pb2.CancelGenerationRequest(job_id="busy-priority")).cancelled
    blocker.finished()
    ok = generator_pb2.GENERATION_STATUS_SUCCEEDED
    assert interactive.finished().status == ok and batch.finished().status == ok
    # compatible requests, yet not one batch: a batch job does not ride with interactive ones
    assert interactive.first("started").batch_size == 1
    assert batch.first("started").batch_size == 1
    newest_first = [i.job_id for i in stack.gen.ListImages(
        generator_pb2.ListImagesRequest(), metadata=[("x-api-key", KEY_A)]).images]
    assert newest_first.index("bulk-1") < newest_first.index("person-1")


def test_one_key_at_its_limit_does_not_block_another(stack: Stack) -> None:
    blocker = busy(stack, "busy-limit")
    gen_a, gen_b = stub(stack, KEY_A), stub(stack, KEY_B)
    waiting = [Follower(gen_a, prompt=f"a{i}", steps=1, job_id=f"limit-a{i}",
                        skip_gallery=True) for i in range(LIMIT)]
    for w in waiting:
        assert w.queued.wait(60)
    with pytest.raises(grpc.RpcError) as err:
        next(iter(gen_a.Generate(generator_pb2.GenerateRequest(prompt="one more", steps=1))))
    d = decode_rpc_error(err.value)
    assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert d.reason == "QUEUE_LIMIT_PER_KEY" and d.retry_after is not None
    assert d.metadata["max_queued_per_key"] == str(LIMIT)
    other = Follower(gen_b, prompt="b", steps=1, job_id="limit-b", skip_gallery=True)
    assert other.queued.wait(60)
    assert other.first("queued").position == LIMIT + 1  # behind A's jobs and the running one
    for job_id in ("limit-a0", "limit-a1", "limit-b", "busy-limit"):
        assert gen_a.CancelGeneration(
            generator_pb2.CancelGenerationRequest(job_id=job_id)).cancelled
    for f in (*waiting, other, blocker):
        assert f.finished().status == generator_pb2.GENERATION_STATUS_CANCELLED
