"""`boothstudio gallery`: list generated images, show one's parameters, export PNGs, delete."""

from __future__ import annotations

import argparse
from pathlib import Path

from boothstudio.clients.sdk.cli.arguments import Commands, add_limit, paged
from boothstudio.clients.sdk.cli.exits import EXIT_NOT_FOUND, EXIT_OK, UsageError
from boothstudio.clients.sdk.cli.output import Output, to_jsonable
from boothstudio.clients.sdk.client import BoothStudio


def register(commands: Commands) -> None:
    gallery = commands.group("gallery", "browse, export and delete generated images")
    g = gallery.add("list", "list images, newest first")
    g.add_argument("--model", default="", help="only images of this model")
    g.add_argument("--job", default="", help="only images of this generation job")
    add_limit(g)
    g.set_defaults(func=list_images)
    g = gallery.add("get", "show an image's parameters")
    g.add_argument("image_id")
    g.add_argument("-o", "--out", type=Path, default=None, help="also write the PNG here")
    g.set_defaults(func=get_image)
    g = gallery.add("export", "write images as PNG files")
    g.add_argument("image_ids", nargs="+")
    g.add_argument("-o", "--out", type=Path, default=Path("."), help="folder (default .)")
    g.set_defaults(func=export_images)
    g = gallery.add("delete", "delete images")
    g.add_argument("image_ids", nargs="*")
    g.add_argument("--job", default="", help="delete every image of this generation job")
    g.set_defaults(func=delete_images)


def list_images(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
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
    return EXIT_OK


def get_image(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    img = client.get_image(args.image_id, metadata_only=args.out is None)
    path = img.save(args.out) if args.out is not None else None
    if out.json:
        out.emit({**to_jsonable(img), "path": str(path) if path else None})
    else:
        out.print(img.parameters_text or f"{img.prompt}\nSeed: {img.seed}")
        if path:
            out.note(f"wrote {path}")
    return EXIT_OK


def export_images(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    written = []
    for image_id in args.image_ids:
        img = client.get_image(image_id)
        written.append(str(img.save(args.out / f"{image_id}.png")))
    if out.json:
        out.emit(written)
    else:
        for w in written:
            out.print(w)
    return EXIT_OK


def delete_images(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
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
