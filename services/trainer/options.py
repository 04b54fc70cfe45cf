"""Validate a DreamBoothConfig and resolve its defaults (no torch: runs in the service).

`resolve(config, ...)` returns the resolved config (identifier picked, seed fixed, every zero
value replaced by the default it stands for; image bytes dropped) plus warnings, or raises
`InvalidArgument` naming every bad field as a dotted path ("config.max_train_steps",
"config.instance_images[2].data").
"""

from __future__ import annotations

import importlib.util
import io
import math
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boothstudio.v1 import trainer_pb2
from services.trainer.identifiers import (
    IDENTIFIER_RE,
    Vocabulary,
    identifier_warnings,
    pick_identifier,
)
from shared.errors import FieldViolation, InvalidArgument

P = trainer_pb2
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
ACCELERATORS = ("", "auto", "cpu", "gpu", "cuda")
DEFAULT_STEPS = 400
MAX_STEPS = 100_000


@dataclass
class Limits:
    """Service-side limits (trainer options)."""

    max_instance_images: int = 32
    max_image_bytes: int = 16 * 1024 * 1024
    max_class_images: int = 2000
    max_validation_prompts: int = 16
    max_validation_seeds: int = 16
    gpu_available: bool = False
    cpu_count: int = 1


@dataclass
class Resolved:
    config: trainer_pb2.DreamBoothConfig
    warnings: list[tuple[str, str, str]] = field(default_factory=list)  # reason, message, field
    trigger_phrase: str = ""
    images: list[tuple[bytes, str, str]] = field(default_factory=list)  # data, filename, caption


def check_image(data: bytes, limit: int) -> tuple[int, int] | str:
    """(width, height) of a decodable image, or why it is not one."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty image"
    if len(data) > limit:
        return f"image is {len(data)} bytes, more than the limit of {limit}"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.width < 8 or img.height < 8:
                return f"image is only {img.width}x{img.height} pixels"
            return img.width, img.height
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"not a readable image ({type(exc).__name__}: {exc})"


def has_alpha(img: Any) -> bool:
    """Whether a PIL image carries transparency (an alpha band or a transparent palette entry)."""
    return "A" in img.getbands() or "transparency" in img.info


def alpha_share(data: bytes) -> float | None:
    """Share of opaque pixels (alpha >= 128) of an image, or None when it has no alpha."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if not has_alpha(img):
            return None
        alpha = img.convert("RGBA").getchannel("A")
        return sum(alpha.point(lambda a: 255 if a >= 128 else 0).histogram()[255:]) / (
            img.width * img.height)


def _fmt(template: str, identifier: str, class_noun: str) -> str:
    return string.Formatter().vformat(template, (), {"identifier": identifier,
                                                     "class_noun": class_noun})


def resolve(config: trainer_pb2.DreamBoothConfig, *, base_model: dict, limits: Limits,
            vocab: Vocabulary | None = None,
            dataset_images: list[tuple[bytes, str, str]] | None = None) -> Resolved:
    """Validate `config` (every problem at once) and fill in defaults."""
    bad: list[FieldViolation] = []
    warnings: list[tuple[str, str, str]] = []

    def violation(name: str, description: str) -> None:
        bad.append(FieldViolation(f"config.{name}", description))

    c = trainer_pb2.DreamBoothConfig()
    c.CopyFrom(config)

    # -- images
    images: list[tuple[bytes, str, str]] = []
    if c.instance_images and c.dataset_id:
        violation("dataset_id", "give instance_images or dataset_id, not both")
    if dataset_images is not None:
        images = list(dataset_images)
    unreadable: set[int] = set()  # (uploaded datasets were checked on upload)
    for i, img in enumerate(c.instance_images):
        checked = check_image(img.data, limits.max_image_bytes)
        if isinstance(checked, str):
            violation(f"instance_images[{i}].data", checked)
            unreadable.add(len(images))
        name = Path(img.filename).name if img.filename else f"image-{i:03d}.png"
        images.append((img.data, name, img.caption))
    if not images and not c.dataset_id:
        violation("instance_images",
                  "at least one instance image is required (DreamBooth works best with 3-5)")
    elif dataset_images is not None and not images:
        violation("dataset_id", "the dataset holds no images")
    if len(images) > limits.max_instance_images:
        violation("instance_images", f"{len(images)} images is more than the limit of "
                  f"{limits.max_instance_images} (DreamBooth needs 3-5)")
    names = [n for _, n, _ in images]
    if len(set(names)) != len(names):
        violation("instance_images", "file names must be unique")
    c.ClearField("instance_images")

    # -- model
    if not c.base_model_id:
        violation("base_model_id", "required: the Catalog id of the model to fine-tune")

    # -- identifier, prompts
    if c.class_noun and not c.class_noun.strip():
        violation("class_noun", "must not be blank")
    class_noun = c.class_noun.strip()
    if c.identifier:
        if not IDENTIFIER_RE.match(c.identifier.lower()):
            violation("identifier", "must be one word of letters, digits, '-' or '_' "
                      "(at most 32 characters)")
        else:
            for reason, message in identifier_warnings(c.identifier, vocab, class_noun):
                warnings.append((reason, message, "config.identifier"))
        identifier = c.identifier.lower()
    else:
        avoid = {class_noun.lower()} | {w.lower() for w in c.instance_prompt.split()}
        identifier = pick_identifier(vocab, avoid)
        warnings.append(("IDENTIFIER_CHOSEN",
                         f"identifier {identifier!r} chosen (a single rare token)",
                         "config.identifier"))
    c.identifier = identifier
    if not class_noun and not c.instance_prompt:
        violation("class_noun", "required (e.g. 'dog'): DreamBooth binds the identifier to a "
                  "class; without it subject fidelity collapses")
    template = c.instance_prompt or "a {identifier} {class_noun}"
    try:
        instance_prompt = " ".join(_fmt(template, identifier, class_noun).split())
    except (KeyError, IndexError, ValueError) as exc:
        violation("instance_prompt", f"bad template ({exc}); use {{identifier}} and "
                  "{class_noun}")
        instance_prompt = template
    if identifier not in instance_prompt.lower().split():
        violation("instance_prompt", f"must contain the identifier {identifier!r} "
                  "(or {identifier})")
    c.instance_prompt = instance_prompt
    prior = c.prior_preservation

    def class_text(template: str, field_name: str, empty: str, checked: bool) -> str | None:
        """A class prompt template filled in, or None when it is not a template."""
        try:
            text = " ".join(_fmt(template, identifier, class_noun).split())
        except (KeyError, IndexError, ValueError) as exc:
            violation(field_name, f"bad template ({exc})")
            return None
        if checked and not text:
            violation(field_name, empty)
        elif checked and identifier in text.lower().split():
            violation(field_name, "must not contain the identifier")
        return text

    default_class = c.class_prompt or (f"a {class_noun}" if class_noun else "")
    filled = class_text(default_class, "class_prompt",
                        "prior preservation needs a class prompt or class noun", prior.enabled)
    c.class_prompt = default_class if filled is None else filled
    extra = [class_text(t, f"prior_preservation.class_prompts[{i}]", "must not be empty", True)
             for i, t in enumerate(prior.class_prompts)]
    del prior.class_prompts[:]
    prior.class_prompts.extend(t for t in extra if t is not None)

    # -- steps and optimisation
    if c.HasField("max_train_steps"):
        if not 1 <= c.max_train_steps <= MAX_STEPS:
            violation("max_train_steps", f"must be between 1 and {MAX_STEPS}, "
                      f"got {c.max_train_steps}")
    else:
        c.max_train_steps = DEFAULT_STEPS
    lora = c.method == P.TRAINING_METHOD_LORA
    if c.method not in P.TrainingMethod.values():
        violation("method", f"unknown method {c.method}")
    c.method = P.TRAINING_METHOD_LORA if lora else P.TRAINING_METHOD_FULL
    if not 0 <= c.learning_rate <= 1:
        violation("learning_rate", f"must be in (0, 1], got {c.learning_rate}")
    c.learning_rate = c.learning_rate or (1e-4 if lora else 5e-6)
    if c.HasField("text_encoder_learning_rate") and not 0 < c.text_encoder_learning_rate <= 1:
        violation("text_encoder_learning_rate", "must be in (0, 1]")
    c.lr_scheduler = c.lr_scheduler or "constant"
    if c.lr_scheduler not in LR_SCHEDULERS:
        violation("lr_scheduler", f"unknown scheduler {c.lr_scheduler!r}; one of "
                  f"{list(LR_SCHEDULERS)}")
    if c.lr_warmup_steps < 0 or c.lr_warmup_steps > c.max_train_steps:
        violation("lr_warmup_steps", "must be between 0 and max_train_steps")
    if not 0 <= c.batch_size <= 64:
        violation("batch_size", "must be between 0 and 64 (0 = 1)")
    c.batch_size = c.batch_size or 1
    if not 0 <= c.gradient_accumulation_steps <= 1024:
        violation("gradient_accumulation_steps", "must be between 0 and 1024 (0 = 1)")
    c.gradient_accumulation_steps = c.gradient_accumulation_steps or 1
    if not (math.isfinite(c.caption_dropout) and 0 <= c.caption_dropout < 1):
        violation("caption_dropout", f"must be in [0, 1), got {c.caption_dropout:g}")
    if not (c.random_crop_scale == 0 or 0.25 <= c.random_crop_scale <= 1):
        violation("random_crop_scale", f"must be 0 (off) or in [0.25, 1], got "
                  f"{c.random_crop_scale:g}")
    if c.HasField("masked_loss_background_weight"):
        w = c.masked_loss_background_weight
        if not (math.isfinite(w) and 0 <= w <= 1):
            violation("masked_loss_background_weight", f"must be in [0, 1], got {w:g}")
        masks = [None if i in unreadable else alpha_share(data)
                 for i, (data, _, _) in enumerate(images)]
        for i, share in enumerate(masks):
            if share == 0:
                where = f"instance_images[{i}].data" if config.instance_images else "dataset_id"
                violation(where, f"{names[i]}: the alpha channel is fully transparent, so "
                          "masked training would learn nothing from it")
        if images and all(share is None for share in masks):
            warnings.append(("NO_MASKS", "no instance image has an alpha channel: masked "
                             "training has nothing to mask and trains on whole pictures",
                             "config.masked_loss_background_weight"))
    if not (math.isfinite(c.identifier_learning_rate) and 0 <= c.identifier_learning_rate <= 1):
        violation("identifier_learning_rate",
                  f"must be in [0, 1] (0 = off), got {c.identifier_learning_rate:g}")
    elif c.identifier_learning_rate and lora:
        violation("identifier_learning_rate", "applies to full fine-tunes only: a LoRA "
                  "adapter file carries no token embeddings")
    if not (math.isfinite(c.ema_decay) and 0 <= c.ema_decay < 1):
        violation("ema_decay", f"must be in [0, 1) (0 = off), got {c.ema_decay:g}")
    if c.HasField("weight_decay") and c.weight_decay < 0:
        violation("weight_decay", "must not be negative")
    if not c.HasField("weight_decay"):
        c.weight_decay = 1e-2
    c.max_grad_norm = c.max_grad_norm or 1.0

    # -- devices and precision
    accel = c.accelerator.lower()
    if accel not in ACCELERATORS:
        violation("accelerator", f"unknown accelerator {c.accelerator!r}; one of cpu, gpu, auto")
    if accel in ("gpu", "cuda") and not limits.gpu_available:
        violation("accelerator", "no GPU on this trainer host")
    on_gpu = accel in ("gpu", "cuda") or (accel in ("", "auto") and limits.gpu_available)
    c.accelerator = "gpu" if on_gpu else "cpu"
    if c.precision not in P.Precision.values():
        violation("precision", f"unknown precision {c.precision}")
    if c.precision == P.PRECISION_FP16_MIXED and not on_gpu:
        violation("precision", "fp16 mixed precision needs a GPU (CPUs have no fp16 autocast "
                  "with a gradient scaler); use PRECISION_BF16_MIXED or PRECISION_FP32")
    if c.precision == P.PRECISION_UNSPECIFIED:
        c.precision = P.PRECISION_BF16_MIXED if on_gpu else P.PRECISION_FP32
    if c.use_8bit_adam and not (on_gpu and importlib.util.find_spec("bitsandbytes")):
        warnings.append(("8BIT_ADAM_UNAVAILABLE", "8-bit Adam needs bitsandbytes and a GPU; "
                         "using AdamW", "config.use_8bit_adam"))
        c.use_8bit_adam = False
    if c.strategy not in P.Strategy.values():
        violation("strategy", f"unknown strategy {c.strategy}")
    c.strategy = c.strategy or P.STRATEGY_AUTO
    if c.strategy == P.STRATEGY_FSDP and not on_gpu:
        violation("strategy", "FSDP needs GPUs; use STRATEGY_DDP on CPU")
    if not 0 <= c.devices <= 64:
        violation("devices", "must be between 0 and 64 (0 = 1)")
    c.devices = c.devices or 1
    if c.devices > 1 and c.strategy == P.STRATEGY_SINGLE_DEVICE:
        violation("devices", "STRATEGY_SINGLE_DEVICE takes one device")
    if not on_gpu and c.devices > max(1, limits.cpu_count):
        violation("devices", f"{c.devices} CPU processes on a host with {limits.cpu_count} "
                  "cores")
    if c.num_nodes not in (0, 1):
        violation("num_nodes", "multi-node jobs need an external launcher (torchrun, SLURM, "
                  "a PyTorchJob); the trainer service runs single-node jobs")
    c.num_nodes = 1

    # -- LoRA
    if lora:
        lc = c.lora
        if not 0 <= lc.rank <= 256:
            violation("lora.rank", "must be between 0 and 256 (0 = 4)")
        lc.rank = lc.rank or 4
        if lc.HasField("alpha") and lc.alpha <= 0:
            violation("lora.alpha", "must be positive")
        if not lc.HasField("alpha"):
            lc.alpha = float(lc.rank)
        if not 0 <= lc.dropout < 1:
            violation("lora.dropout", "must be in [0, 1)")
        if not lc.target_modules:
            lc.target_modules.extend(["to_q", "to_k", "to_v", "to_out.0"])
    elif c.HasField("lora"):
        warnings.append(("LORA_IGNORED", "lora settings are ignored for a full fine-tune",
                         "config.lora"))

    # -- prior preservation
    if prior.enabled:
        if not 0 <= prior.class_image_count <= limits.max_class_images:
            violation("prior_preservation.class_image_count",
                      f"must be between 0 and {limits.max_class_images} (0 = 100)")
        prior.class_image_count = prior.class_image_count or 100
        if prior.HasField("loss_weight") and prior.loss_weight < 0:
            violation("prior_preservation.loss_weight", "must not be negative")
        if not prior.HasField("loss_weight"):
            prior.loss_weight = 1.0
        gen = prior.generation
        if not 0 <= gen.steps <= 1000:
            violation("prior_preservation.generation.steps", "must be between 0 and 1000")
        gen.steps = gen.steps or 20
        if gen.HasField("cfg_scale") and not 0 <= gen.cfg_scale <= 50:
            violation("prior_preservation.generation.cfg_scale", "must be between 0 and 50")
        if not gen.HasField("cfg_scale"):
            gen.cfg_scale = 7.0
        if not gen.HasField("seed"):
            gen.seed = 0

    # -- checkpoints and samples
    if c.checkpoint_every_steps < 0:
        violation("checkpoint_every_steps", "must not be negative")
    if not 0 <= c.checkpoints_to_keep <= 100:
        violation("checkpoints_to_keep", "must be between 0 and 100 (0 = 2)")
    c.checkpoints_to_keep = c.checkpoints_to_keep or 2
    if c.sample_every_steps < 0:
        violation("sample_every_steps", "must not be negative")
    if len(c.validation_prompts) > limits.max_validation_prompts:
        violation("validation_prompts", f"at most {limits.max_validation_prompts}")
    if len(c.validation_seeds) > limits.max_validation_seeds:
        violation("validation_seeds", f"at most {limits.max_validation_seeds}")
    prompts = []
    for i, p in enumerate(c.validation_prompts or [instance_prompt]):
        try:
            prompts.append(" ".join(_fmt(p, identifier, class_noun).split()))
        except (KeyError, IndexError, ValueError) as exc:
            violation(f"validation_prompts[{i}]", f"bad template ({exc})")
    del c.validation_prompts[:]
    c.validation_prompts.extend(prompts)
    if not c.validation_seeds:
        c.validation_seeds.append(0)
    if not c.HasField("seed"):
        c.seed = random.SystemRandom().randrange(2**31)

    # -- resolution
    native = int(base_model.get("native_resolution") or 512)
    if c.resolution and not (32 <= c.resolution <= 2048 and c.resolution % 8 == 0):
        violation("resolution", "must be a multiple of 8 between 32 and 2048 (0 = native)")
    c.resolution = c.resolution or native
    if len(c.output_model_name) > 128:
        violation("output_model_name", "at most 128 characters")

    if bad:
        raise InvalidArgument(violations=bad)
    trigger = instance_prompt
    return Resolved(c, warnings, trigger, images)
