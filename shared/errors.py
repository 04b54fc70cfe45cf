"""Errors servicers raise, their mapping to gRPC status with google.rpc details, and the
client-side decoder.

Servicers raise one of the classes below; the server runner's error interceptor turns it into a
gRPC status whose trailing metadata carries a `google.rpc.Status` with:

- `google.rpc.ErrorInfo(reason, domain="boothstudio", metadata)` on every error;
- `google.rpc.BadRequest` with field violations when the error names fields;
- `google.rpc.RetryInfo` when the error says when to retry (ResourceExhausted, Unavailable).

Any other exception becomes INTERNAL with a generic message (the traceback goes to the log only).

Clients decode an `grpc.RpcError` with `decode_rpc_error()` (plain data) or
`exception_from_rpc_error()` (the matching exception class, e.g. for the SDK).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "boothstudio"
DETAILS_METADATA_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: a dotted path (e.g. "config.max_train_steps") and what is wrong with it."""

    field: str
    description: str
    reason: str = ""


ViolationLike = FieldViolation | tuple[str, str]

# What an error may carry back: the status travels in trailing metadata, which clients cap
# (8 KiB by default); an error that echoes a huge request value must still fit, or the client
# sees RESOURCE_EXHAUSTED instead of the real error. Message and details are clipped to these
# budgets (UTF-8 bytes): the message travels twice (grpc-message, percent-encoded, and inside
# the status), the details once, base64-encoded.
MAX_MESSAGE_BYTES = 512
MAX_TEXT_CHARS = 200
MAX_DETAILS_BYTES = 2500
MAX_VIOLATIONS = 20


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` cut to `limit` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def clip_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), with an ellipsis."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "\u2026"


def _violation(v: ViolationLike) -> FieldViolation:
    v = v if isinstance(v, FieldViolation) else FieldViolation(v[0], v[1])
    return FieldViolation(clip(v.field), clip(v.description, 2 * MAX_TEXT_CHARS), clip(v.reason))


class BoothStudioError(Exception):
    """Base class: an error with a gRPC code, a machine-readable reason and optional details.

    Args:
        message: human-readable message (becomes the status details string).
        reason: machine-readable UPPER_SNAKE_CASE reason for ErrorInfo (default per class).
        violations: field violations for BadRequest, as FieldViolation or (field, description).
        metadata: extra string key/values for ErrorInfo.metadata.
        retry_after: seconds after which a retry may succeed (RetryInfo).
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"
    default_message: ClassVar[str] = "internal error"
    #: Client side: the RpcError this exception was decoded from (None on the server).
    rpc_error: grpc.RpcError | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: str | None = None,
        violations: Iterable[ViolationLike] = (),
        metadata: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.violations: list[FieldViolation] = [
            _violation(v) for _, v in zip(range(MAX_VIOLATIONS), violations, strict=False)
        ]
        if message is None:
            message = (
                "; ".join(f"{v.field}: {v.description}" for v in self.violations)
                if self.violations
                else self.default_message
            )
        message = clip_bytes(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.reason = clip(reason or self.default_reason)
        self.metadata: dict[str, str] = {
            clip(k, 64): clip(str(v)) for k, v in list((metadata or {}).items())[:8]
        }
        self.retry_after = retry_after

    @property
    def fields(self) -> list[str]:
        """The field paths named by the violations."""
        return [v.field for v in self.violations]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"

    def to_rpc_status(self) -> status_pb2.Status:
        """The google.rpc.Status carried in the trailing metadata (within MAX_DETAILS_BYTES:
        field violations that do not fit are left out, the first ones always kept)."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=DOMAIN, metadata=self.metadata
        )
        details: list[Any] = [info]
        budget = MAX_DETAILS_BYTES - info.ByteSize()
        if self.violations:
            bad = error_details_pb2.BadRequest()
            for v in self.violations:
                item = error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                if bad.field_violations and item.ByteSize() + 4 > budget:
                    break
                budget -= item.ByteSize() + 4
                bad.field_violations.append(item)
            details.append(bad)
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        packed = []
        for d in details:
            a = any_pb2.Any()
            a.Pack(d)
            packed.append(a)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)

    def to_grpc_status(self) -> grpc.Status:
        """A grpc.Status (code, details, trailing metadata) ready for `context.abort`."""
        from grpc_status import rpc_status

        status: grpc.Status = rpc_status.to_status(self.to_rpc_status())
        return status


class InvalidArgument(BoothStudioError):
    """The request is malformed; name the fields: InvalidArgument(violations=[("steps", "...")])."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"
    default_message = "invalid argument"

    @classmethod
    def for_field(
        cls, field: str, description: str, *, reason: str | None = None
    ) -> InvalidArgument:
        """Shorthand for one bad field."""
        return cls(f"{field}: {description}", violations=[(field, description)], reason=reason)


class NotFound(BoothStudioError):
    """A named resource does not exist; `field` names the request field that referred to it."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"
    default_message = "not found"

    def __init__(
        self,
        message: str | None = None,
        *,
        resource_type: str = "",
        resource_name: str = "",
        field: str = "",
        **kwargs: Any,
    ) -> None:
        metadata = dict(kwargs.pop("metadata", None) or {})
        if resource_type:
            metadata.setdefault("resource_type", resource_type)
        if resource_name:
            metadata.setdefault("resource_name", resource_name)
        violations = list(kwargs.pop("violations", ()))
        if message is None and resource_type:
            message = f"{resource_type} {resource_name!r} not found"
        if field:
            violations.append(FieldViolation(field, message or "not found"))
        super().__init__(message, metadata=metadata, violations=violations, **kwargs)


class AlreadyExists(BoothStudioError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"
    default_message = "already exists"


class FailedPrecondition(BoothStudioError):
    """The system is not in a state for this (e.g. deleting the default model, resuming a job
    without checkpoint)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"
    default_message = "failed precondition"


class ResourceExhausted(BoothStudioError):
    """Out of capacity: ResourceExhausted("queue full", reason="QUEUE_FULL", retry_after=2)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"
    default_message = "resource exhausted"


class PermissionDenied(BoothStudioError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"
    default_message = "permission denied"


class Unauthenticated(BoothStudioError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"
    default_message = "missing or invalid API key"


class Unavailable(BoothStudioError):
    """Temporarily unavailable (shutting down, a backend unreachable); safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    default_message = "service unavailable"


class Aborted(BoothStudioError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"
    default_message = "aborted"


class Cancelled(BoothStudioError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"
    default_message = "cancelled"


class DeadlineExceeded(BoothStudioError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"
    default_message = "deadline exceeded"


class OutOfRange(BoothStudioError):
    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"
    default_message = "out of range"


class Unimplemented(BoothStudioError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"
    default_message = "not implemented yet"


class Internal(BoothStudioError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"
    default_message = "internal error"


class UnknownError(BoothStudioError):
    """Client side: an error whose code has no dedicated class."""

    code = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"
    default_message = "unknown error"


ERROR_CLASSES: dict[grpc.StatusCode, type[BoothStudioError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        Aborted,
        Cancelled,
        DeadlineExceeded,
        OutOfRange,
        Unimplemented,
        Internal,
        UnknownError,
    )
}


def from_exception(exc: BaseException) -> BoothStudioError:
    """Map any exception raised by a servicer to a BoothStudioError (server side).

    Unknown exceptions become a generic Internal error: no traceback or repr leaks to the client.
    """
    if isinstance(exc, BoothStudioError):
        return exc
    if isinstance(exc, NotImplementedError):
        return Unimplemented(str(exc) or None)
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded()
    return Internal("internal error; see the server log")


# --------------------------------------------------------------------------- client side


@dataclass
class ErrorDetails:
    """What a client can learn from a failed call."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[FieldViolation] = field(default_factory=list)
    retry_after: float | None = None

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.violations]


def _trailing_metadata(err: grpc.RpcError) -> list[tuple[str, Any]]:
    getter = getattr(err, "trailing_metadata", None)
    if getter is None:
        return []
    try:
        md = getter()
    except Exception:
        return []
    return list(md or [])


def decode_rpc_error(err: grpc.RpcError) -> ErrorDetails:
    """Extract code, message, ErrorInfo, BadRequest and RetryInfo from an RpcError.

    Works for sync (`grpc.RpcError` from a call) and asyncio (`grpc.aio.AioRpcError`) errors.
    """
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    message = (details_fn() if callable(details_fn) else None) or ""
    out = ErrorDetails(code=code or grpc.StatusCode.UNKNOWN, message=message)
    for key, value in _trailing_metadata(err):
        if key != DETAILS_METADATA_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        if status.message:
            out.message = status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out.reason, out.domain = info.reason, info.domain
                out.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                out.violations.extend(
                    FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                out.retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return out


def exception_from_rpc_error(err: grpc.RpcError) -> BoothStudioError:
    """The BoothStudioError subclass matching an RpcError's code, with its decoded details.

    The original RpcError is kept in the attribute `rpc_error`.
    """
    d = decode_rpc_error(err)
    cls = ERROR_CLASSES.get(d.code, UnknownError)
    exc = BoothStudioError.__new__(cls)
    BoothStudioError.__init__(
        exc,
        d.message or None,
        reason=d.reason or None,
        violations=d.violations,
        metadata=d.metadata,
        retry_after=d.retry_after,
    )
    exc.rpc_error = err
    return exc


__all__ = [
    "DOMAIN",
    "ERROR_CLASSES",
    "Aborted",
    "AlreadyExists",
    "BoothStudioError",
    "Cancelled",
    "DeadlineExceeded",
    "ErrorDetails",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownError",
    "clip",
    "decode_rpc_error",
    "exception_from_rpc_error",
    "from_exception",
]
