"""Unit tests of shared/: errors, config, auth, pagination, storage, and the interceptors
(in-process server).

Rerun: `.venv/bin/pytest tests/test_shared.py -v`
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from boothstudio.shared import errors
from boothstudio.shared.auth import Authenticator, extract_key
from boothstudio.shared.config import ConfigError, load_config, parse_api_keys
from boothstudio.shared.pagination import decode_token, encode_token, page_size
from boothstudio.shared.server import ServiceContext, ServiceServer, ServiceSpec
from boothstudio.shared.storage import atomic_write, atomic_write_bytes
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, trainer_pb2, trainer_pb2_grpc

# ----------------------------------------------------------------------------- errors


class FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.Status) -> None:
        self._s = status

    def code(self) -> grpc.StatusCode:
        return self._s.code

    def details(self) -> str:
        return self._s.details

    def trailing_metadata(self) -> Any:
        return self._s.trailing_metadata


def test_error_round_trip_with_details() -> None:
    exc = errors.InvalidArgument(
        violations=[("steps", "must be 1..150"), ("width", "must be a multiple of 8")],
        reason="BAD_SIZE",
        metadata={"max_steps": 150},
    )
    status = exc.to_grpc_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    decoded = errors.decode_rpc_error(FakeRpcError(status))
    assert decoded.fields == ["steps", "width"]
    assert decoded.reason == "BAD_SIZE" and decoded.domain == "boothstudio"
    assert decoded.metadata == {"max_steps": "150"}
    back = errors.exception_from_rpc_error(FakeRpcError(status))
    assert isinstance(back, errors.InvalidArgument)
    assert back.violations[0].description == "must be 1..150"
    assert back.rpc_error is not None


def test_resource_exhausted_retry_info_and_not_found_field() -> None:
    exc = errors.ResourceExhausted("queue full", reason="QUEUE_FULL", retry_after=1.5)
    d = errors.decode_rpc_error(FakeRpcError(exc.to_grpc_status()))
    assert (d.code, d.reason, d.retry_after) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUEUE_FULL",
        1.5,
    )
    nf = errors.NotFound(resource_type="model", resource_name="x", field="model_id")
    d = errors.decode_rpc_error(FakeRpcError(nf.to_grpc_status()))
    assert d.fields == ["model_id"] and d.metadata["resource_type"] == "model"
    assert "model 'x' not found" in d.message


def test_unknown_exception_maps_to_generic_internal() -> None:
    mapped = errors.from_exception(ValueError("secret path /etc/x"))
    assert isinstance(mapped, errors.Internal)
    assert "secret" not in mapped.message
    assert isinstance(errors.from_exception(NotImplementedError()), errors.Unimplemented)


def test_decode_plain_rpc_error_without_details() -> None:
    d = errors.decode_rpc_error(_plain(grpc.StatusCode.UNAVAILABLE, "down"))
    assert d.code == grpc.StatusCode.UNAVAILABLE and d.message == "down" and d.reason == ""
    assert isinstance(
        errors.exception_from_rpc_error(_plain(grpc.StatusCode.UNAVAILABLE, "down")),
        errors.Unavailable,
    )


def _plain(code: grpc.StatusCode, msg: str) -> FakeRpcError:
    class S:
        pass

    s: Any = S()
    s.code, s.details, s.trailing_metadata = code, msg, ()
    return FakeRpcError(s)


# ----------------------------------------------------------------------------- config


def test_config_precedence(tmp_path: Path) -> None:
    cfg_file = tmp_path / "bs.yaml"
    cfg_file.write_text(
        "host: 0.0.0.0\n"
        "data_dir: /srv/bs\n"
        "auth:\n  keys:\n    - {key: k1, roles: [read]}\n"
        "generator:\n  port: 6000\n  queue_size: 8\n  batching: true\n"
    )
    env = {"BOOTHSTUDIO_GENERATOR_METRICS_PORT": "7000", "BOOTHSTUDIO_LOG_LEVEL": "DEBUG"}
    cfg = load_config("generator", ["--config", str(cfg_file), "--set", "queue_size=4"], env)
    assert cfg.host == "0.0.0.0" and cfg.port == 6000 and cfg.metrics_port == 7000
    assert cfg.data_dir == Path("/srv/bs") and cfg.log_level == "DEBUG"
    assert cfg.api_keys == {"k1": frozenset({"read"})}
    # the service's own section, --set winning over the file (typed by tests/test_settings.py)
    assert cfg.options == {"queue_size": "4", "batching": True}
    # flags beat env and file
    cfg = load_config("generator", ["--config", str(cfg_file), "--port", "6001"], env)
    assert cfg.port == 6001
    # defaults
    cfg = load_config("trainer", [], {})
    assert (cfg.port, cfg.metrics_port, cfg.api_keys) == (50053, 9103, {})
    assert cfg.address_of("catalog") == "127.0.0.1:50051"


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        parse_api_keys("k=superuser")
    with pytest.raises(ConfigError):
        parse_api_keys("k=")
    assert parse_api_keys("a=read,generate; b=admin") == {
        "a": frozenset({"read", "generate"}),
        "b": frozenset({"admin"}),
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError):
        load_config("catalog", ["--config", str(bad)], {})
    with pytest.raises(ConfigError):
        load_config("catalog", [], {"BOOTHSTUDIO_TLS_CERT": "x.pem"})


# ----------------------------------------------------------------------------- auth


def test_auth_roles() -> None:
    auth = Authenticator({"r": frozenset({"read"}), "t": frozenset({"train"})})
    md = [("x-api-key", "t")]
    assert auth.authorize("/boothstudio.v1.TrainerService/CreateTrainingJob", md)
    assert auth.authorize("/boothstudio.v1.CatalogService/ListModels", md)  # train implies read
    with pytest.raises(errors.PermissionDenied):
        auth.authorize("/boothstudio.v1.GeneratorService/Generate", md)
    with pytest.raises(errors.PermissionDenied):  # unknown methods need admin
        auth.authorize("/boothstudio.v1.CatalogService/Secret", [("x-api-key", "r")])
    assert auth.authorize("/grpc.health.v1.Health/Check", []) is None
    assert extract_key([("authorization", "Bearer abc")]) == "abc"
    assert extract_key([("authorization", "Basic abc")]) is None
    off = Authenticator({})
    p = off.authorize("/boothstudio.v1.CatalogService/DeleteModel", [])
    assert p is not None and p.has("admin")


# ----------------------------------------------------------------------------- pagination


def test_pagination() -> None:
    assert page_size(0) == 50 and page_size(7) == 7 and page_size(1000) == 1000
    with pytest.raises(errors.InvalidArgument) as info:
        page_size(1001)
    assert info.value.fields == ["page_size"]
    tok = encode_token(100, "kind=1")
    assert decode_token(tok, "kind=1") == 100
    assert decode_token("", "kind=1") is None
    with pytest.raises(errors.InvalidArgument):
        decode_token(tok, "kind=2")
    with pytest.raises(errors.InvalidArgument) as info:
        decode_token("!!!not a token", "")
    assert info.value.fields == ["page_token"]


# ----------------------------------------------------------------------------- storage

def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"one"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]  # no temp files left


# ----------------------------------------------------------------------------- interceptors


class BrokenCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    async def ListModels(self, request: Any, context: Any) -> Any:
        raise KeyError("internal detail that must not leak")

    async def GetModel(self, request: Any, context: Any) -> Any:
        raise errors.NotFound(
            resource_type="model", resource_name=request.model_id, field="model_id"
        )


class StreamingTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    async def WatchTrainingJob(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield trainer_pb2.WatchTrainingJobResponse(job_id=request.job_id, sequence=1)
        raise errors.FailedPrecondition("job vanished", reason="JOB_GONE")

    async def UploadImages(self, request_iterator: Any, context: Any) -> Any:
        n = 0
        async for msg in request_iterator:
            n += len(msg.chunk.data)
        return trainer_pb2.UploadImagesResponse(dataset_id="ds", total_bytes=n)


def _build(ctx: ServiceContext) -> list[ServiceSpec]:
    return [
        ServiceSpec.for_servicer(
            catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
            BrokenCatalog(),
            catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
        ),
        ServiceSpec.for_servicer(
            trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
            StreamingTrainer(),
            trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
        ),
    ]


async def test_interceptors_in_process(tmp_path: Path) -> None:
    cfg = load_config(
        "catalog", ["--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path)], {}
    )
    srv = ServiceServer(cfg, _build)
    await srv.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            cat = catalog_pb2_grpc.CatalogServiceStub(ch)
            with pytest.raises(aio.AioRpcError) as info:
                await cat.ListModels(catalog_pb2.ListModelsRequest())
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "internal detail" not in (info.value.details() or "")
            with pytest.raises(aio.AioRpcError) as info:
                await cat.GetModel(catalog_pb2.GetModelRequest(model_id="m1"))
            d = errors.decode_rpc_error(info.value)
            assert d.code == grpc.StatusCode.NOT_FOUND and d.fields == ["model_id"]
            with pytest.raises(aio.AioRpcError) as info:
                await cat.ImportModel(catalog_pb2.ImportModelRequest())
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

            tr = trainer_pb2_grpc.TrainerServiceStub(ch)
            got = []
            with pytest.raises(aio.AioRpcError) as info:
                async for ev in tr.WatchTrainingJob(
                    trainer_pb2.WatchTrainingJobRequest(job_id="j")
                ):
                    got.append(ev.job_id)
            assert got == ["j"]
            assert errors.decode_rpc_error(info.value).reason == "JOB_GONE"

            async def chunks() -> AsyncIterator[Any]:
                for i in range(3):
                    yield trainer_pb2.UploadImagesRequest(
                        chunk=trainer_pb2.ImageChunk(filename="a.png", data=b"x" * (i + 1))
                    )

            resp = await tr.UploadImages(chunks())
            assert resp.total_bytes == 6
    finally:
        await srv.stop(0)


async def test_service_to_service_channel_carries_key(tmp_path: Path) -> None:
    env = {"BOOTHSTUDIO_API_KEYS": "svc-key=train", "BOOTHSTUDIO_SERVICE_API_KEY": "svc-key"}
    args = ["--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path)]
    srv = ServiceServer(load_config("trainer", args, env), _build)
    await srv.start()
    assert srv.ctx is not None
    srv.config.addresses["trainer"] = f"127.0.0.1:{srv.port}"

    async def chunks() -> AsyncIterator[Any]:
        yield trainer_pb2.UploadImagesRequest(
            chunk=trainer_pb2.ImageChunk(filename="a.png", data=b"abc")
        )

    try:
        async with srv.ctx.channel_to("trainer") as ch:
            tr = trainer_pb2_grpc.TrainerServiceStub(ch)
            assert (await tr.UploadImages(chunks())).total_bytes == 3  # stream-unary
            with pytest.raises(aio.AioRpcError) as info:  # unary-stream
                async for _ in tr.WatchTrainingJob(trainer_pb2.WatchTrainingJobRequest()):
                    pass
            assert errors.decode_rpc_error(info.value).reason == "JOB_GONE"
        async with aio.insecure_channel(f"127.0.0.1:{srv.port}") as bare:
            with pytest.raises(aio.AioRpcError) as info:
                await trainer_pb2_grpc.TrainerServiceStub(bare).UploadImages(chunks())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await srv.stop(0)


async def test_tls(tmp_path: Path) -> None:
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed; cannot make a test certificate")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    env = {"BOOTHSTUDIO_TLS_CERT": str(cert), "BOOTHSTUDIO_TLS_KEY": str(key),
           "BOOTHSTUDIO_TLS_ROOT_CA": str(cert)}  # fmt: skip
    args = ["--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path)]
    srv = ServiceServer(load_config("trainer", args, env), _build)
    await srv.start()
    assert srv.ctx is not None
    srv.config.addresses["trainer"] = f"localhost:{srv.port}"

    async def chunks() -> AsyncIterator[Any]:
        yield trainer_pb2.UploadImagesRequest(chunk=trainer_pb2.ImageChunk(data=b"abcd"))

    try:
        async with srv.ctx.channel_to("trainer") as ch:
            resp = await trainer_pb2_grpc.TrainerServiceStub(ch).UploadImages(chunks())
            assert resp.total_bytes == 4
        async with aio.insecure_channel(f"localhost:{srv.port}") as plain:
            with pytest.raises(aio.AioRpcError) as info:
                await trainer_pb2_grpc.TrainerServiceStub(plain).UploadImages(chunks(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await srv.stop(0)


# ----------------------------------------------------------------------------- hardening


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height over a few bytes of data: what an attacker
    sends, since a real 12000x12000 PNG of one colour is still ~500 KB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_images_refused_on_the_header_before_decoding() -> None:
    import io

    from PIL import Image

    from boothstudio.shared import images

    limits = images.ImageLimits(max_bytes=1 << 20, max_side=2048, max_pixels=1024 * 1024)
    with pytest.raises(images.ImageRejected, match="12000x12000"):
        images.probe(png_bomb(12000, 12000), limits)
    with pytest.raises(images.ImageRejected, match="pixels in all"):
        images.probe(png_bomb(2048, 2048), limits)  # each side fits, the area does not
    with pytest.raises(images.ImageRejected, match="limit"):
        images.probe(b"\0" * (2 << 20), limits)
    with pytest.raises(images.ImageRejected, match="PNG"):
        images.probe(b"GIF89a" + b"\0" * 64, limits)
    # A header that promises more than the data holds is refused when decoded, not a crash.
    with pytest.raises(images.ImageRejected, match="truncated or corrupt"):
        images.decode(png_bomb(64, 64), limits)
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), "red").save(buf, format="PNG")
    info = images.probe(buf.getvalue(), limits)
    assert (info.width, info.height, info.format) == (96, 64, "PNG")
    assert images.decode(buf.getvalue(), limits).getpixel((5, 5)) == (255, 0, 0)


def test_decode_offset_refuses_every_forged_position() -> None:
    from boothstudio.shared.pagination import MAX_OFFSET, decode_offset

    assert decode_offset("", "s") == 0
    assert decode_offset(encode_token(7, "s"), "s") == 7
    for position in (MAX_OFFSET + 1, -1, 2.0, "3", None, [1], {"a": 1}, True):
        with pytest.raises(errors.InvalidArgument) as info:
            decode_offset(encode_token(position, "s"), "s")
        assert info.value.fields == ["page_token"]


def test_errors_fit_a_trailer_whatever_they_echo() -> None:
    """A client's default metadata limit is 8 KiB; errors must stay well inside it."""
    huge = "\u00e9" * 100_000
    err = errors.NotFound(resource_type="image", resource_name=huge, field="image_id")
    assert len(err.message.encode()) <= errors.MAX_MESSAGE_BYTES
    many = errors.InvalidArgument(violations=[(huge, huge)] * 500, metadata={huge: huge})
    size = len(many.to_rpc_status().SerializeToString())
    assert size <= errors.MAX_DETAILS_BYTES + errors.MAX_MESSAGE_BYTES + 64
    assert many.to_rpc_status().details  # the first violation is always there


def test_request_checks_walk_nested_maps_and_lists() -> None:
    import math

    from boothstudio.shared.request_checks import message_problems
    from boothstudio.v1 import common_pb2, generator_pb2

    request = generator_pb2.GenerateRequest(
        prompt="ok\nwith a newline\tand a tab",
        negative_prompt="bell\x07",
        cfg_scale=math.inf,
        sampler_options={"eta": common_pb2.OptionValue(float_value=math.nan),
                         "ok": common_pb2.OptionValue(float_value=0.5)},
    )
    fields = sorted(v.field for v in message_problems(request))
    assert fields == ["cfg_scale", "negative_prompt", "sampler_options.eta"]
    config = trainer_pb2.DreamBoothConfig(validation_prompts=["fine", "nul\x00"])
    config.prior_preservation.loss_weight = -math.inf
    fields = sorted(v.field for v in message_problems(config, "config."))
    assert fields == ["config.prior_preservation.loss_weight", "config.validation_prompts[1]"]


def test_atomic_writes_are_readable_like_any_file(tmp_path: Path) -> None:
    import os
    import stat

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "atomic.bin", b"x")
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic.bin").st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode)
    assert mode & stat.S_IROTH  # 0644 under the usual umask, not mkstemp's 0600


def test_path_and_file_name_problems() -> None:
    from boothstudio.shared.paths import file_name_problem, path_problem

    assert path_problem("/models/sd15") is None
    assert path_problem("/m/" + "x" * 256)
    assert path_problem("/m/" + "ab/" * 1500)
    assert path_problem("/m/\x00")
    assert file_name_problem("dog-1.png") is None
    for bad in ("", "a/b.png", "..", ".hidden", "x" * 256, "tab\there", "back\\slash"):
        assert file_name_problem(bad), bad


async def test_a_refused_request_is_freed_at_once_not_at_the_next_full_gc(tmp_path: Path) -> None:
    """An error raised while handling another kept the request alive in reference cycles
    (exception -> traceback -> frames -> request) until a rare full collection: a stream of
    refused multi-megabyte requests grew a service by hundreds of MB. With the collector off,
    nothing of a refused call may be left in a cycle."""
    import gc

    cfg = load_config(
        "catalog", ["--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path)], {}
    )
    srv = ServiceServer(cfg, _build)
    await srv.start()
    gc.collect()
    gc.disable()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            cat = catalog_pb2_grpc.CatalogServiceStub(ch)
            tr = trainer_pb2_grpc.TrainerServiceStub(ch)

            async def watch() -> None:
                async for _ in tr.WatchTrainingJob(trainer_pb2.WatchTrainingJobRequest(job_id="j")):
                    pass

            for _ in range(3):
                for call in (
                    cat.GetModel(catalog_pb2.GetModelRequest(model_id="m" * 100_000)),
                    cat.ListModels(catalog_pb2.ListModelsRequest(backend_id="x" * 100_000)),
                    watch(),
                ):
                    with pytest.raises(aio.AioRpcError):
                        await call
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kept = [o for o in gc.garbage if isinstance(o, catalog_pb2.GetModelRequest
                                                     | catalog_pb2.ListModelsRequest)]
        assert kept == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        await srv.stop(0)


def test_request_checks_stop_at_the_violation_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A million NaNs in a repeated field once built a million violations in the request
    path: the walk must stop once it has MAX_VIOLATIONS, not look at every item."""
    from boothstudio.shared import request_checks
    from boothstudio.shared.errors import MAX_VIOLATIONS

    looked_at = 0
    real = request_checks._value_problem

    def counting(fd: Any, value: Any) -> str | None:
        nonlocal looked_at
        looked_at += 1
        return real(fd, value)

    monkeypatch.setattr(request_checks, "_value_problem", counting)
    config = trainer_pb2.DreamBoothConfig()
    config.validation_prompts.extend(["\x00"] * 200_000)
    problems = request_checks.message_problems(config)
    assert len(problems) == MAX_VIOLATIONS
    assert problems[0].field == "validation_prompts[0]"
    assert looked_at == MAX_VIOLATIONS


def test_atomic_create_never_replaces(tmp_path: Path) -> None:
    from boothstudio.shared.storage import atomic_create_bytes

    atomic_create_bytes(tmp_path / "a.png", b"first")
    with pytest.raises(FileExistsError):
        atomic_create_bytes(tmp_path / "a.png", b"second")
    assert (tmp_path / "a.png").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no staged file left behind
