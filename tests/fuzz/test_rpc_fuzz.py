"""Fuzz every RPC of the three real services with generated and hand-picked hostile requests.

For every call, whatever the request:
- the status is never INTERNAL or UNKNOWN (nor UNIMPLEMENTED, DATA_LOSS, UNAVAILABLE, or a
  DEADLINE_EXCEEDED at our generous deadline, which means a hang), and every error carries
  the service's ErrorInfo (one without it came from the gRPC library, not the service);
- an INVALID_ARGUMENT carries BadRequest field violations naming fields of the request (the
  undecodable-bytes case, reason MALFORMED_REQUEST, has no field to name);
- afterwards every service is alive and SERVING;
- a refused request (any error status) leaves the data dir's files and SQLite row counts as
  they were.
At the end of the module nothing was written outside the data dir.

Problems are collected per test and reported together (grouped by kind, the shortest request
of each kind shown), so one run shows every distinct failure instead of the first one.

Bounded for CI: BOOTHSTUDIO_FUZZ_EXAMPLES sets the hypothesis examples per RPC (default 50);
`make fuzz` runs 20x as many. Hypothesis runs derandomized and without a database (no flakes,
no .hypothesis folder).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import catalog_pb2, generator_pb2, trainer_pb2
from tests.fuzz import hostile
from tests.fuzz.conftest import Stack, examples
from tests.fuzz.strategies import assign, requests_for, st_message
from tests.helpers import ROOT

pytestmark = pytest.mark.fuzz

SERVICES = [
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
    generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"],
    trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
]
METHODS = [m for s in SERVICES for m in s.methods]
C = grpc.StatusCode
# Never acceptable, whatever the request. UNAVAILABLE: the service is gone (no remote backend is
# configured, so nothing else is unavailable); DEADLINE_EXCEEDED at CALL_TIMEOUT: a hang.
FORBIDDEN = {C.INTERNAL, C.UNKNOWN, C.UNIMPLEMENTED, C.DATA_LOSS, C.UNAVAILABLE,
             C.DEADLINE_EXCEEDED}
CALL_TIMEOUT = 60.0
MALFORMED = "MALFORMED_REQUEST"


def _short(m: MethodDescriptor) -> str:
    return f"{m.containing_service.name}.{m.name}"


# --------------------------------------------------------------------------- per-RPC handling


def cheap_generate(r: Any) -> Any:
    """A GenerateRequest the service would accept is made cheap (2 steps, 64 px, <= 2 images);
    out-of-range values are kept as drawn, so refusals are fuzzed unchanged."""
    r2 = generator_pb2.GenerateRequest()
    r2.CopyFrom(r)
    if not r2.HasField("steps") or 1 <= r2.steps <= 150:
        r2.steps = min(r2.steps, 2) if r2.HasField("steps") else 2
    for side in ("width", "height"):
        v = getattr(r2, side)
        if not r2.HasField(side) or (v % 8 == 0 and 64 <= v <= 2048):
            setattr(r2, side, 64)
    if r2.HasField("count") and 1 <= r2.count <= 16:
        r2.count = min(r2.count, 2)
    return r2


def validate_only(r: Any) -> Any:
    """CreateTrainingJob is fuzzed as validate_only: an accepted real create starts training.
    A refused one is sent again for real (see check_call): both must refuse alike."""
    r2 = trainer_pb2.CreateTrainingJobRequest()
    r2.CopyFrom(r)
    r2.validate_only = True
    return r2


@dataclass(frozen=True)
class Case:
    """How the fuzzer calls one RPC: a request rewrite and, for server streams, how many
    events to read before cancelling (a Watch on an active job never ends by itself)."""

    prepare: Callable[[Any], Any] = lambda r: r
    max_events: int = 500
    # a stream that may legitimately stay open (a watch): this long, then it counts as alive
    stream_seconds: float | None = None
    real_twin: bool = False  # CreateTrainingJob: repeat a refused validate_only call for real


# One entry per RPC, by hand: a new RPC fails test_every_rpc_is_fuzzed until it is added here.
CASES: dict[str, Case] = {
    "CatalogService.ListModels": Case(),
    "CatalogService.GetModel": Case(),
    "CatalogService.ImportModel": Case(),
    "CatalogService.DeleteModel": Case(),
    "CatalogService.GetModelPreview": Case(),
    "CatalogService.ListSamplers": Case(),
    "CatalogService.ListBackends": Case(),
    "GeneratorService.Generate": Case(prepare=cheap_generate),
    "GeneratorService.CancelGeneration": Case(),
    "GeneratorService.ListImages": Case(),
    "GeneratorService.GetImage": Case(),
    "GeneratorService.DeleteImages": Case(),
    "TrainerService.CreateTrainingJob": Case(prepare=validate_only, real_twin=True),
    "TrainerService.UploadImages": Case(),
    "TrainerService.GetTrainingJob": Case(),
    "TrainerService.ListTrainingJobs": Case(),
    "TrainerService.WatchTrainingJob": Case(max_events=5, stream_seconds=5.0),
    "TrainerService.CancelTrainingJob": Case(),
    "TrainerService.ResumeTrainingJob": Case(),
    "TrainerService.DeleteTrainingJob": Case(),
}


# --------------------------------------------------------------------------- calling


@dataclass
class Outcome:
    code: grpc.StatusCode
    reason: str = ""
    message: str = ""
    fields: list[str] = field(default_factory=list)
    events: int = 0
    response: Any = None


def _serialize(x: Any) -> bytes:
    return x if isinstance(x, bytes) else x.SerializeToString()


def call(stack: Stack, method: MethodDescriptor, request: Any, max_events: int = 500,
         timeout: float = CALL_TIMEOUT, stream_seconds: float | None = None) -> Outcome:
    """Call `method` generically with a message (a list of them for a client stream) or raw
    request bytes; read a server stream until its end or `max_events`, then cancel."""
    svc = stack.by_service(method.containing_service.full_name)
    channel = _channel(svc)
    path = f"/{method.containing_service.full_name}/{method.name}"
    out_cls = GetMessageClass(method.output_type)
    kind = (method.client_streaming, method.server_streaming)
    n = 0  # server-stream events read
    try:
        if kind == (False, False):
            resp = channel.unary_unary(path, _serialize, out_cls.FromString)(
                request, timeout=timeout)
            return Outcome(C.OK, response=resp)
        if kind == (True, False):
            items = request if isinstance(request, list) else [request]
            resp = channel.stream_unary(path, _serialize, out_cls.FromString)(
                iter(items), timeout=timeout)
            return Outcome(C.OK, response=resp)
        stream = channel.unary_stream(path, _serialize, out_cls.FromString)(
            request, timeout=stream_seconds or timeout)
        last = None
        for last in stream:
            n += 1
            if n >= max_events:
                stream.cancel()
                return Outcome(C.OK, events=n, response=last)
        return Outcome(C.OK, events=n, response=last)
    except grpc.RpcError as err:
        d = decode_rpc_error(err)
        if d.code == C.DEADLINE_EXCEEDED and stream_seconds and n > 0:
            return Outcome(C.OK, events=n, message="still streaming when the fuzzer left")
        if d.code == C.CANCELLED and "Locally cancelled" in (d.message or ""):
            return Outcome(C.OK, message="cancelled by the fuzzer")
        return Outcome(d.code, d.reason, d.message, d.fields)


_CHANNELS: dict[str, grpc.Channel] = {}


def _channel(svc: Any) -> grpc.Channel:
    if svc.address not in _CHANNELS:
        _CHANNELS[svc.address] = svc.channel()
    return _CHANNELS[svc.address]


# --------------------------------------------------------------------------- judging


def _segments(path: str) -> list[str]:
    """"config.instance_images[2].data" -> ["config", "instance_images", "data"]."""
    return [s for s in re.split(r"\[[^\]]*\]|\.", path) if s]


def _names(desc: Descriptor) -> set[str]:
    return {f.name for f in desc.fields} | {o.name for o in desc.oneofs}


def names_a_field(desc: Descriptor, path: str) -> bool:
    """Whether `path` starts with a field (or oneof) of `desc` and follows real fields down."""
    segs = _segments(path)
    if not segs:
        return False
    d: Descriptor | None = desc
    for s in segs:
        if d is None:
            return True  # below a map key or scalar: free text is fine
        if s not in _names(d):
            return False
        fd = d.fields_by_name.get(s)
        if fd is not None and fd.message_type is not None and fd.message_type.GetOptions(
        ).map_entry:
            return True  # what follows is a map key ("sampler_options.eta" or "[eta]")
        d = fd.message_type if fd is not None else None
    return True


def _entry(path: str) -> str | None:
    """"loras[0].weight" -> "loras[0]": the entry of a repeated message a path lies in."""
    found = re.match(r"^(.*?\[\d+\])", path)
    return found.group(1) if found else None


def related(a: str, b: str) -> bool:
    """Whether a refusal naming `b` is about the hostile field `a`: one lies on the other's
    path, or both lie in one entry of a repeated message (an entry made to carry the hostile
    value may rightly be refused for a sibling it lacks, e.g. loras[0].model_id)."""
    sa, sb = _segments(a), _segments(b)
    n = min(len(sa), len(sb))
    return sa[:n] == sb[:n] or (_entry(a) is not None and _entry(a) == _entry(b))


def describe(request: Any, limit: int = 400) -> str:
    if isinstance(request, bytes):
        return f"raw bytes {request[:60]!r}{'...' if len(request) > 60 else ''} ({len(request)} B)"
    if isinstance(request, list):
        return "[" + ", ".join(describe(r, limit // max(1, len(request))) for r in request) + "]"
    text = _short_repr(request)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_repr(msg: Message) -> str:
    parts = []
    for fd, value in msg.ListFields():
        if fd.message_type is not None and not fd.is_repeated:
            parts.append(f"{fd.name}={{{_short_repr(value)}}}")
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            shown = {k: (_short_repr(v) if isinstance(v, Message) else v) for k, v in value.items()}
            parts.append(f"{fd.name}={_clip(repr(shown))}")
        elif fd.is_repeated:
            items = [(_short_repr(v) if isinstance(v, Message) else _clip(repr(v))) for v in value]
            shown = items[:3] + ([f"...x{len(items)}"] if len(items) > 3 else [])
            parts.append(f"{fd.name}=[{', '.join(shown)}]")
        else:
            parts.append(f"{fd.name}={_clip(repr(value))}")
    return " ".join(parts)


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else f"{text[:n]}...({len(text)} chars)"


@dataclass
class Findings:
    """Distinct problems found, each with the shortest request that showed it."""

    items: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    codes: Counter[str] = field(default_factory=Counter)  # printed: what the fuzzing reached

    def add(self, key: str, request_text: str) -> None:
        key = re.sub(r"_[0-9a-f]{12}_[0-9a-f]{8}", "_<id>", key)  # one entry per kind
        key = re.sub(r"\((\d+), (\d+)\)", "(n, n+k)", key)
        old = self.items.get(key)
        if old is None or len(request_text) < len(old):
            self.items[key] = request_text

    def check(self) -> None:
        print(f"{self.calls} calls: {dict(self.codes.most_common())}")
        if self.items:
            lines = [f"- {k}\n    request: {v}" for k, v in sorted(self.items.items())]
            pytest.fail(f"{len(self.items)} distinct problem(s) in {self.calls} calls:\n"
                        + "\n".join(lines), pytrace=False)


def judge(method: MethodDescriptor, out: Outcome, expect_field: str | None = None,
          raw: bool = False) -> list[str]:
    """What is wrong with one outcome (empty: nothing)."""
    name = _short(method)
    got = f"{out.code.name}" + (f" {out.reason}" if out.reason else "")
    problems = []
    if out.code in FORBIDDEN:
        problems.append(f"{name}: got {got} ({_clip(out.message, 120)})")
    elif out.code != C.OK and not out.reason:
        # every BoothStudio error carries ErrorInfo; one without came from the gRPC library
        # (e.g. RESOURCE_EXHAUSTED for error details too big for the client's trailer limit)
        problems.append(f"{name}: {got} without ErrorInfo ({_clip(out.message, 120)})")
    if raw:
        if out.code != C.INVALID_ARGUMENT or out.reason != MALFORMED:
            problems.append(f"{name}: undecodable bytes got {got}, expected INVALID_ARGUMENT "
                            f"{MALFORMED}")
        return problems
    if out.code == C.INVALID_ARGUMENT:
        target = method.input_type
        if not out.fields:
            problems.append(f"{name}: INVALID_ARGUMENT {out.reason} names no field "
                            f"({_clip(out.message, 120)})")
        bad = [f for f in out.fields if not names_a_field(target, f)]
        if bad:
            problems.append(f"{name}: INVALID_ARGUMENT names {bad}, not fields of "
                            f"{target.name}")
        if expect_field and out.fields and not any(related(expect_field, f) for f in out.fields):
            problems.append(f"{name}: hostile {_segments(expect_field)} refused on other "
                            f"fields {sorted(set(out.fields))}")
    return problems


def _diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    added = sorted(set(after["files"]) - set(before["files"]))
    removed = sorted(set(before["files"]) - set(after["files"]))
    rows = {k: (before["rows"].get(k), v) for k, v in after["rows"].items()
            if before["rows"].get(k) != v}
    parts = []
    if added:
        parts.append(f"new files {added[:4]}")
    if removed:
        parts.append(f"removed {removed[:4]}")
    if rows:
        parts.append(f"rows (before, after) {rows}")
    return "; ".join(parts)


def check_call(stack: Stack, method: MethodDescriptor, request: Any, findings: Findings,
               *, case: Case | None = None, expect_field: str | None = None,
               raw: bool = False, settled: bool = True) -> Outcome:
    """One call and every assertion around it; problems go to `findings`. settled=False: work
    is going on (a training worker), so the data dir is not compared around a refusal."""
    case = case or CASES[_short(method)]
    request = request if raw else case.prepare(request)
    text = describe(request)
    before = stack.snapshot()
    out = call(stack, method, request, case.max_events, stream_seconds=case.stream_seconds)
    findings.calls += 1
    findings.codes[out.code.name] += 1
    for p in judge(method, out, expect_field, raw):
        findings.add(p, text)
    if out.code != C.OK and settled:
        after = stack.snapshot()
        if after != before:
            findings.add(f"{_short(method)}: refused ({out.code.name} {out.reason}) but left "
                         f"{_diff(before, after)}", text)
    if case.real_twin and out.code != C.OK and not raw:
        real = trainer_pb2.CreateTrainingJobRequest()
        real.CopyFrom(request)
        real.validate_only = False
        twin = check_call(stack, method, real, findings, case=Case(), expect_field=expect_field)
        if twin.code == C.OK:
            cleanup_job(stack, twin.response.job.job_id)
            findings.add(f"{_short(method)}: validate_only refused ({out.code.name}) but the "
                         "real create was accepted", text)
        elif twin.code != out.code:
            findings.add(f"{_short(method)}: validate_only got {out.code.name}, the real create "
                         f"{twin.code.name}", text)
    sick = stack.unhealthy()
    if sick:
        findings.add(f"{_short(method)}: afterwards {'; '.join(sick)}", text)
        findings.check()  # no point going on against a dead service
    return out


def cleanup_job(stack: Stack, job_id: str) -> None:
    method = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].methods_by_name[
        "DeleteTrainingJob"]
    call(stack, method, trainer_pb2.DeleteTrainingJobRequest(job_id=job_id, force=True))


def hypothesis_settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # shrinking re-runs real RPCs: too slow
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


# --------------------------------------------------------------------------- tests


def test_every_rpc_is_fuzzed() -> None:
    """The table of cases covers exactly the RPCs the three services declare."""
    declared = {_short(m) for m in METHODS}
    assert set(CASES) == declared, (
        f"RPCs without a fuzz case: {sorted(declared - set(CASES))}; "
        f"cases for no RPC: {sorted(set(CASES) - declared)}")


# Per field kind, the hostile values swept one field at a time (page tokens get all forged ones).
_SWEEP_STRINGS = ["a\x00b", "\x1b[2J", f"../../{hostile.MARKER}", f"/tmp/{hostile.MARKER}/x",
                  "y" * 100_000, "A" * 129, "\u202egnp.exe"]
_SWEEP_IMAGES = ["bomb_12000_header", "bomb_65535_header", "bomb_12000_full", "bomb_8192_full",
                 "truncated_png", "png1x1", "random", "svg"]
F = FieldDescriptor


def _sweep_values(fd: FieldDescriptor) -> list[Any]:
    if fd.type == F.TYPE_STRING:
        return hostile.FORGED_TOKENS if fd.name == "page_token" else _SWEEP_STRINGS
    if fd.type == F.TYPE_BYTES:
        return [hostile.images()[k] for k in _SWEEP_IMAGES]
    if fd.type == F.TYPE_FLOAT:
        return [math.nan, math.inf, -math.inf, 3.4e38, -0.0]
    if fd.type == F.TYPE_DOUBLE:
        return [math.nan, math.inf, 1e308, -1e308, -0.0]
    if fd.type == F.TYPE_ENUM:
        return [99, -1]
    if fd.type in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return [2**31 - 1, -(2**31), -1]
    if fd.type in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return [2**63 - 1, -(2**63), -1]
    if fd.type in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return [2**32 - 1]
    if fd.type in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return [2**64 - 1]
    return []  # bool: both values are legitimate


Mutation = tuple[str, Callable[[Message], None]]


def mutations(desc: Descriptor, depth: int = 0) -> Iterator[Mutation]:
    """(field path, setter) for every hostile value of every field, nested messages included."""
    for fd in desc.fields:
        name = fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            for key in _SWEEP_STRINGS:
                yield name, (lambda m, n=name, k=key: getattr(m, n)[k])  # default value
            if vfd.message_type is not None:
                for _sub, fn in mutations(vfd.message_type, depth + 1):
                    # the key is the field as far as a violation can tell
                    yield name, (lambda m, n=name, f=fn: f(getattr(m, n)["eta"]))
            continue
        if fd.message_type is not None:
            if depth >= 3:
                continue
            for sub, fn in mutations(fd.message_type, depth + 1):
                if fd.is_repeated:
                    yield f"{name}[0].{sub}", (lambda m, n=name, f=fn: f(_first(getattr(m, n))))
                else:
                    yield f"{name}.{sub}", (lambda m, n=name, f=fn: f(getattr(m, n)))
            continue
        for value in _sweep_values(fd):
            if fd.is_repeated:
                yield name, (lambda m, n=name, v=value: getattr(m, n).append(v))
            else:
                yield name, (lambda m, n=name, v=value: setattr(m, n, v))


def _first(container: Any) -> Message:
    return container[0] if len(container) else container.add()


def _trainer_base() -> trainer_pb2.CreateTrainingJobRequest:
    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id=hostile.KNOWN_MODEL, class_noun="dog", max_train_steps=2, resolution=64,
        seed=1)
    for i in range(3):
        cfg.instance_images.add(data=hostile.images()["png64"], filename=f"s{i}.png")
    return trainer_pb2.CreateTrainingJobRequest(config=cfg, validate_only=True)


# A request each RPC would take as it is (or refuse only for a missing id), so that the one
# hostile field is what the service judges.
BASES: dict[str, Callable[[], Any]] = {
    "CatalogService.GetModel": lambda: catalog_pb2.GetModelRequest(model_id=hostile.KNOWN_MODEL),
    # the embedded model's folder: importable (registered again under a derived id)
    "CatalogService.ImportModel": lambda: catalog_pb2.ImportModelRequest(
        diffusers_path=str(ROOT / "services" / "diffusion" / "embedded_model")),
    "CatalogService.DeleteModel": lambda: catalog_pb2.DeleteModelRequest(model_id="fz-none"),
    "CatalogService.GetModelPreview": lambda: catalog_pb2.GetModelPreviewRequest(
        model_id=hostile.KNOWN_MODEL),
    "GeneratorService.Generate": lambda: generator_pb2.GenerateRequest(
        prompt="a red square", steps=2, width=64, height=64, seed=1),
    "GeneratorService.DeleteImages": lambda: generator_pb2.DeleteImagesRequest(
        image_ids=["img-none"]),
    "TrainerService.CreateTrainingJob": _trainer_base,
}


def _upload_base() -> trainer_pb2.UploadImagesRequest:
    return trainer_pb2.UploadImagesRequest(
        chunk=trainer_pb2.ImageChunk(filename="a.png", data=hostile.images()["png64"]))


def _upload_list(msg: trainer_pb2.UploadImagesRequest) -> list[Any]:
    chunk = trainer_pb2.UploadImagesRequest(
        chunk=trainer_pb2.ImageChunk(filename="ok.png", data=hostile.images()["png64"]))
    if msg.WhichOneof("payload") == "metadata":
        return [msg, chunk]
    return [trainer_pb2.UploadImagesRequest(
        metadata=trainer_pb2.UploadImagesMetadata(name="fz")), msg]


@st.composite
def near_base(draw: st.DrawFn, method: MethodDescriptor) -> Any:
    """An acceptable request (BASES) with a random subset of its fields, at any depth,
    replaced by generated values: reaches the checks behind the first refusal."""
    desc = method.input_type
    msg = BASES.get(_short(method), GetMessageClass(desc))()
    if method.client_streaming:
        msg = _upload_base()
    blend(draw, msg, draw(st_message(desc)))
    return _upload_list(msg) if method.client_streaming else msg


def blend(draw: st.DrawFn, base: Message, other: Message) -> None:
    for fd, value in other.ListFields():
        if not draw(st.booleans()):
            continue
        single_msg = fd.message_type is not None and not fd.is_repeated
        if single_msg and base.HasField(fd.name) and draw(st.booleans()):
            blend(draw, getattr(base, fd.name), value)  # go down instead of replacing
            continue
        base.ClearField(fd.name)
        assign(base, fd, dict(value) if fd.message_type is not None and fd.message_type
               .GetOptions().map_entry else value)


@pytest.mark.parametrize("method", METHODS, ids=_short)
def test_fuzz_generated_requests(stack: Stack, method: MethodDescriptor) -> None:
    """Requests generated from the descriptors (any field, any value kind) against one RPC:
    from scratch, and as an acceptable request with some fields replaced."""
    findings = Findings()

    @hypothesis_settings(examples(50))
    @given(request=st.one_of(requests_for(method), near_base(method)))
    def run(request: Any) -> None:
        check_call(stack, method, request, findings)

    run()
    findings.check()


@pytest.mark.parametrize("method", METHODS, ids=_short)
def test_hostile_value_in_each_field(stack: Stack, method: MethodDescriptor) -> None:
    """Each field in turn set to each hand-picked hostile value of its kind, on an otherwise
    acceptable request; an INVALID_ARGUMENT must name that field."""
    findings = Findings()
    cls = GetMessageClass(method.input_type)
    base = BASES.get(_short(method), cls)
    for path, mutate in mutations(method.input_type):
        msg = _upload_base() if method.client_streaming else base()
        mutate(msg)
        request = _upload_list(msg) if method.client_streaming else msg
        check_call(stack, method, request, findings, expect_field=path)
    findings.check()


# Bytes no request message parses from: a varint running past 10 bytes, a length past the end,
# a group end tag never opened, and invalid UTF-8 where field 1 is a string.
RAW = [b"\xff" * 11, b"\x0a\xff\xff\x03", b"\x0c", b"\x12\x05ab", b"\x0a\x02\xc3\x28"]


def _parses(cls: type[Message], data: bytes) -> bool:
    try:
        cls.FromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return False
    return True


@pytest.mark.parametrize("method", METHODS, ids=_short)
def test_undecodable_bytes(stack: Stack, method: MethodDescriptor) -> None:
    """Bytes that are not the method's message: INVALID_ARGUMENT MALFORMED_REQUEST."""
    cls = GetMessageClass(method.input_type)
    findings = Findings()
    for data in RAW:
        if not _parses(cls, data):
            check_call(stack, method, data, findings, raw=True)

    @hypothesis_settings(max(3, examples(50) // 5))
    @given(data=st.binary(min_size=1, max_size=64))
    def run(data: bytes) -> None:
        if _parses(cls, data):
            return  # a valid message: the generated-request tests cover those
        check_call(stack, method, data, findings, raw=True)

    run()
    findings.check()


def _trainer_method(name: str) -> MethodDescriptor:
    return trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].methods_by_name[name]


# Picture names for real jobs: path-like ones (to be refused, or kept inside the job folder) and
# odd but legal ones (accepted: a job really starts).
_REAL_NAMES = [
    [f"../../{hostile.MARKER}.png", f"/tmp/{hostile.MARKER}.png", f"..\\{hostile.MARKER}.png"],
    ["..", ".hidden", "captions.json"],
    [f"{hostile.MARKER} \u202egnp.png", "é" * 60 + ".png", "CON.png"],
]


def test_real_jobs_with_hostile_names_stay_in_data_dir(stack: Stack) -> None:
    """Real (not validate_only) training jobs whose picture names, captions, display and output
    names are hostile. Refused: nothing left. Accepted: the job folder is inside the data dir,
    the job RPCs judge hostile values on a real job, and deleting it removes its folder."""
    create = _trainer_method("CreateTrainingJob")
    findings = Findings()
    accepted = 0
    for names in _REAL_NAMES:
        req = _trainer_base()
        req.validate_only = False
        req.display_name = f"../{hostile.MARKER}"
        req.config.output_model_name = f"{hostile.MARKER}-out"
        for img, name in zip(req.config.instance_images, names, strict=True):
            img.filename = name
            img.caption = f"../{hostile.MARKER} \u202e"
        out = check_call(stack, create, req, findings, case=Case())
        if out.code != C.OK:
            continue
        accepted += 1
        job = out.response.job
        if not Path(job.job_dir).resolve().is_relative_to(stack.data_dir.resolve()):
            findings.add(f"job_dir {job.job_dir} outside {stack.data_dir}", describe(req))
        # a worker may be running now: the data dir changes by itself, so no snapshot compare
        live = {"settled": False}
        for steps in (2**31 - 1, -1, -(2**31)):
            check_call(stack, _trainer_method("ResumeTrainingJob"),
                       trainer_pb2.ResumeTrainingJobRequest(job_id=job.job_id,
                                                            max_train_steps=steps),
                       findings, **live)
        check_call(stack, _trainer_method("WatchTrainingJob"), trainer_pb2.WatchTrainingJobRequest(
            job_id=job.job_id, include_history=True, include_logs=True), findings, **live)
        check_call(stack, _trainer_method("DeleteTrainingJob"),
                   trainer_pb2.DeleteTrainingJobRequest(job_id=job.job_id), findings, **live)
        check_call(stack, _trainer_method("CancelTrainingJob"),
                   trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id), findings, **live)
        cleanup_job(stack, job.job_id)
        deadline = time.monotonic() + 30
        while Path(job.job_dir).exists():
            if time.monotonic() > deadline:
                findings.add("DeleteTrainingJob(force) left the job folder", describe(req))
                break
            time.sleep(0.2)
    escaped = stack.escaped()
    if escaped:
        findings.add(f"files outside the data dir: {escaped}", "(the real jobs above)")
    assert accepted, "no real job was accepted: the odd-but-legal names are refused"
    findings.check()


def test_nothing_written_outside_the_data_dir(stack: Stack) -> None:
    """Last: after every test above, the temp parent holds only the data dir and no file named
    after a hostile path exists anywhere the services could have resolved it to."""
    assert stack.outside() == [], f"written beside the data dir: {stack.outside()}"
    assert stack.escaped() == [], f"written outside the data dir: {stack.escaped()}"


@pytest.fixture(autouse=True, scope="module")
def _close_channels() -> Iterator[None]:
    yield
    for ch in _CHANNELS.values():
        with contextlib.suppress(Exception):
            ch.close()
    _CHANNELS.clear()
