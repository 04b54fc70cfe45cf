"""`boothstudio`: the command line for BoothStudio (built on the SDK; no torch needed except
for `serve`).

Exit codes:
    0    success
    1    server-side or job failure (internal error, generation/training failed, other errors)
    2    usage error or invalid argument (bad flag, missing file, a field the server rejected)
    3    not found (model, image, job)
    4    service unreachable or deadline exceeded
    5    unauthenticated or permission denied (API key)
    6    conflict: already exists, failed precondition, aborted
    130  interrupted (Ctrl-C; a running generation is cancelled)
    141  the reader of stdout went away (e.g. `| head`): the rest is dropped, no message
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from boothstudio.clients.sdk._convert import readable_enum_names
from boothstudio.clients.sdk.cli import gallery, generate, info, jobs, models, serve, train
from boothstudio.clients.sdk.cli.arguments import Commands, Parser, connection_parent, make_client
from boothstudio.clients.sdk.cli.exits import (
    EXIT_AUTH,
    EXIT_CODES,
    EXIT_CONFLICT,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PROG,
    UsageError,
    exit_code_for,
)
from boothstudio.clients.sdk.cli.output import Output
from boothstudio.clients.sdk.errors import BoothStudioError

__all__ = [
    "EXIT_AUTH",
    "EXIT_CODES",
    "EXIT_CONFLICT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PIPE_CLOSED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "PROG",
    "UsageError",
    "build_parser",
    "exit_code_for",
    "main",
    "run",
]


def build_parser() -> argparse.ArgumentParser:
    """The root parser; each command group adds its commands, each bound to its handler
    (``set_defaults(func=...)``)."""
    parser = Parser(
        prog=PROG,
        description="BoothStudio: Stable Diffusion generation and DreamBooth training over gRPC.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[connection_parent(suppress=False)],
    )
    parser.set_defaults(needs_client=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = Commands(sub, connection_parent(suppress=True))
    for group in (serve, generate, train, jobs, models, info, gallery):
        group.register(commands)
    return parser


def report_error(exc: BoothStudioError, out: Output) -> int:
    code, label = exit_code_for(exc)
    message = readable_enum_names(exc.message)
    missing = [f for f in exc.fields if f not in message]
    if missing:
        message += f" (field: {', '.join(missing)})"
    out.end_line()
    sys.stderr.write(f"{PROG}: {label}: {message}\n")
    if out.json:
        out.emit(
            {
                "error": {
                    "code": exc.code.name,
                    "reason": exc.reason,
                    "message": exc.message,
                    "fields": exc.fields,
                    "exit_code": code,
                }
            }
        )
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Output(args.json, args.progress, args.quiet)
    try:
        if not args.needs_client:
            code: int = args.func(args, out)
            return code
        with make_client(args) as client:
            code = args.func(args, out, client)
            return code
    except UsageError as exc:
        out.end_line()
        sys.stderr.write(f"{PROG}: usage error: {exc}\n")
        return EXIT_USAGE
    except BoothStudioError as exc:
        return report_error(exc, out)
    except KeyboardInterrupt:
        out.end_line()
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return stdout_closed()
    except OSError as exc:  # writing outputs, reading certificates
        out.end_line()
        sys.stderr.write(
            f"{PROG}: {exc.strerror or exc}: {exc.filename or ''}\n".replace(": \n", "\n")
        )
        return EXIT_ERROR
    except ValueError as exc:  # e.g. bad addresses in the configuration
        out.end_line()
        sys.stderr.write(f"{PROG}: usage error: {exc}\n")
        return EXIT_USAGE


def stdout_closed() -> int:
    """The reader of stdout went away (`boothstudio --json ... | head`): say nothing more, and
    keep Python from complaining when it flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_PIPE_CLOSED


def run() -> None:
    """Console-script entry point."""
    try:
        code = main()
        sys.stdout.flush()  # a closed pipe shows here, while it can still be handled
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = stdout_closed()
    sys.exit(code)
