"""What the store tests share: an environment that keeps a service to itself, and the decoded
error of a refused call."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from boothstudio.shared.errors import ErrorDetails, decode_rpc_error
from tests.helpers import free_port


def isolated_env(database_url: str = "", **more: str) -> dict[str, str]:
    """Service environment: the other services' addresses point where nothing listens (their
    questions are refused at once), plus `database_url` when given and `more`."""
    out = {
        "BOOTHSTUDIO_GENERATOR_ADDRESS": f"127.0.0.1:{free_port()}",
        "BOOTHSTUDIO_TRAINER_ADDRESS": f"127.0.0.1:{free_port()}",
        "BOOTHSTUDIO_CATALOG_ADDRESS": f"127.0.0.1:{free_port()}",
        **more,
    }
    if database_url:
        out["BOOTHSTUDIO_DATABASE_URL"] = database_url
    return out


def start_error(start: Callable[[], Any], secret: str) -> str:
    """The one error line of a service that refuses to start (exit code 2, no traceback, the
    `secret` of its configuration nowhere in its output)."""
    with pytest.raises(RuntimeError) as info:
        start()
    text = str(info.value)
    assert "exited with code 2" in text, text
    assert "Traceback" not in text and secret not in text, text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    errors = [line["msg"] for line in lines if line.get("level") == "ERROR"]
    assert len(errors) == 1, text
    return str(errors[0])


def rpc_error(call: Callable[[], Any]) -> ErrorDetails:
    """The decoded error of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return decode_rpc_error(info.value)
