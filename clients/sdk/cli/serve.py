"""`boothstudio serve`: the three services in this process (needs the services extra)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from boothstudio.clients.sdk.cli.arguments import Commands
from boothstudio.clients.sdk.cli.exits import EXIT_ERROR, PROG
from boothstudio.clients.sdk.cli.output import Output


def register(commands: Commands) -> None:
    p = commands.add(
        "serve", "start the Catalog, Generator and Trainer services (needs the services extra)"
    )
    p.add_argument("--bind", dest="bind_host", default=None, help="address to bind (127.0.0.1)")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (./data)")
    p.add_argument("--config", type=Path, default=None, help="services YAML config file")
    p.add_argument(
        "--services",
        default="catalog,generator,trainer",
        help="which services to start (comma-separated)",
    )
    p.add_argument("--log-format", choices=["json", "text"], default=None)
    p.set_defaults(func=cmd_serve, needs_client=False)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    needed = ("boothstudio.services", "torch", "diffusers", "pydantic")
    missing = [m for m in needed if not _importable(m)]
    if missing:
        out.note(
            f"{PROG}: serve needs the services and their extra dependencies (missing: "
            f"{', '.join(missing)}); install them with: pip install 'boothstudio[services]'"
        )
        return EXIT_ERROR
    from boothstudio.shared import launcher

    argv: list[str] = ["--services", args.services]
    for flag, value in (
        ("--host", args.bind_host),
        ("--data-dir", args.data_dir),
        ("--config", args.config),
        ("--log-format", args.log_format),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return launcher.main(argv)
