"""`boothstudio samplers`, `backends` and `health`: what the services offer and whether they
answer."""

from __future__ import annotations

import argparse
import dataclasses

from boothstudio.clients.sdk.cli.arguments import Commands
from boothstudio.clients.sdk.cli.exits import EXIT_OK, EXIT_UNAVAILABLE
from boothstudio.clients.sdk.cli.output import Output, cell
from boothstudio.clients.sdk.client import BoothStudio


def register(commands: Commands) -> None:
    p = commands.add("samplers", "list samplers with their schedules and options")
    p.add_argument("--backend", default="", help="backend id")
    p.add_argument("--model", default="", help="samplers usable with this model")
    p.set_defaults(func=cmd_samplers)

    p = commands.add("backends", "list generation backends")
    p.add_argument("--refresh", action="store_true", help="check reachability now")
    p.set_defaults(func=cmd_backends)

    p = commands.add("health", "show whether each service is serving")
    p.set_defaults(func=cmd_health)


def cmd_samplers(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    samplers = client.list_samplers(backend_id=args.backend, model_id=args.model)
    if out.json:
        out.emit(samplers)
        return EXIT_OK
    for s in samplers:
        default = " (default)" if s.id == samplers.default_sampler else ""
        out.print(f"{s.id}  {s.label}{default}")
        if s.schedules:
            out.print(f"    schedules: {', '.join(s.schedules)} (default {s.default_schedule})")
        if s.aliases:
            out.print(f"    aliases: {', '.join(s.aliases)}")
        for p in s.parameters:
            rng = ""
            if p.min is not None or p.max is not None:
                lo = "" if p.min is None else cell(p.min)
                hi = "" if p.max is None else cell(p.max)
                rng = f" [{lo}..{hi}]"
            choices = f" {{{', '.join(p.choices)}}}" if p.choices else ""
            out.print(
                f"    --opt {p.name}=<{p.type.value}>{rng}{choices} default {p.default}"
                + (f"  {p.help}" if p.help else "")
            )
    return EXIT_OK


def cmd_backends(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    backends = client.list_backends(refresh=args.refresh)
    if out.json:
        out.emit(backends)
        return EXIT_OK
    rows = []
    for b in backends:
        caps = [k for k, v in dataclasses.asdict(b.capabilities).items() if v]
        rows.append(
            (
                b.id + (" *" if b.is_default else ""),
                b.kind,
                b.reachable,
                b.device or b.endpoint or "-",
                ",".join(caps),
                b.message,
            )
        )
    out.table(rows, ["ID", "KIND", "REACHABLE", "WHERE", "CAPABILITIES", "MESSAGE"])
    return EXIT_OK


def cmd_health(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    health = client.health(timeout=args.timeout or 2.0)
    if out.json:
        out.emit(health)
    else:
        out.table(
            [(h.service, h.address, h.status) for h in health], ["SERVICE", "ADDRESS", "STATUS"]
        )
    return EXIT_OK if all(h.serving for h in health) else EXIT_UNAVAILABLE
