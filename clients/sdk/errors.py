"""Exceptions raised by the SDK: one class per gRPC status, plus job failures.

The classes are those of `boothstudio.shared.errors` (the services raise the same ones), so
``except clients.sdk.NotFound`` catches a NOT_FOUND from any service. Every exception carries
the server's ``message``, the ErrorInfo ``reason`` (e.g. "MODEL_NOT_FOUND"), ``metadata``,
``violations`` (BadRequest field violations with ``.field`` and ``.description``; ``fields``
lists the field paths) and ``retry_after`` (RetryInfo) when the server sent them, and the
original ``grpc.RpcError`` in ``rpc_error``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from boothstudio.shared.errors import (
    ERROR_CLASSES,
    Aborted,
    AlreadyExists,
    BoothStudioError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnknownError,
    decode_rpc_error,
    exception_from_rpc_error,
)

if TYPE_CHECKING:
    from boothstudio.clients.sdk.types import TrainingJob


class GenerationFailed(BoothStudioError):
    """A generation job ended FAILED; `reason` is the server's error_reason (e.g. OUT_OF_MEMORY)."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "GENERATION_FAILED"
    default_message = "generation failed"

    job_id: str = ""


class TrainingJobFailed(BoothStudioError):
    """A training job ended FAILED or CANCELLED while waiting for it; the job is in `job`."""

    code = grpc.StatusCode.ABORTED
    default_reason = "TRAINING_FAILED"
    default_message = "training job failed"

    job: TrainingJob | None = None


def from_rpc_error(err: grpc.RpcError, *, service: str = "", address: str = "") -> BoothStudioError:
    """Decode a failed call into the matching exception class.

    When the client could not reach the service at all (UNAVAILABLE without server details),
    the message says which service and address were tried.
    """
    exc = exception_from_rpc_error(err)
    from_server = bool(decode_rpc_error(err).domain)
    if isinstance(exc, Unavailable) and not from_server and service:
        where = f"{service} at {address}" if address else service
        # "failed to connect to all addresses; last error: UNKNOWN: ipv4:h:1: ... refused"
        detail = exc.message.split("\n", 1)[0].rsplit(": ", 1)[-1].rstrip("]")
        exc.message = f"cannot reach the {where} ({detail})"
        exc.args = (exc.message,)
    if isinstance(exc, DeadlineExceeded) and service:
        exc.message = f"{service} did not answer in time ({exc.message})"
        exc.args = (exc.message,)
    return exc


def invalid(field: str, description: str) -> InvalidArgument:
    """A client-side InvalidArgument naming one field (bad local input)."""
    return InvalidArgument.for_field(field, description)


__all__ = [
    "ERROR_CLASSES",
    "Aborted",
    "AlreadyExists",
    "BoothStudioError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "GenerationFailed",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "TrainingJobFailed",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnknownError",
    "from_rpc_error",
    "invalid",
]
