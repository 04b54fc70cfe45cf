"""`boothstudio models`: list, show, import and delete the catalog's models, and save a
model's preview picture."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from boothstudio.clients.sdk.cli.arguments import Commands, add_limit, paged
from boothstudio.clients.sdk.cli.exits import EXIT_OK
from boothstudio.clients.sdk.cli.output import Output, cell
from boothstudio.clients.sdk.client import BoothStudio
from boothstudio.clients.sdk.text import human_bytes

KINDS = ["base", "fine_tuned", "lora", "embedding"]


def register(commands: Commands) -> None:
    models = commands.group("models", "list and manage models")
    m = models.add("list", "list models")
    m.add_argument("--kind", default=None, choices=KINDS)
    m.add_argument("--backend", default="", help="only models of this backend")
    m.add_argument("--base-model", default="", help="only models derived from this one")
    add_limit(m)
    m.set_defaults(func=list_models)
    m = models.add("get", "show a model")
    m.add_argument("model_id")
    m.set_defaults(func=get_model)
    m = models.add("import", "register a model")
    m.add_argument("source", help="diffusers folder, .safetensors/.ckpt file or HF cache id; "
                   "with --kind embedding a textual-inversion .pt/.safetensors file")
    m.add_argument(
        "--type",
        dest="source_type",
        default="auto",
        choices=["auto", "diffusers", "single_file", "hf_cache"],
    )
    m.add_argument("--id", dest="model_id", default="", help="model id to register")
    m.add_argument("--name", default="", help="display name")
    m.add_argument("--kind", default=None, choices=KINDS)
    m.add_argument("--architecture", default="", help="e.g. sd15")
    m.add_argument("--backend", default="", help="backend id")
    m.add_argument("--prediction-type", default=None, choices=["epsilon", "v_prediction", "sample"])
    m.add_argument("--trigger", default="", help="trigger phrase")
    m.add_argument("--base-model", default="",
                   help="base model id (fine-tunes, LoRAs; an embedding's widths are checked "
                   "against its text encoders)")
    m.add_argument("--config-path", default="", help="diffusers folder with configs")
    m.add_argument("--revision", default="", help="HF cache revision")
    m.add_argument("--copy", action="store_true", help="copy the weights into the data dir")
    m.add_argument("--description", default="")
    m.add_argument("--preview", default="", help="a picture to show for the model (PNG, JPEG "
                   "or WebP); a LoRA without one takes the thumbnail in its file or a "
                   "<name>.preview.png beside it")
    m.set_defaults(func=import_model)
    m = models.add("preview", "save a model's preview picture (PNG, at most 512 px a side)")
    m.add_argument("model_id")
    m.add_argument("-o", "--out", type=Path, default=None,
                   help="the PNG file to write (default <model_id>.png)")
    m.set_defaults(func=save_preview)
    m = models.add("delete", "remove a model")
    m.add_argument("model_id")
    m.add_argument("--delete-files", action="store_true", help="also delete its files")
    m.set_defaults(func=delete_model)


def list_models(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
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
                    m.embedding_vectors or "",
                    m.display_name,
                )
                for m in models
            ],
            ["ID", "KIND", "ARCH", "RES", "BACKEND", "TOKENS", "NAME"],
        )
    return EXIT_OK


def get_model(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    print_model(client.get_model(args.model_id), out)
    return EXIT_OK


def import_model(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
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
        preview=args.preview or None,
    )
    print_model(model, out)
    return EXIT_OK


def save_preview(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    png = client.get_model_preview(args.model_id)
    path = args.out if args.out is not None else Path(f"{args.model_id}.png")
    path.write_bytes(png)
    if out.json:
        out.emit({"model_id": args.model_id, "path": str(path), "bytes": len(png)})
    else:
        out.print(str(path))
    return EXIT_OK


def delete_model(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    freed = client.delete_model(args.model_id, delete_files=args.delete_files)
    if out.json:
        out.emit({"model_id": args.model_id, "freed_bytes": freed})
    else:
        out.print(f"deleted {args.model_id} ({human_bytes(freed)} freed)")
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
        "embedding_vectors",
        "embedding_widths",
        "has_preview",
        "created_at",
        "description",
    ):
        value = getattr(model, f)
        if value in ("", None, 0, []) and f not in ("builtin",):
            continue
        out.print(f"{f + ':':<19}{human_bytes(value) if f == 'size_bytes' else cell(value)}")
    for w in model.warnings:
        out.note(f"warning: {w.message} [{w.reason}]")
