"""`boothstudio train`: a DreamBooth job from a folder of images and/or a YAML file, followed until
it ends (prints the model id) or, with --no-wait, left running (prints the job id)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from boothstudio.clients.sdk import _convert as cv
from boothstudio.clients.sdk.cli.arguments import Commands
from boothstudio.clients.sdk.cli.exits import EXIT_OK, UsageError
from boothstudio.clients.sdk.cli.jobs import finish_training, follow, print_job
from boothstudio.clients.sdk.cli.output import Output
from boothstudio.clients.sdk.client import BoothStudio
from boothstudio.clients.sdk.concepts import kohya_concepts, settings_only
from boothstudio.clients.sdk.errors import invalid
from boothstudio.shared.job_file import PictureEntryError, PictureReader


def register(commands: Commands) -> None:
    p = commands.add("train", "create a DreamBooth job from a folder of images or a YAML file")
    p.add_argument("images", nargs="?", type=Path, default=None, help="folder of instance images")
    p.add_argument("--config", type=Path, default=None, help="training YAML file")
    p.add_argument(
        "--kohya",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="several concepts from a kohya-style folder: one '<repeats>_<identifier> <class>' "
        "subfolder of pictures (and .txt captions) per concept",
    )
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
        "--min-snr-gamma", type=float, default=None, help="min-SNR-gamma loss weighting, e.g. 5"
    )
    p.add_argument("--offset-noise", type=float, default=None, help="offset noise, e.g. 0.05")
    p.add_argument(
        "--aspect-buckets",
        action="store_true",
        default=None,
        help="train non-square pictures at their aspect ratio",
    )
    p.add_argument(
        "--validation-scorer",
        default=None,
        metavar="MODULE:NAME",
        help="score every checkpoint on the validation prompts with this scorer",
    )
    p.add_argument(
        "--export-best",
        action="store_true",
        default=None,
        help="export the best scored checkpoint instead of the last",
    )
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
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    if (
        args.images is None
        and args.config is None
        and args.kohya is None
        and not any(s.startswith("dataset_id=") for s in args.set)
    ):
        raise UsageError("give a folder of images, --kohya FOLDER or --config FILE")
    options = train_options(args)
    if args.kohya is not None:
        options["concepts"] = kohya_concepts(args.kohya)
    spec = cv.TrainingSpec()
    if args.config is not None:
        spec = cv.load_training_yaml(args.config)
        read_job_file_pictures(spec.options, args.config.parent)
    from_file = spec.options
    cv.dreambooth_config(settings_only({**from_file, **options}))  # fail before any call
    images = args.images if args.images is not None else spec.images
    if images is not None:
        cv.image_files(images)
    if not options.get("base_model_id") and not from_file.get("base_model_id"):
        options["base_model_id"] = default_base_model(client)
        out.note(f"fine-tuning the default model {options['base_model_id']}")
    job = client.create_training_job(
        images,
        config=from_file,
        display_name=args.name or spec.display_name,
        job_id=args.job_id or spec.job_id,
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
        ("min_snr_gamma", args.min_snr_gamma),
        ("offset_noise", args.offset_noise),
        ("aspect_buckets", args.aspect_buckets),
        ("validation_scorer", args.validation_scorer),
        ("export_best_checkpoint", args.export_best),
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


def read_job_file_pictures(options: dict[str, Any], base: Path) -> None:
    """A job folder's config.yaml (the trainer's job file) lists the job's pictures, and each
    concept's, as paths relative to the file, or mappings {path, filename, caption}
    (shared.job_file): they are read here into inline instance images, under their file names
    in the job, so that the job made from the file is the same job."""
    reader = PictureReader(base)

    def read(entries: Any, where: str) -> list[Any]:
        if not isinstance(entries, list):
            raise invalid(where, "expected a list of image paths")
        out: list[Any] = []
        for i, entry in enumerate(entries):
            if isinstance(entry, Mapping) and "path" not in entry:
                out.append(entry)  # already an inline image (data, filename, caption)
                continue
            try:
                picture = reader.read(entry, f"{where}[{i}]")
            except PictureEntryError as exc:
                raise invalid(exc.where, exc.message) from None
            out.append({"data": picture.data, "filename": picture.filename,
                        "caption": picture.caption})
        return out

    if options.get("instance_images"):
        options["instance_images"] = read(options["instance_images"], "config.instance_images")
    for i, concept in enumerate(options.get("concepts") or []):
        if isinstance(concept, dict) and concept.get("instance_images"):
            concept["instance_images"] = read(concept["instance_images"],
                                              f"config.concepts[{i}].instance_images")


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


def default_base_model(client: BoothStudio) -> str:
    """The catalog's built-in base model (else its first base model)."""
    models = client.list_models(kind="base", page_size=100).items
    if not models:
        raise UsageError("the catalog has no base model: import one or pass --base-model")
    return next((m for m in models if m.builtin), models[0]).id
