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
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib.util
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

from clients.sdk import _convert as cv
from clients.sdk.client import BoothStudio
from clients.sdk.errors import (
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
from clients.sdk.types import (
    CheckpointSaved,
    ClassImagesProgress,
    Finished,
    GenerateEvent,
    GenerationResult,
    ImageReady,
    LogMessage,
    Page,
    Progress,
    Queued,
    SampleReady,
    Started,
    StateChanged,
    TrainingEvent,
    TrainingJob,
    TrainingProgress,
    TrainingState,
    TrainingWarning,
    WarningEvent,
)

PROG = "boothstudio"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
EXIT_AUTH, EXIT_CONFLICT, EXIT_INTERRUPTED = 5, 6, 130

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


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to find help (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: usage error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------- output


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, enums, datetimes and pages as JSON values (bytes and `raw` left out)."""
    if isinstance(obj, GenerationResult):
        return {
            "job_id": obj.job_id,
            "status": obj.status.value,
            "seeds": obj.seeds,
            "images": [to_jsonable(i) for i in obj],
        }
    if isinstance(obj, Page):
        return {
            "items": [to_jsonable(i) for i in obj.items],
            "next_page_token": obj.next_page_token,
            "total_size": obj.total_size,
        }
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "raw" or isinstance(value, bytes | bytearray):
                continue
            if value is None and f.name in ("png", "preview"):
                continue
            out[f.name] = to_jsonable(value)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


class Output:
    """Where results go: human text or JSON on stdout; progress and messages on stderr."""

    def __init__(self, json_mode: bool, progress: str, quiet: bool) -> None:
        self.json = json_mode
        self.quiet = quiet
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        tty = self.err.isatty()
        self.progress = not quiet and (progress == "always" or (progress == "auto" and tty))
        self.live = tty  # redraw in place only on a terminal
        self._line = False

    def emit(self, data: Any) -> None:
        json.dump(to_jsonable(data), self.out, indent=2)
        self.out.write("\n")

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        if not self.quiet:
            self.end_line()
            self.err.write(text + "\n")
            self.err.flush()

    def status(self, text: str) -> None:
        """A progress line: redrawn in place on a terminal, one line per update otherwise."""
        if not self.progress:
            return
        if self.live:
            self.err.write("\r\x1b[2K" + text)
            self._line = True
        else:
            self.err.write(text + "\n")
        self.err.flush()

    def end_line(self) -> None:
        if self._line:
            self.err.write("\n")
            self._line = False

    def table(self, rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
        if not rows:
            self.note("(none)")
            return
        cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for r in cells:
            self.print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def bar(fraction: float, width: int = 24) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def fmt_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# ------------------------------------------------------------------------------- parsing


def key_values(items: Iterable[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs: values typed (true/false, int, float, else string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = cv.parse_option(value)
    return out


def training_settings(items: Iterable[str]) -> dict[str, Any]:
    """--set KEY=VALUE for DreamBoothConfig settings; dotted keys nest (lora.rank=8), values are
    YAML scalars or lists ([a, b])."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


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


def generation_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("generation")
    g.add_argument("-n", "--negative", default=None, help="negative prompt")
    g.add_argument("-m", "--model", default=None, help="model id (default: the default model)")
    g.add_argument("--backend", default=None, help="backend id")
    g.add_argument("-s", "--sampler", default=None, help="sampler id, label or alias")
    g.add_argument("--schedule", default=None, help="schedule id, e.g. karras")
    g.add_argument("--steps", type=int, default=None, help="denoising steps")
    g.add_argument("--cfg", type=float, default=None, help="guidance scale")
    g.add_argument("-W", "--width", type=int, default=None, help="width in pixels")
    g.add_argument("-H", "--height", type=int, default=None, help="height in pixels")
    g.add_argument("--seed", type=int, default=None, help="seed of the first image (-1 random)")
    g.add_argument("-c", "--count", type=int, default=None, help="number of images")
    g.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sampler option (see `boothstudio samplers`), repeatable",
    )
    g.add_argument(
        "--backend-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option, repeatable",
    )
    g.add_argument(
        "--preview-interval", type=int, default=None, help="preview every N steps (0 = none)"
    )
    g.add_argument(
        "--no-gallery", action="store_true", help="do not keep the images in the gallery"
    )
    g.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("."),
        help="folder to write the PNGs to (default: current folder)",
    )
    g.add_argument("--prefix", default="", help="file name prefix")
    return p


def build_parser() -> argparse.ArgumentParser:
    conn = connection_parent(suppress=True)
    parser = Parser(
        prog=PROG,
        description="BoothStudio: Stable Diffusion generation and DreamBooth training over gRPC.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[connection_parent(suppress=False)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, parents: Sequence[argparse.ArgumentParser] = ()) -> Any:
        ps: list[Any] = [conn, *parents]
        return sub.add_parser(name, help=help, description=help, parents=ps)

    p = add("serve", "start the Catalog, Generator and Trainer services (needs the services extra)")
    p.add_argument("--bind", dest="bind_host", default=None, help="address to bind (127.0.0.1)")
    p.add_argument("--data-dir", type=Path, default=None, help="data directory (./data)")
    p.add_argument("--config", type=Path, default=None, help="services YAML config file")
    p.add_argument(
        "--services",
        default="catalog,generator,trainer",
        help="which services to start (comma-separated)",
    )
    p.add_argument("--log-format", choices=["json", "text"], default=None)

    gen = generation_parent()
    p = add("generate", "generate images from a prompt and write PNGs", [gen])
    p.add_argument("prompt", help="what to draw")

    p = add("edit", "img2img or inpainting from image files", [gen])
    p.add_argument("image", type=Path, help="the starting image")
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--mask", type=Path, default=None, help="mask image: white = repaint")
    p.add_argument("--strength", type=float, default=None, help="how much to change, 0..1")
    p.add_argument("--mask-blur", type=int, default=None, help="mask blur radius in pixels")
    p.add_argument("--invert-mask", action="store_true", help="repaint the black area instead")
    p.add_argument(
        "--mask-fill", default=None, choices=["fill", "original", "latent_noise", "latent_nothing"]
    )

    p = add("train", "create a DreamBooth job from a folder of images or a YAML file")
    p.add_argument("images", nargs="?", type=Path, default=None, help="folder of instance images")
    p.add_argument("--config", type=Path, default=None, help="training YAML file")
    p.add_argument(
        "--base-model", default=None, help="model id to fine-tune (default: the default model)"
    )
    p.add_argument("--identifier", default=None, help="rare token, e.g. zwx")
    p.add_argument("--class-noun", default=None, help="class noun, e.g. dog")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--lora", action="store_true", default=None, help="train a LoRA adapter")
    p.add_argument(
        "--prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prior preservation with class images",
    )
    p.add_argument("--class-images", type=int, default=None, help="number of class images")
    p.add_argument("--seed", type=int, default=None, help="training seed")
    p.add_argument("--resolution", type=int, default=None, help="training resolution")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any DreamBoothConfig setting (dotted for nested: lora.rank=8)",
    )
    p.add_argument("--name", default="", help="display name of the job")
    p.add_argument("--job-id", default="", help="job id to use")
    p.add_argument("--validate-only", action="store_true", help="check the settings only")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")

    p = add("jobs", "list and manage training jobs")
    jobs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    j = jobs.add_parser("list", help="list jobs", parents=[conn])
    j.add_argument("--state", action="append", default=[], help="only jobs in this state")
    j.add_argument("--base-model", default="", help="only jobs fine-tuning this model")
    j.add_argument("--limit", type=_positive, default=50, help="at most this many (0 = all)")
    for action, help_text in (
        ("get", "show a job"),
        ("cancel", "cancel a job"),
        ("resume", "resume a cancelled or failed job"),
        ("delete", "delete a finished job"),
        ("watch", "follow a job's progress until it ends"),
    ):
        j = jobs.add_parser(action, help=help_text, parents=[conn])
        j.add_argument("job_id")
        if action == "resume":
            j.add_argument("--steps", type=int, default=0, help="new total steps")
        if action == "delete":
            j.add_argument("--force", action="store_true", help="cancel it first if running")
        if action == "watch":
            j.add_argument("--logs", action="store_true", help="also print log lines")

    p = add("models", "list and manage models")
    models = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = models.add_parser("list", help="list models", parents=[conn])
    m.add_argument("--kind", default=None, choices=["base", "fine_tuned", "lora"])
    m.add_argument("--backend", default="", help="only models of this backend")
    m.add_argument("--base-model", default="", help="only models derived from this one")
    m.add_argument("--limit", type=_positive, default=50, help="at most this many (0 = all)")
    m = models.add_parser("get", help="show a model", parents=[conn])
    m.add_argument("model_id")
    m = models.add_parser("import", help="register a model", parents=[conn])
    m.add_argument("source", help="diffusers folder, .safetensors/.ckpt file or HF cache id")
    m.add_argument(
        "--type",
        dest="source_type",
        default="auto",
        choices=["auto", "diffusers", "single_file", "hf_cache"],
    )
    m.add_argument("--id", dest="model_id", default="", help="model id to register")
    m.add_argument("--name", default="", help="display name")
    m.add_argument("--kind", default=None, choices=["base", "fine_tuned", "lora"])
    m.add_argument("--architecture", default="", help="e.g. sd15")
    m.add_argument("--backend", default="", help="backend id")
    m.add_argument("--prediction-type", default=None, choices=["epsilon", "v_prediction", "sample"])
    m.add_argument("--trigger", default="", help="trigger phrase")
    m.add_argument("--base-model", default="", help="base model id (fine-tunes, LoRAs)")
    m.add_argument("--config-path", default="", help="diffusers folder with configs")
    m.add_argument("--revision", default="", help="HF cache revision")
    m.add_argument("--copy", action="store_true", help="copy the weights into the data dir")
    m.add_argument("--description", default="")
    m = models.add_parser("delete", help="remove a model", parents=[conn])
    m.add_argument("model_id")
    m.add_argument("--delete-files", action="store_true", help="also delete its files")

    p = add("samplers", "list samplers with their schedules and options")
    p.add_argument("--backend", default="", help="backend id")
    p.add_argument("--model", default="", help="samplers usable with this model")

    p = add("backends", "list generation backends")
    p.add_argument("--refresh", action="store_true", help="check reachability now")

    add("health", "show whether each service is serving")

    p = add("gallery", "browse, export and delete generated images")
    gal = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    g2 = gal.add_parser("list", help="list images, newest first", parents=[conn])
    g2.add_argument("--model", default="", help="only images of this model")
    g2.add_argument("--job", default="", help="only images of this generation job")
    g2.add_argument("--limit", type=_positive, default=50, help="at most this many (0 = all)")
    g2 = gal.add_parser("get", help="show an image's parameters", parents=[conn])
    g2.add_argument("image_id")
    g2.add_argument("-o", "--out", type=Path, default=None, help="also write the PNG here")
    g2 = gal.add_parser("export", help="write images as PNG files", parents=[conn])
    g2.add_argument("image_ids", nargs="+")
    g2.add_argument("-o", "--out", type=Path, default=Path("."), help="folder (default .)")
    g2 = gal.add_parser("delete", help="delete images", parents=[conn])
    g2.add_argument("image_ids", nargs="*")
    g2.add_argument("--job", default="", help="delete every image of this generation job")
    return parser


# ------------------------------------------------------------------------------ commands


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


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    missing = [m for m in ("services", "torch", "diffusers") if not _importable(m)]
    if missing:
        out.note(
            f"{PROG}: serve needs the services and their extra dependencies (missing: "
            f"{', '.join(missing)}); install them with: pip install 'boothstudio[services]'"
        )
        return EXIT_ERROR
    from shared import launcher

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


def generation_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {
        "negative_prompt": args.negative,
        "model_id": args.model,
        "backend_id": args.backend,
        "sampler": args.sampler,
        "schedule": args.schedule,
        "steps": args.steps,
        "cfg_scale": args.cfg,
        "width": args.width,
        "height": args.height,
        "seed": args.seed,
        "count": args.count,
        "preview_interval": args.preview_interval,
        "skip_gallery": args.no_gallery or None,
        "sampler_options": key_values(args.opt, "--opt") or None,
        "backend_options": key_values(args.backend_opt, "--backend-opt") or None,
    }
    if args.command == "edit":
        params.update(
            init_image=args.image,
            mask=args.mask,
            strength=args.strength,
            mask_blur=args.mask_blur,
            invert_mask=args.invert_mask or None,
            mask_fill=args.mask_fill,
        )
    return {k: v for k, v in params.items() if v is not None}


def show_generate_event(event: GenerateEvent, out: Output) -> None:
    if isinstance(event, Queued):
        out.status(f"queued (position {event.position}, {event.queue_depth} waiting)")
    elif isinstance(event, Started):
        out.status(
            f"started: {event.model_id} {event.sampler} {event.width}x{event.height} "
            f"{event.steps} steps, seeds {event.seeds}"
        )
    elif isinstance(event, Progress):
        imgs = (
            f" image {event.images_done + 1}/{event.images_total}" if event.images_total > 1 else ""
        )
        out.status(
            f"{bar(event.fraction)} step {event.step}/{event.total}{imgs} "
            f"ETA {fmt_seconds(event.eta)}"
        )
    elif isinstance(event, ImageReady):
        out.status(f"image {event.image.index} ready (seed {event.image.seed})")
    elif isinstance(event, WarningEvent):
        out.note(f"warning: {event.warning.message} [{event.warning.reason}]")
    elif isinstance(event, Finished):
        out.status(f"finished: {event.status.value} in {fmt_seconds(event.total_seconds)}")
        out.end_line()


def cmd_generate(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    params = generation_params(args)
    result = client.generate(args.prompt, on_event=lambda e: show_generate_event(e, out), **params)
    written = []
    for img in result:
        if not img.ok:
            out.note(f"image {img.index}: {img.finish_reason.value} {img.message}".rstrip())
            continue
        path = img.save(args.out / f"{args.prefix}{result.job_id}-{img.index}.png")
        written.append({"path": str(path), **to_jsonable(img)})
    if out.json:
        out.emit({"job_id": result.job_id, "seeds": result.seeds, "images": written})
    else:
        for w in written:
            out.print(w["path"])
        out.note(f"seeds: {', '.join(map(str, result.seeds))}")
    return EXIT_OK


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = training_settings(args.set)
    for key, value in (
        ("base_model_id", args.base_model),
        ("identifier", args.identifier),
        ("class_noun", args.class_noun),
        ("max_train_steps", args.steps),
        ("learning_rate", args.lr),
        ("seed", args.seed),
        ("resolution", args.resolution),
    ):
        if value is not None:
            opts[key] = value
    if args.lora:
        opts["method"] = "lora"
    if args.prior is not None or args.class_images is not None:
        prior = dict(opts.get("prior_preservation") or {})
        prior["enabled"] = args.prior if args.prior is not None else True
        if args.class_images is not None:
            prior["class_image_count"] = args.class_images
        opts["prior_preservation"] = prior
    return opts


def show_training_event(event: TrainingEvent, out: Output, logs: bool = True) -> None:
    if isinstance(event, StateChanged):
        if event.message:
            detail = (
                f" ({event.reason}: {event.message})" if event.reason else f" ({event.message})"
            )
        else:
            detail = f" ({event.reason})" if event.reason not in ("", "CURRENT") else ""
        out.note(f"state: {event.state.value}{detail}")
    elif isinstance(event, TrainingProgress):
        m = event.metrics
        prior = f" prior {m.prior_loss:.4f}" if m.prior_loss is not None else ""
        frac = m.step / m.total_steps if m.total_steps else 0.0
        out.status(
            f"{bar(frac)} step {m.step}/{m.total_steps} loss {m.loss:.4f}{prior} "
            f"lr {m.learning_rate:.2g} ETA {fmt_seconds(m.eta)}"
        )
    elif isinstance(event, ClassImagesProgress):
        out.status(f"class images {event.ready}/{event.total} ({event.cached} cached)")
    elif isinstance(event, SampleReady):
        out.note(f"sample at step {event.step}: {event.prompt!r} (seed {event.seed})")
    elif isinstance(event, CheckpointSaved):
        c = event.checkpoint
        out.note(f"checkpoint {c.checkpoint_id} at step {c.step} ({fmt_bytes(c.size_bytes)})")
    elif isinstance(event, TrainingWarning):
        out.note(f"warning: {event.warning.message} [{event.warning.reason}]")
    elif isinstance(event, LogMessage) and logs:
        out.note(f"{event.level.value}: {event.message}")


def print_job(job: TrainingJob, out: Output) -> None:
    if out.json:
        out.emit(job)
        return
    rows = [
        ("job", job.job_id),
        ("name", job.display_name),
        ("state", job.state.value),
        ("step", f"{job.step}/{job.total_steps}"),
        ("model", job.output_model_id or "-"),
        ("trigger", job.trigger_phrase or "-"),
        ("created", _cell(job.created_at or "-")),
        ("resumable", _cell(job.resumable)),
        ("images", job.instance_image_count),
    ]
    if job.last_metrics is not None:
        rows.append(("loss", f"{job.last_metrics.loss:.4f}"))
    if job.failure_reason or job.failure_message:
        rows.append(("failure", f"{job.failure_reason}: {job.failure_message}"))
    for w in job.warnings:
        rows.append(("warning", f"{w.message} [{w.reason}]"))
    for k, v in rows:
        out.print(f"{k + ':':<11}{v}")


def finish_training(job: TrainingJob, out: Output) -> int:
    if out.json:
        out.emit(job)
    elif job.state is TrainingState.SUCCEEDED:
        out.print(job.output_model_id)
        if job.trigger_phrase:
            out.note(f"trigger phrase: {job.trigger_phrase!r}")
    else:
        out.note(
            f"job {job.job_id} ended {job.state.value}"
            + (f": {job.failure_reason} {job.failure_message}" if job.failure_reason else "")
        )
    return EXIT_OK if job.state is TrainingState.SUCCEEDED else EXIT_ERROR


def follow(client: BoothStudio, job_id: str, out: Output, logs: bool) -> TrainingJob:
    return client.wait_for_training_job(
        job_id, raise_on_failure=False, on_event=lambda e: show_training_event(e, out, logs)
    )


def default_base_model(client: BoothStudio) -> str:
    """The catalog's built-in base model (else its first base model)."""
    models = client.list_models(kind="base", page_size=100).items
    if not models:
        raise UsageError("the catalog has no base model: import one or pass --base-model")
    return next((m for m in models if m.builtin), models[0]).id


def cmd_train(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    if (
        args.images is None
        and args.config is None
        and not any(s.startswith("dataset_id=") for s in args.set)
    ):
        raise UsageError("give a folder of images or --config FILE")
    options = train_options(args)
    from_file = cv.load_training_yaml(args.config).options if args.config is not None else {}
    cv.dreambooth_config({**from_file, **options})  # bad settings fail before any call
    if args.images is not None:
        cv.image_files(args.images)
    if not options.get("base_model_id") and not from_file.get("base_model_id"):
        options["base_model_id"] = default_base_model(client)
        out.note(f"fine-tuning the default model {options['base_model_id']}")
    job = client.create_training_job(
        args.images,
        config=args.config,
        display_name=args.name,
        job_id=args.job_id,
        validate_only=args.validate_only,
        **options,
    )
    if args.validate_only:
        if out.json:
            out.emit(job)
        else:
            out.note("settings are valid")
            print_job(job, out)
        return EXIT_OK
    out.note(f"created job {job.job_id} ({job.state.value})")
    for w in job.warnings:
        out.note(f"warning: {w.message} [{w.reason}]")
    if args.no_wait:
        if out.json:
            out.emit(job)
        else:
            out.print(job.job_id)
        return EXIT_OK
    return finish_training(follow(client, job.job_id, out, logs=False), out)


def paged(fetch: Callable[[str, int], Page[Any]], limit: int) -> list[Any]:
    items: list[Any] = []
    token = ""
    while True:
        page = fetch(token, min(limit - len(items), 1000) if limit else 1000)
        items.extend(page.items)
        token = page.next_page_token
        if not token or (limit and len(items) >= limit):
            return items[:limit] if limit else items


def cmd_jobs(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    if args.action == "list":
        jobs = paged(
            lambda t, n: client.list_training_jobs(
                page_size=n, page_token=t, states=args.state, base_model_id=args.base_model
            ),
            args.limit,
        )
        if out.json:
            out.emit(jobs)
        else:
            out.table(
                [
                    (
                        j.job_id,
                        j.state,
                        f"{j.step}/{j.total_steps}",
                        j.display_name,
                        j.output_model_id or "-",
                        j.created_at or "-",
                    )
                    for j in jobs
                ],
                ["JOB", "STATE", "STEP", "NAME", "MODEL", "CREATED"],
            )
        return EXIT_OK
    if args.action == "get":
        print_job(client.get_training_job(args.job_id), out)
    elif args.action == "cancel":
        print_job(client.cancel_training_job(args.job_id), out)
    elif args.action == "resume":
        print_job(client.resume_training_job(args.job_id, max_train_steps=args.steps), out)
    elif args.action == "delete":
        freed = client.delete_training_job(args.job_id, force=args.force)
        if out.json:
            out.emit({"job_id": args.job_id, "freed_bytes": freed})
        else:
            out.print(f"deleted {args.job_id} ({fmt_bytes(freed)} freed)")
    elif args.action == "watch":
        return finish_training(follow(client, args.job_id, out, logs=args.logs), out)
    return EXIT_OK


def print_model(model: Any, out: Output) -> None:
    if out.json:
        out.emit(model)
        return
    for f in (
        "id",
        "display_name",
        "kind",
        "backend_id",
        "architecture",
        "native_resolution",
        "prediction_type",
        "format",
        "base_model_id",
        "training_job_id",
        "trigger_phrase",
        "source_path",
        "config_path",
        "size_bytes",
        "builtin",
        "inpainting",
        "created_at",
        "description",
    ):
        value = getattr(model, f)
        if value in ("", None, 0) and f not in ("builtin",):
            continue
        out.print(f"{f + ':':<19}{fmt_bytes(value) if f == 'size_bytes' else _cell(value)}")
    for w in model.warnings:
        out.note(f"warning: {w.message} [{w.reason}]")


def cmd_models(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    if args.action == "list":
        models = paged(
            lambda t, n: client.list_models(
                page_size=n,
                page_token=t,
                kind=args.kind,
                backend_id=args.backend,
                base_model_id=args.base_model,
            ),
            args.limit,
        )
        if out.json:
            out.emit(models)
        else:
            out.table(
                [
                    (
                        m.id,
                        m.kind,
                        m.architecture,
                        m.native_resolution,
                        m.backend_id,
                        m.display_name,
                    )
                    for m in models
                ],
                ["ID", "KIND", "ARCH", "RES", "BACKEND", "NAME"],
            )
    elif args.action == "get":
        print_model(client.get_model(args.model_id), out)
    elif args.action == "import":
        model = client.import_model(
            args.source,
            source_type=args.source_type,
            model_id=args.model_id,
            display_name=args.name,
            kind=args.kind,
            architecture=args.architecture,
            backend_id=args.backend,
            prediction_type=args.prediction_type,
            trigger_phrase=args.trigger,
            base_model_id=args.base_model,
            config_path=args.config_path,
            hf_revision=args.revision,
            copy_files=args.copy,
            description=args.description,
        )
        print_model(model, out)
    elif args.action == "delete":
        freed = client.delete_model(args.model_id, delete_files=args.delete_files)
        if out.json:
            out.emit({"model_id": args.model_id, "freed_bytes": freed})
        else:
            out.print(f"deleted {args.model_id} ({fmt_bytes(freed)} freed)")
    return EXIT_OK


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
                lo = "" if p.min is None else _cell(p.min)
                hi = "" if p.max is None else _cell(p.max)
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


def cmd_gallery(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    if args.action == "list":
        images = paged(
            lambda t, n: client.list_images(
                page_size=n, page_token=t, model_id=args.model, job_id=args.job
            ),
            args.limit,
        )
        if out.json:
            out.emit(images)
        else:
            out.table(
                [
                    (
                        i.image_id,
                        i.created_at or "-",
                        f"{i.width}x{i.height}",
                        i.seed,
                        i.model_id,
                        i.prompt[:40],
                    )
                    for i in images
                ],
                ["IMAGE", "CREATED", "SIZE", "SEED", "MODEL", "PROMPT"],
            )
    elif args.action == "get":
        img = client.get_image(args.image_id, metadata_only=args.out is None)
        path = img.save(args.out) if args.out is not None else None
        if out.json:
            out.emit({**to_jsonable(img), "path": str(path) if path else None})
        else:
            out.print(img.parameters_text or f"{img.prompt}\nSeed: {img.seed}")
            if path:
                out.note(f"wrote {path}")
    elif args.action == "export":
        written = []
        for image_id in args.image_ids:
            img = client.get_image(image_id)
            written.append(str(img.save(args.out / f"{image_id}.png")))
        if out.json:
            out.emit(written)
        else:
            for w in written:
                out.print(w)
    elif args.action == "delete":
        if not args.image_ids and not args.job:
            raise UsageError("give image ids or --job JOB_ID")
        result = client.delete_images(args.image_ids, job_id=args.job)
        if out.json:
            out.emit(result)
        else:
            out.print(f"deleted {result.deleted_count} image(s)")
            if result.not_found_ids:
                out.note(f"not found: {', '.join(result.not_found_ids)}")
        if result.not_found_ids and not result.deleted_count:
            return EXIT_NOT_FOUND
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Output, BoothStudio], int]] = {
    "generate": cmd_generate,
    "edit": cmd_generate,
    "train": cmd_train,
    "jobs": cmd_jobs,
    "models": cmd_models,
    "samplers": cmd_samplers,
    "backends": cmd_backends,
    "health": cmd_health,
    "gallery": cmd_gallery,
}


def report_error(exc: BoothStudioError, out: Output) -> int:
    code, label = exit_code_for(exc)
    message = exc.message
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
        if args.command == "serve":
            return cmd_serve(args, out)
        with make_client(args) as client:
            return COMMANDS[args.command](args, out, client)
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


def run() -> None:
    """Console-script entry point."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    run()
