"""Unit tests (no server): error decoding into exception classes, retry/backoff decisions,
client configuration from arguments and environment, and the torch-free import.

Rerun: `.venv/bin/pytest tests/sdk/test_errors_config.py -q`
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import grpc
import pytest

from boothstudio.clients.sdk import errors
from boothstudio.clients.sdk._base import fanout_result
from boothstudio.clients.sdk.config import ClientConfig, RetryPolicy, RetryState
from boothstudio.shared import errors as shared_errors
from tests.helpers import ROOT


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "", trailing: Any = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing


def from_server(exc: shared_errors.BoothStudioError) -> FakeRpcError:
    status = exc.to_grpc_status()
    return FakeRpcError(status.code, status.details, status.trailing_metadata)


def test_server_error_becomes_class_with_fields_and_reason() -> None:
    err = from_server(
        shared_errors.InvalidArgument(
            violations=[("steps", "must be 1..150"), ("width", "multiple of 8")],
            reason="BAD_SIZE",
        )
    )
    exc = errors.from_rpc_error(err, service="generator", address="h:1")
    assert isinstance(exc, errors.InvalidArgument) and isinstance(exc, errors.BoothStudioError)
    assert exc.fields == ["steps", "width"]
    first = exc.violations[0]
    assert (first.field, first.description) == ("steps", "must be 1..150")
    assert exc.reason == "BAD_SIZE" and "must be 1..150" in str(exc)
    assert exc.rpc_error is err


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Cancelled, grpc.StatusCode.CANCELLED),
        (errors.Internal, grpc.StatusCode.INTERNAL),
        (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_every_status_has_its_class(cls: type[errors.BoothStudioError], code: Any) -> None:
    exc = errors.from_rpc_error(FakeRpcError(code, "server says no"))
    assert type(exc) is cls and exc.code == code
    assert "server says no" in exc.message


def test_retry_after_and_metadata() -> None:
    err = from_server(
        shared_errors.ResourceExhausted(
            "queue full", reason="QUEUE_FULL", retry_after=1.5, metadata={"queue_size": 4}
        )
    )
    exc = errors.from_rpc_error(err)
    assert isinstance(exc, errors.ResourceExhausted)
    assert (exc.reason, exc.retry_after, exc.metadata) == ("QUEUE_FULL", 1.5, {"queue_size": "4"})


def test_unreachable_message_names_service_and_address() -> None:
    err = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses\nmore")
    exc = errors.from_rpc_error(err, service="trainer", address="10.0.0.1:50053")
    assert isinstance(exc, errors.Unavailable)
    assert exc.message.startswith("cannot reach the trainer at 10.0.0.1:50053")
    assert "\n" not in exc.message
    # An UNAVAILABLE the server itself raised keeps its message.
    served = errors.from_rpc_error(from_server(shared_errors.Unavailable("draining")), service="x")
    assert served.message == "draining"


def test_retry_only_unavailable_only_idempotent_and_within_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE)
    st = RetryState(policy, timeout=10, idempotent=True)
    st.start_attempt()
    assert st.retry_delay(FakeRpcError(grpc.StatusCode.INTERNAL)) is None
    assert st.retry_delay(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)) is None
    d1 = st.retry_delay(unavailable)
    assert d1 is not None and 0.005 <= d1 <= 0.01
    st.start_attempt()
    d2 = st.retry_delay(unavailable)
    assert d2 is not None and 0.01 <= d2 <= 0.02  # exponential
    st.start_attempt()
    assert st.retry_delay(unavailable) is None  # max_attempts reached
    not_idem = RetryState(policy, timeout=10, idempotent=False)
    not_idem.start_attempt()
    assert not_idem.retry_delay(unavailable) is None
    short = RetryState(RetryPolicy(initial_backoff=5), timeout=0.5, idempotent=True)
    short.start_attempt()
    assert short.retry_delay(unavailable) is None  # the backoff would pass the deadline
    assert RetryPolicy(initial_backoff=1, max_backoff=3).backoff(10) <= 3


def test_fanout_result() -> None:
    nf = errors.NotFound("nope")
    assert fanout_result([True, False], [nf], any) is True
    with pytest.raises(errors.NotFound):
        fanout_result([], [nf, errors.NotFound("again")], any)
    with pytest.raises(errors.Unavailable):
        fanout_result([], [nf, errors.Unavailable("down")], any)


def test_config_from_env_and_arguments() -> None:
    env = {
        "BOOTHSTUDIO_CATALOG": "cat:1",
        "BOOTHSTUDIO_GENERATOR": "g1:2, g2:2",
        "BOOTHSTUDIO_TRAINER_ADDRESS": "tr:3",
        "BOOTHSTUDIO_API_KEY": "k",
        "BOOTHSTUDIO_TIMEOUT": "5",
    }
    c = ClientConfig.resolve(env=env)
    assert (c.catalog, c.generators, c.trainer) == ("cat:1", ("g1:2", "g2:2"), "tr:3")
    assert (c.api_key, c.timeout, c.tls) == ("k", 5.0, None)
    c = ClientConfig.resolve(generator=["a:1", "b:1"], api_key="", env=env)
    assert c.generators == ("a:1", "b:1") and c.api_key == ""
    d = ClientConfig.resolve(env={})
    assert (d.catalog, d.generators, d.trainer) == (
        "localhost:50051",
        ("localhost:50052",),
        "localhost:50053",
    )
    h = ClientConfig.resolve(host="gpu-box", env=env)
    assert (h.catalog, h.generators, h.trainer) == (
        "gpu-box:50051",
        ("gpu-box:50052",),
        "gpu-box:50053",
    )
    t = ClientConfig.resolve(env={"BOOTHSTUDIO_TLS": "1", "BOOTHSTUDIO_TLS_SERVER_NAME": "bs"})
    assert t.tls is not None and ("grpc.ssl_target_name_override", "bs") in t.grpc_options()
    assert ClientConfig.resolve(root_certificates=b"PEM", env={}).tls is not None
    with pytest.raises(ValueError):
        ClientConfig.resolve(generator=" , ", env={})


BLOCKER = """
import sys
HEAVY = ("torch", "diffusers", "transformers", "lightning", "pytorch_lightning", "textual")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
import boothstudio.clients.sdk, boothstudio.clients.sdk.cli
from boothstudio.clients.sdk import BoothStudio, AsyncBoothStudio
BoothStudio(); AsyncBoothStudio()
assert not any(m.split(".")[0] in HEAVY for m in sys.modules), sorted(sys.modules)
print("ok")
"""


def test_sdk_imports_with_torch_blocked() -> None:
    res = subprocess.run(
        [sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_watch_dedupes_only_history_replayed_after_a_reconnect() -> None:
    from boothstudio.clients.sdk._base import StreamState

    st = StreamState(RetryPolicy(), None, resume_anytime=True)
    # First connection with history: the latest metrics come last with an older sequence.
    assert [s for s in (1, 2, 5, 3) if not st.seen(s)] == [1, 2, 5, 3]
    st.reconnecting()  # replayed history after a reconnect: only newer events pass
    assert [s for s in (1, 2, 3, 5, 6, 7) if not st.seen(s)] == [6, 7]
    assert not st.seen(0)  # keepalive-like events without a sequence are never dropped
