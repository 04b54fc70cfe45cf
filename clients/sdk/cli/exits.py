"""Exit codes of `boothstudio`, and which SDK exceptions map to which."""

from __future__ import annotations

from boothstudio.clients.sdk.errors import (
    Aborted,
    AlreadyExists,
    BoothStudioError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

PROG = "boothstudio"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
EXIT_AUTH, EXIT_CONFLICT, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 5, 6, 130, 141

EXIT_CODES: list[tuple[tuple[type[BoothStudioError], ...], int, str]] = [
    ((InvalidArgument, OutOfRange), EXIT_USAGE, "invalid argument"),
    ((NotFound,), EXIT_NOT_FOUND, "not found"),
    ((Unavailable, DeadlineExceeded), EXIT_UNAVAILABLE, "unavailable"),
    ((Unauthenticated, PermissionDenied), EXIT_AUTH, "access denied"),
    ((AlreadyExists, FailedPrecondition, Aborted), EXIT_CONFLICT, "conflict"),
    ((Unimplemented,), EXIT_ERROR, "not implemented"),
]


def exit_code_for(exc: BoothStudioError) -> tuple[int, str]:
    """The exit code and a short label for an SDK exception."""
    for classes, code, label in EXIT_CODES:
        if isinstance(exc, classes) and type(exc).__name__ != "TrainingJobFailed":
            return code, label
    return EXIT_ERROR, "error"


class UsageError(Exception):
    """Bad command-line input found after parsing (exit code 2)."""
