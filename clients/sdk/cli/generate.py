"""`boothstudio generate` and `boothstudio edit`: images from a prompt (and, for edit, an image and
a mask, or sides to outpaint), with progress on stderr and the PNGs written to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from boothstudio.clients.sdk.cli.arguments import Commands, key_values
from boothstudio.clients.sdk.cli.exits import EXIT_OK
from boothstudio.clients.sdk.cli.output import Output, bar, fmt_bytes, fmt_seconds, to_jsonable
from boothstudio.clients.sdk.client import BoothStudio
from boothstudio.clients.sdk.types import (
    HIRES_UPSCALERS,
    Finished,
    GenerateEvent,
    ImageReady,
    ModelDownload,
    Progress,
    Queued,
    Started,
    WarningEvent,
)

OUTPAINT_KEYS = ("left", "right", "top", "bottom", "feather")


def register(commands: Commands) -> None:
    gen = generation_parent()
    p = commands.add("generate", "generate images from a prompt and write PNGs", [gen])
    p.add_argument("prompt", help="what to draw")
    h = p.add_argument_group("hires fix (any of these turns it on)")
    h.add_argument("--hires", action="store_true",
                   help="draw at the model's size first, enlarge, then redraw at --width x "
                   "--height")
    h.add_argument("--hires-upscaler", default=None, choices=HIRES_UPSCALERS,
                   help="how the first pass is enlarged (default: latent)")
    h.add_argument("--hires-steps", type=int, default=None,
                   help="steps of the second pass (default: as --steps)")
    h.add_argument("--hires-strength", type=float, default=None,
                   help="denoising strength of the second pass, 0..1 (default 0.5)")
    h.add_argument("--hires-first-pass", type=first_pass_size, default=None, metavar="WxH",
                   help="size of the first pass (default: the output scaled down to the "
                   "model's native size)")
    p.set_defaults(func=cmd_generate)

    p = commands.add("edit", "img2img, inpainting or outpainting from image files", [gen])
    p.add_argument("image", type=Path, help="the starting image")
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--mask", type=Path, default=None, help="mask image: white = repaint")
    p.add_argument("--strength", type=float, default=None, help="how much to change, 0..1")
    p.add_argument("--mask-blur", type=int, default=None, help="mask blur radius in pixels")
    p.add_argument("--invert-mask", action="store_true", help="repaint the black area instead")
    p.add_argument(
        "--mask-fill", default=None, choices=["fill", "original", "latent_noise", "latent_nothing"]
    )
    p.add_argument(
        "--outpaint", type=outpaint_sides, default=None, metavar="SIDE=PIXELS,...",
        help="extend the canvas, e.g. left=32,top=16 (sides: left, right, top, bottom; "
        "feather=N: pixels of the original the seam overlaps); the output is the larger canvas, "
        "rounded up to multiples of 8",
    )
    p.set_defaults(func=cmd_generate)


def outpaint_sides(text: str) -> dict[str, int]:
    """`left=32,top=16` -> {"left": 32, "top": 16}; errors name the option and the side."""
    sides: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in OUTPAINT_KEYS:
            raise argparse.ArgumentTypeError(
                f"expected SIDE=PIXELS with SIDE one of {', '.join(OUTPAINT_KEYS)}, got {item!r}")
        if key in sides:
            raise argparse.ArgumentTypeError(f"{key} given twice")
        try:
            sides[key] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{key} expects a whole number of pixels, got {value!r}") from None
        if sides[key] < 0:
            raise argparse.ArgumentTypeError(f"{key} must be >= 0 pixels, got {sides[key]}")
    if not any(sides.get(side) for side in OUTPAINT_KEYS[:4]):
        raise argparse.ArgumentTypeError("extend at least one side, e.g. left=32")
    return sides


def first_pass_size(text: str) -> tuple[int, int]:
    """`64x64` -> (64, 64)."""
    width, sep, height = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None


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
        "--priority", choices=["interactive", "batch"], default=None,
        help="queue priority: batch jobs wait while interactive ones do (default: interactive)",
    )
    g.add_argument(
        "--lora", action="append", default=[], metavar="MODEL_ID[:WEIGHT]",
        help="apply a LoRA model at a weight (default 1), repeatable; as <lora:MODEL_ID:WEIGHT> "
        "in the prompt",
    )
    g.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("."),
        help="folder to write the PNGs to (default: current folder)",
    )
    g.add_argument(
        "--prefix",
        default="",
        help="file name prefix: PREFIX-JOB-N.png (default: JOB-N.png, N counted from 0)",
    )
    return p


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
        "priority": args.priority,
        "loras": args.lora or None,
        "sampler_options": key_values(args.opt, "--opt") or None,
        "backend_options": key_values(args.backend_opt, "--backend-opt") or None,
    }
    if args.command == "generate":
        params["hires"] = hires_params(args)
    if args.command == "edit":
        params.update(
            init_image=args.image,
            mask=args.mask,
            strength=args.strength,
            mask_blur=args.mask_blur,
            invert_mask=args.invert_mask or None,
            mask_fill=args.mask_fill,
            outpaint=args.outpaint,
        )
    return {k: v for k, v in params.items() if v is not None}


def hires_params(args: argparse.Namespace) -> dict[str, Any] | None:
    """The hires fix fields asked for on the command line (None: hires fix off)."""
    first_w, first_h = args.hires_first_pass or (None, None)
    fields = {
        "upscaler": args.hires_upscaler,
        "steps": args.hires_steps,
        "denoising_strength": args.hires_strength,
        "first_pass_width": first_w,
        "first_pass_height": first_h,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    return fields if args.hires or fields else None


def show_generate_event(event: GenerateEvent, out: Output) -> None:
    if isinstance(event, Queued):
        out.status(f"queued (position {event.position}, {event.queue_depth} waiting)")
    elif isinstance(event, Started):
        out.status(
            f"started: {event.model_id} {event.sampler} {event.width}x{event.height} "
            f"{event.steps} steps, seeds {event.seeds}"
        )
    elif isinstance(event, ModelDownload):
        out.status(
            f"{bar(event.fraction)} downloading model {event.fraction:.0%} "
            f"({fmt_bytes(event.bytes_done)} of {fmt_bytes(event.bytes_total)})"
        )
    elif isinstance(event, Progress):
        imgs = (
            f" image {event.images_done + 1}/{event.images_total}" if event.images_total > 1 else ""
        )
        out.status(
            f"{bar(event.fraction)} step {event.step}/{event.total}{imgs} "
            f"ETA {fmt_seconds(event.eta)}"
        )
    elif isinstance(event, ImageReady):  # counted from 1 like the progress line
        out.status(f"image {event.image.index + 1} ready (seed {event.image.seed})")
    elif isinstance(event, WarningEvent):
        out.note(f"warning: {event.warning.message} [{event.warning.reason}]")
    elif isinstance(event, Finished):
        out.status(f"finished: {event.status.value} in {fmt_seconds(event.total_seconds)}")
        out.end_line()


def output_name(prefix: str, job_id: str, index: int) -> str:
    """``JOB-N.png``, or ``PREFIX-JOB-N.png`` (no second separator after one the prefix ends
    with)."""
    if prefix and not prefix.endswith(("-", "_", ".")):
        prefix += "-"
    return f"{prefix}{job_id}-{index}.png"


def cmd_generate(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    params = generation_params(args)
    result = client.generate(args.prompt, on_event=lambda e: show_generate_event(e, out), **params)
    written = []
    for img in result:
        if not img.ok:
            out.note(f"image {img.index}: {img.finish_reason.value} {img.message}".rstrip())
            continue
        path = img.save(args.out / output_name(args.prefix, result.job_id, img.index))
        written.append({"path": str(path), **to_jsonable(img)})
    if out.json:
        out.emit({"job_id": result.job_id, "seeds": result.seeds, "images": written})
    else:
        for w in written:
            out.print(w["path"])
        out.note(f"seeds: {', '.join(map(str, result.seeds))}")
    return EXIT_OK
