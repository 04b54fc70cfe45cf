"""Command-line input shared by the command groups: the parser class, the connection and output
flags (accepted before or after the command), typed flag values, and the client they describe."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from boothstudio.clients.sdk.cli.exits import EXIT_USAGE, UsageError
from boothstudio.clients.sdk.client import BoothStudio
from boothstudio.clients.sdk.text import parse_option
from boothstudio.clients.sdk.types import Page


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to find help (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: usage error: {message} (see {self.prog} --help)\n")


class Commands:
    """Where a command group adds its commands (or a command its actions): each one takes the
    connection flags too, so that they work after the command as well as before it."""

    def __init__(
        self,
        sub: argparse._SubParsersAction[Parser],
        conn: argparse.ArgumentParser,
        *,
        describe: bool = True,
    ) -> None:
        self.sub = sub
        self.conn = conn
        self.describe = describe  # commands repeat their help line as description; actions not

    def add(self, name: str, help: str, parents: Sequence[argparse.ArgumentParser] = ()) -> Parser:
        ps: list[Any] = [self.conn, *parents]  # typeshed wants parents of the parser's class
        return self.sub.add_parser(
            name, help=help, description=help if self.describe else None, parents=ps
        )

    def group(self, name: str, help: str) -> Commands:
        """A command with actions (`jobs list`, `jobs get`...)."""
        actions = self.add(name, help).add_subparsers(
            dest="action", metavar="ACTION", required=True
        )
        return Commands(actions, self.conn, describe=False)


def connection_parent(suppress: bool) -> argparse.ArgumentParser:
    """Connection and output options, accepted before or after the command."""
    p = argparse.ArgumentParser(add_help=False)
    d: Callable[[Any], Any] = (lambda _v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = p.add_argument_group("connection")
    g.add_argument(
        "--catalog",
        metavar="HOST:PORT",
        default=d(None),
        help="Catalog address (env BOOTHSTUDIO_CATALOG, default localhost:50051)",
    )
    g.add_argument(
        "--generator",
        metavar="HOST:PORT",
        action="append",
        default=d(None),
        help="Generator address; repeat for round-robin (env BOOTHSTUDIO_GENERATOR)",
    )
    g.add_argument(
        "--trainer",
        metavar="HOST:PORT",
        default=d(None),
        help="Trainer address (env BOOTHSTUDIO_TRAINER, default localhost:50053)",
    )
    g.add_argument(
        "--host", default=d(None), help="one host for all three services on the default ports"
    )
    g.add_argument("--api-key", default=d(None), help="API key (env BOOTHSTUDIO_API_KEY)")
    g.add_argument("--tls", action="store_true", default=d(False), help="use TLS")
    g.add_argument("--ca-cert", type=Path, default=d(None), help="root CA file (implies --tls)")
    g.add_argument("--client-cert", type=Path, default=d(None), help="client certificate (mTLS)")
    g.add_argument("--client-key", type=Path, default=d(None), help="client key (mTLS)")
    g.add_argument("--server-name", default=d(None), help="TLS server name override")
    g.add_argument(
        "--timeout",
        type=float,
        default=d(None),
        help="deadline of each call in seconds (default 30)",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--json", action="store_true", default=d(False), help="print results as JSON on stdout"
    )
    o.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default=d("auto"),
        help="progress on stderr (auto: when stderr is a terminal)",
    )
    o.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=d(False),
        help="no progress or notes on stderr",
    )
    return p


def make_client(args: argparse.Namespace) -> BoothStudio:
    return BoothStudio(
        args.catalog,
        args.generator,
        args.trainer,
        host=args.host,
        api_key=args.api_key,
        tls=True if args.tls else None,
        root_certificates=args.ca_cert,
        client_certificate=args.client_cert,
        client_key=args.client_key,
        server_name=args.server_name,
        timeout=args.timeout,
    )


def key_values(items: Iterable[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs: values typed (true/false, int, float, else string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_option(value)
    return out


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def add_limit(parser: argparse.ArgumentParser) -> None:
    """--limit N of a list command (see `paged`)."""
    parser.add_argument("--limit", type=positive, default=50, help="at most this many (0 = all)")


def paged(fetch: Callable[[str, int], Page[Any]], limit: int) -> list[Any]:
    items: list[Any] = []
    token = ""
    while True:
        page = fetch(token, min(limit - len(items), 1000) if limit else 1000)
        items.extend(page.items)
        token = page.next_page_token
        if not token or (limit and len(items) >= limit):
            return items[:limit] if limit else items
