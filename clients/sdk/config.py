"""Client configuration: addresses, credentials, TLS, deadlines, retries and channel options.

Resolution order for each setting: explicit argument > environment > default.

Environment variables:

- ``BOOTHSTUDIO_CATALOG``, ``BOOTHSTUDIO_GENERATOR``, ``BOOTHSTUDIO_TRAINER``: ``host:port``
  (defaults ``localhost:50051/50052/50053``); the generator takes a comma-separated list for
  client-side round-robin. ``BOOTHSTUDIO_<SERVICE>_ADDRESS`` (the services' own form) also works.
- ``BOOTHSTUDIO_API_KEY``: sent as ``x-api-key`` metadata on every call.
- ``BOOTHSTUDIO_TLS`` (1/true), ``BOOTHSTUDIO_TLS_CA``, ``BOOTHSTUDIO_TLS_CLIENT_CERT``,
  ``BOOTHSTUDIO_TLS_CLIENT_KEY``, ``BOOTHSTUDIO_TLS_SERVER_NAME``.
- ``BOOTHSTUDIO_TIMEOUT``: default deadline of unary calls in seconds (30).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import grpc

ServiceName = Literal["catalog", "generator", "trainer"]

DEFAULT_ADDRESSES: dict[ServiceName, str] = {
    "catalog": "localhost:50051",
    "generator": "localhost:50052",
    "trainer": "localhost:50053",
}
#: Max send/receive message size set on every channel (images and previews travel inline).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for idempotent calls that fail with UNAVAILABLE.

    Attempt n (1-based) waits ``min(max_backoff, initial_backoff * multiplier**(n-1))`` scaled by
    a random factor in [0.5, 1.0], and never past the call's deadline.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class TLSOptions:
    """TLS for the channels. With no root certificates the system roots are used."""

    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    server_name: str = ""


def _read(value: bytes | str | os.PathLike[str] | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ClientConfig:
    """Everything a BoothStudio client needs to connect. Build one with `ClientConfig.resolve`."""

    catalog: str = DEFAULT_ADDRESSES["catalog"]
    generators: tuple[str, ...] = (DEFAULT_ADDRESSES["generator"],)
    trainer: str = DEFAULT_ADDRESSES["trainer"]
    api_key: str = ""
    tls: TLSOptions | None = None
    #: Deadline of unary calls in seconds.
    timeout: float = 30.0
    #: Deadline of a whole generation stream (generate / stream_generate); None = no deadline.
    generate_timeout: float | None = 600.0
    #: Deadline of training watch streams; None = no deadline.
    watch_timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: Extra channel options, e.g. {"grpc.keepalive_time_ms": 30000}.
    channel_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(
        cls,
        catalog: str | None = None,
        generator: str | Sequence[str] | None = None,
        trainer: str | None = None,
        *,
        host: str | None = None,
        api_key: str | None = None,
        tls: bool | TLSOptions | None = None,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        client_certificate: bytes | str | os.PathLike[str] | None = None,
        client_key: bytes | str | os.PathLike[str] | None = None,
        server_name: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ClientConfig:
        """Combine explicit arguments, the environment and defaults.

        `host` sets all three addresses to that host with the default ports (50051-50053).
        """
        env = os.environ if env is None else env

        def from_env(name: ServiceName) -> str | None:
            up = name.upper()
            return env.get(f"BOOTHSTUDIO_{up}") or env.get(f"BOOTHSTUDIO_{up}_ADDRESS") or None

        def default(name: ServiceName) -> str:
            if host:
                return f"{host}:{DEFAULT_ADDRESSES[name].rsplit(':', 1)[1]}"
            return from_env(name) or DEFAULT_ADDRESSES[name]

        gen: str | Sequence[str] = generator if generator else default("generator")
        generators = tuple(
            a.strip() for a in ([gen] if isinstance(gen, str) else gen) for a in a.split(",")
        )
        generators = tuple(a for a in generators if a)
        if not generators:
            raise ValueError("at least one generator address is needed")

        tls_opts: TLSOptions | None
        if isinstance(tls, TLSOptions):
            tls_opts = tls
        else:
            ca = root_certificates or env.get("BOOTHSTUDIO_TLS_CA") or None
            cert = client_certificate or env.get("BOOTHSTUDIO_TLS_CLIENT_CERT") or None
            key = client_key or env.get("BOOTHSTUDIO_TLS_CLIENT_KEY") or None
            name = server_name or env.get("BOOTHSTUDIO_TLS_SERVER_NAME") or ""
            want = tls if tls is not None else (_truthy(env.get("BOOTHSTUDIO_TLS")) or bool(ca))
            want = want or bool(cert)
            tls_opts = TLSOptions(_read(ca), _read(cert), _read(key), name) if want else None

        env_timeout = env.get("BOOTHSTUDIO_TIMEOUT")
        return cls(
            catalog=catalog or default("catalog"),
            generators=generators,
            trainer=trainer or default("trainer"),
            api_key=api_key if api_key is not None else env.get("BOOTHSTUDIO_API_KEY", ""),
            tls=tls_opts,
            timeout=timeout
            if timeout is not None
            else (float(env_timeout) if env_timeout else cls.timeout),
            retry=retry or RetryPolicy(),
            **overrides,
        )

    def with_options(self, **changes: Any) -> ClientConfig:
        return replace(self, **changes)

    def address(self, service: ServiceName) -> list[str]:
        if service == "generator":
            return list(self.generators)
        return [self.catalog if service == "catalog" else self.trainer]

    def grpc_options(self) -> list[tuple[str, Any]]:
        """Channel options on top of shared.channels' (which sets the message size limits)."""
        opts: list[tuple[str, Any]] = [
            # Our own retry loop decides what to retry; keep gRPC's transparent retries only.
            ("grpc.enable_retries", 0),
        ]
        if self.tls is not None and self.tls.server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls.server_name))
        opts.extend(self.channel_options.items())
        return opts


class RetryState:
    """Book-keeping of one logical call: deadline left, attempts made, whether to retry.

    Shared by the sync and asyncio clients (they differ only in how they sleep).
    """

    def __init__(self, policy: RetryPolicy, timeout: float | None, idempotent: bool) -> None:
        self.policy = policy if idempotent else NO_RETRY
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.attempt = 0

    def remaining(self) -> float | None:
        """Seconds left before the overall deadline (at least a millisecond), or None."""
        if self.deadline is None:
            return None
        return max(0.001, self.deadline - time.monotonic())

    def start_attempt(self) -> float | None:
        self.attempt += 1
        return self.remaining()

    def retry_delay(self, err: grpc.RpcError) -> float | None:
        """How long to wait before retrying after `err`, or None when the error is final."""
        code = err.code() if callable(getattr(err, "code", None)) else None
        if code != grpc.StatusCode.UNAVAILABLE or self.attempt >= self.policy.max_attempts:
            return None
        delay = self.policy.backoff(self.attempt)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None
        return delay
