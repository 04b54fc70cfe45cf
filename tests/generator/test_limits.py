"""Generator hardening: what a request may cost (picture and output sizes, work per request, ids)
is checked before any work, against real Catalog + Generator processes.

The pictures here are tiny files that promise huge images in their header (a PNG of zeros
compresses about 1000:1), so nothing in this test process decodes them either.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from boothstudio.services.generator import job_queue
from boothstudio.services.generator.gallery import Gallery
from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import generator_pb2
from tests.generator.stack import Stack, png, run, start_stack, stop_stack
from tests.generator.test_generator import _pattern

RPC_TIMEOUT = 120  # generous: refusals come at once, but the machine may be loaded


@pytest.fixture(scope="module")
def stack(tiny_model: Path) -> Iterator[Stack]:
    s = start_stack(tiny_model, ["preview_interval=0"])
    yield s
    stop_stack(s)


def zeros_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A valid PNG of `width` x `height` black pixels, written row by row (never held whole)."""
    colour_type, channels = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}[mode]

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    packer = zlib.compressobj(9)
    row = bytes(1 + width * channels)  # filter byte 0, then the pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))  # fmt: skip


def refusal(stack: Stack, **fields: object) -> tuple[grpc.StatusCode, list[str], str]:
    req = generator_pb2.GenerateRequest(
        **{"prompt": "x", "steps": 1, "skip_gallery": True, **fields}
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stack.gen.Generate(req, timeout=RPC_TIMEOUT))
    d = decode_rpc_error(err.value)
    return d.code, d.fields, d.message


def peak_rss_bytes(pid: int) -> int:
    """The process's resident-memory high-water mark (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_size_taken_from_a_large_init_image_must_pass_the_size_limit(stack: Stack) -> None:
    big = zeros_png(2400, 1600)  # within the picture limits, over 2048 a side as an output
    code, fields, message = refusal(stack, init_image=big)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["init_image"], message
    assert "width and height" in message
    # one side given is not enough: the other still comes from the picture
    code, fields, _ = refusal(stack, init_image=big, height=512)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["init_image"]
    # with both sides set the same picture is resized to them and runs
    out = run(stack.gen, prompt="x", steps=2, seed=1, init_image=big, width=64, height=64,
              skip_gallery=True)  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    assert (out["started"].width, out["started"].height) == (64, 64)
    # a picture within the limit still gives its own size
    out = run(stack.gen, prompt="x", steps=2, seed=1, init_image=png(_pattern()),
              skip_gallery=True)  # fmt: skip
    assert (out["started"].width, out["started"].height) == (64, 64)


def test_picture_over_the_pixel_limit_is_refused_even_with_a_size(stack: Stack) -> None:
    code, fields, message = refusal(stack, init_image=zeros_png(8192, 8192), width=64, height=64)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["init_image"], message
    assert "8192x8192" in message
    init = png(_pattern())
    code, fields, _ = refusal(stack, init_image=init, mask_image=zeros_png(8192, 8192, "L"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["mask_image"]


def test_work_per_request_is_bounded(stack: Stack) -> None:
    code, fields, message = refusal(stack, width=2048, height=2048, count=5)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["count"], message
    assert "lower count or size" in message


def test_huge_picture_in_a_small_file_is_refused_before_decoding(stack: Stack) -> None:
    bomb = zeros_png(12000, 12000, "RGBA")  # ~0.5 MB on the wire, 576 MB decoded
    assert len(bomb) < 1_000_000
    pid = stack.generator.proc.pid
    peak_before = peak_rss_bytes(pid)
    answers: list[int] = []
    stop = threading.Event()

    def watch_health() -> None:  # the event loop must keep answering meanwhile
        while not stop.is_set():
            answers.append(stack.generator.health(timeout=RPC_TIMEOUT))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    try:
        for _ in range(3):
            code, fields, message = refusal(stack, init_image=bomb, width=64, height=64)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["init_image"], message
            assert "12000x12000" in message
    finally:
        stop.set()
        watcher.join(RPC_TIMEOUT)
    assert answers and set(answers) == {health_pb2.HealthCheckResponse.SERVING}
    # decoded even once, the picture alone would have raised the peak by 576 MB
    grew = peak_rss_bytes(pid) - peak_before
    assert grew < 150 * 1024 * 1024, f"peak resident memory grew by {grew / 2**20:.0f} MiB"


def test_job_and_image_ids_are_checked_and_not_echoed_whole(stack: Stack) -> None:
    huge = "a" * 1_000_000

    def refused(call: object, request: object) -> tuple[grpc.StatusCode, list[str], str]:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=RPC_TIMEOUT)  # type: ignore[operator]
        d = decode_rpc_error(err.value)
        assert len(d.message) < 1000  # the answer fits a client's trailer limit
        return d.code, d.fields, d.message

    for job_id in (huge, "Not An Id"):
        code, fields, _ = refused(stack.gen.CancelGeneration,
                                  generator_pb2.CancelGenerationRequest(job_id=job_id))  # fmt: skip
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["job_id"])
    code, fields, _ = refused(stack.gen.GetImage, generator_pb2.GetImageRequest(image_id=huge))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["image_id"])
    code, fields, _ = refused(
        stack.gen.DeleteImages, generator_pb2.DeleteImagesRequest(image_ids=["img_ok", huge])
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["image_ids[1]"])
    code, fields, _ = refused(
        stack.gen.DeleteImages,
        generator_pb2.DeleteImagesRequest(image_ids=[f"i{n}" for n in range(1001)]),
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["image_ids"])
    code, fields, _ = refused(stack.gen.ListImages, generator_pb2.ListImagesRequest(job_id=huge))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["job_id"])
    # a well-formed unknown id is still just not found, and early cancellation still works
    code, _, _ = refused(stack.gen.GetImage, generator_pb2.GetImageRequest(image_id="img_missing"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert not stack.gen.CancelGeneration(
        generator_pb2.CancelGenerationRequest(job_id="early-bird")
    ).cancelled
    out = run(stack.gen, prompt="x", steps=2, job_id="early-bird", skip_gallery=True)
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_CANCELLED


def test_ids_cancelled_before_their_job_are_remembered_within_a_bound(tmp_path: Path) -> None:
    gallery = Gallery(tmp_path)
    try:
        sched = job_queue.JobQueue(gallery)
        bound = job_queue.PRECANCELLED_REMEMBERED
        for n in range(3 * bound):
            assert not sched.cancel(f"unknown-{n}")
        assert len(sched.precancelled) == bound
        # the newest are the ones kept: a Generate following its cancel closely is still caught
        assert f"unknown-{3 * bound - 1}" in sched.precancelled
        assert "unknown-0" not in sched.precancelled
        sched.executor.shutdown(wait=False)
    finally:
        gallery.close()
