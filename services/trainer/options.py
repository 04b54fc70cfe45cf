"""Validate a DreamBoothConfig and resolve its defaults (no torch: runs in the service).

`resolve(config, ...)` returns the resolved config (identifier picked, seed fixed, every zero
value replaced by the default it stands for; image bytes dropped) plus warnings, or raises
`InvalidArgument` naming every bad field as a dotted path ("config.max_train_steps",
"config.instance_images[2].data").
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
from dataclasses import dataclass, field

from boothstudio.services.diffusion import samplers  # the sampler table only: imports no torch
from boothstudio.services.trainer.identifiers import (
    IDENTIFIER_RE,
    Vocabulary,
    identifier_warnings,
    pick_identifier,
)
from boothstudio.services.trainer.inputs import (
    ImageRejected,
    check_image,
    filename_problem,
    image_limits,
)
from boothstudio.services.trainer.scoring import scorer_path_problem
from boothstudio.services.trainer.settings import TrainerSettings
from boothstudio.services.trainer.templates import MAX_PROMPT_CHARS, TemplateError, fill
from boothstudio.shared.errors import FieldViolation, InvalidArgument, clip
from boothstudio.v1 import trainer_pb2

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
ACCELERATORS = ("", "auto", "cpu", "gpu", "cuda")
DEFAULT_STEPS = 400
MAX_STEPS = 100_000
MAX_CLASS_NOUN_CHARS = 100
MAX_CLASS_PROMPTS = 64
MAX_GRAD_NORM = 1e4
MAX_PRIOR_WEIGHT = 100.0
MAX_LORA_ALPHA = 4096.0
MAX_TARGET_MODULES = 64
MAX_SNR_GAMMA = 100.0
# a module path inside the UNet ("to_q", "attn1.to_out.0"): no slashes, globs or regexes
MODULE_NAME_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


_SETTINGS = TrainerSettings()


@dataclass
class Limits:
    """Service-side limits (the first three are trainer settings; defaults from there)."""

    max_instance_images: int = _SETTINGS.max_instance_images
    max_image_bytes: int = _SETTINGS.max_image_bytes
    max_upload_bytes: int = _SETTINGS.max_upload_bytes
    max_class_images: int = 2000
    max_validation_prompts: int = 16
    max_validation_seeds: int = 16
    gpu_available: bool = False
    cpu_count: int = 1
    #: jobs run on a Ray cluster (trainer.ray_address): devices and nodes are the cluster's
    on_ray: bool = False


@dataclass
class Resolved:
    config: trainer_pb2.DreamBoothConfig
    warnings: list[tuple[str, str, str]] = field(default_factory=list)  # reason, message, field
    trigger_phrase: str = ""
    images: list[tuple[bytes, str, str]] = field(default_factory=list)  # data, filename, caption


def _fill(template: str, identifier: str, class_noun: str) -> str:
    """A prompt template filled in, whitespace normalised; TemplateError when it is not one."""
    return " ".join(fill(template, {"identifier": identifier, "class_noun": class_noun}).split())


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

    # -- images: header first, then one decode each (with the alpha share masked training
    # needs); names checked before anything is written under them
    images: list[tuple[bytes, str, str]] = []
    if c.instance_images and c.dataset_id:
        violation("dataset_id", "give instance_images or dataset_id, not both")
    if dataset_images is not None:
        images = list(dataset_images)
    masked = c.HasField("masked_loss_background_weight")
    pic_limits = image_limits(limits.max_image_bytes)
    shares: dict[int, float | None] = {}  # alpha share by image index (masked training)
    unreadable: set[int] = set()  # (uploaded datasets were checked on upload)
    for i, img in enumerate(c.instance_images[:limits.max_instance_images]):
        name = img.filename or f"image-{i:03d}.png"
        problem = filename_problem(name)
        if problem:
            violation(f"instance_images[{i}].filename", problem)
        if len(img.caption) > MAX_PROMPT_CHARS:
            violation(f"instance_images[{i}].caption", f"at most {MAX_PROMPT_CHARS} characters")
        try:
            shares[len(images)] = check_image(img.data, pic_limits, want_alpha=masked).alpha_share
        except ImageRejected as exc:
            violation(f"instance_images[{i}].data", str(exc))
            unreadable.add(len(images))
        images.append((img.data, name, img.caption))
    # pictures past the limit are counted, never decoded
    count = len(images) + max(0, len(c.instance_images) - limits.max_instance_images)
    if not images and not c.dataset_id:
        violation("instance_images",
                  "at least one instance image is required (DreamBooth works best with 3-5)")
    elif dataset_images is not None and not images:
        violation("dataset_id", "the dataset holds no images")
    if count > limits.max_instance_images:
        violation("instance_images", f"{count} images is more than the limit of "
                  f"{limits.max_instance_images} (DreamBooth needs 3-5)")
    names = [n for _, n, _ in images]
    if len(set(names)) != len(names):
        violation("instance_images", "file names must be unique")
    if masked and count <= limits.max_instance_images:
        for i, (data, _, _) in enumerate(dataset_images or []):
            try:  # uploads were checked on arrival; only their alpha is new here
                shares[i] = check_image(data, pic_limits, want_alpha=True).alpha_share
            except ImageRejected as exc:
                violation("dataset_id", f"{names[i]}: {exc}")
                unreadable.add(i)
    c.ClearField("instance_images")

    # -- model
    if not c.base_model_id:
        violation("base_model_id", "required: the Catalog id of the model to fine-tune")

    # -- identifier, prompts
    if c.class_noun and not c.class_noun.strip():
        violation("class_noun", "must not be blank")
    if len(c.class_noun) > MAX_CLASS_NOUN_CHARS:
        violation("class_noun", f"at most {MAX_CLASS_NOUN_CHARS} characters")
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
    instance_prompt, filled_in = template, False
    if len(template) > MAX_PROMPT_CHARS:
        violation("instance_prompt", f"at most {MAX_PROMPT_CHARS} characters")
    else:
        try:
            instance_prompt, filled_in = _fill(template, identifier, class_noun), True
        except TemplateError as exc:
            violation("instance_prompt", str(exc))
    if filled_in and identifier not in instance_prompt.lower().split():
        violation("instance_prompt", f"must contain the identifier {identifier!r} "
                  "(or {identifier})")
    c.instance_prompt = instance_prompt
    prior = c.prior_preservation

    def class_text(template: str, field_name: str, empty: str, checked: bool) -> str | None:
        """A class prompt template filled in, or None when it is not a template."""
        if len(template) > MAX_PROMPT_CHARS:
            violation(field_name, f"at most {MAX_PROMPT_CHARS} characters")
            return None
        try:
            text = _fill(template, identifier, class_noun)
        except TemplateError as exc:
            violation(field_name, str(exc))
            return None
        if checked and not text:
            violation(field_name, empty)
        elif checked and identifier in text.lower().split():
            violation(field_name, "must not contain the identifier")
        return text

    default_class = c.class_prompt or ("a {class_noun}" if class_noun else "")
    filled = class_text(default_class, "class_prompt",
                        "prior preservation needs a class prompt or class noun", prior.enabled)
    c.class_prompt = default_class if filled is None else filled
    if len(prior.class_prompts) > MAX_CLASS_PROMPTS:
        violation("prior_preservation.class_prompts", f"at most {MAX_CLASS_PROMPTS}")
    extra = [class_text(t, f"prior_preservation.class_prompts[{i}]", "must not be empty", True)
             for i, t in enumerate(prior.class_prompts[:MAX_CLASS_PROMPTS])]
    del prior.class_prompts[:]
    prior.class_prompts.extend(t for t in extra if t is not None)

    # -- steps and optimisation
    if c.HasField("max_train_steps"):
        if not 1 <= c.max_train_steps <= MAX_STEPS:
            violation("max_train_steps", f"must be between 1 and {MAX_STEPS}, "
                      f"got {c.max_train_steps}")
    else:
        c.max_train_steps = DEFAULT_STEPS
    lora = c.method == trainer_pb2.TRAINING_METHOD_LORA
    if c.method not in trainer_pb2.TrainingMethod.values():
        violation("method", f"unknown method {c.method}")
    c.method = trainer_pb2.TRAINING_METHOD_LORA if lora else trainer_pb2.TRAINING_METHOD_FULL
    if not 0 <= c.learning_rate <= 1:
        violation("learning_rate", f"must be in (0, 1] (0 = default), got {c.learning_rate:g}")
    c.learning_rate = c.learning_rate or (1e-4 if lora else 5e-6)
    if c.HasField("text_encoder_learning_rate") and not 0 < c.text_encoder_learning_rate <= 1:
        violation("text_encoder_learning_rate", "must be in (0, 1]")
    if c.HasField("text_encoder_2_learning_rate") and not 0 < c.text_encoder_2_learning_rate <= 1:
        violation("text_encoder_2_learning_rate", "must be in (0, 1]")
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
        masks = [shares.get(i) for i in range(len(images))]
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
    if not (math.isfinite(c.min_snr_gamma) and 0 <= c.min_snr_gamma <= MAX_SNR_GAMMA):
        violation("min_snr_gamma", f"must be in [0, {MAX_SNR_GAMMA:g}] (0 = off, e.g. 5), "
                  f"got {c.min_snr_gamma:g}")
    if not (math.isfinite(c.offset_noise) and 0 <= c.offset_noise <= 1):
        violation("offset_noise", f"must be in [0, 1] (0 = off, e.g. 0.05), "
                  f"got {c.offset_noise:g}")
    if c.validation_scorer:
        problem = scorer_path_problem(c.validation_scorer)
        if problem:
            violation("validation_scorer", problem)
    elif c.export_best_checkpoint:
        violation("export_best_checkpoint", "needs validation_scorer: the best checkpoint is "
                  "the one with the best validation score")
    # Every float has a range (the request interceptor already refused NaN and infinity):
    # a weight decay of 1e30 or a clipping norm of -1 trains nothing useful and fails late.
    if c.HasField("weight_decay") and not 0 <= c.weight_decay <= 1:
        violation("weight_decay", f"must be in [0, 1], got {c.weight_decay:g}")
    if not c.HasField("weight_decay"):
        c.weight_decay = 1e-2
    if not 0 <= c.max_grad_norm <= MAX_GRAD_NORM:
        violation("max_grad_norm", f"must be in [0, {MAX_GRAD_NORM:g}] (0 = 1.0), "
                  f"got {c.max_grad_norm:g}")
    c.max_grad_norm = c.max_grad_norm or 1.0

    # -- devices and precision
    accel = c.accelerator.lower()
    if accel not in ACCELERATORS:
        violation("accelerator", f"unknown accelerator {c.accelerator!r}; one of cpu, gpu, auto")
    if accel in ("gpu", "cuda") and not (limits.gpu_available or limits.on_ray):
        violation("accelerator", "no GPU on this trainer host")
    on_gpu = accel in ("gpu", "cuda") or (accel in ("", "auto") and limits.gpu_available)
    c.accelerator = "gpu" if on_gpu else "cpu"
    if c.precision not in trainer_pb2.Precision.values():
        violation("precision", f"unknown precision {c.precision}")
    if c.precision == trainer_pb2.PRECISION_FP16_MIXED and not on_gpu:
        violation("precision", "fp16 mixed precision needs a GPU (CPUs have no fp16 autocast "
                  "with a gradient scaler); use PRECISION_BF16_MIXED or PRECISION_FP32")
    if c.precision == trainer_pb2.PRECISION_UNSPECIFIED:
        c.precision = trainer_pb2.PRECISION_BF16_MIXED if on_gpu else trainer_pb2.PRECISION_FP32
    if c.use_8bit_adam and not (on_gpu and importlib.util.find_spec("bitsandbytes")):
        warnings.append(("8BIT_ADAM_UNAVAILABLE", "8-bit Adam needs bitsandbytes and a GPU; "
                         "using AdamW", "config.use_8bit_adam"))
        c.use_8bit_adam = False
    if c.strategy not in trainer_pb2.Strategy.values():
        violation("strategy", f"unknown strategy {c.strategy}")
    c.strategy = c.strategy or trainer_pb2.STRATEGY_AUTO
    if c.strategy == trainer_pb2.STRATEGY_FSDP and not on_gpu:
        violation("strategy", "FSDP needs GPUs; use STRATEGY_DDP on CPU")
    if not 0 <= c.devices <= 64:
        violation("devices", "must be between 0 and 64 (0 = 1)")
    c.devices = c.devices or 1
    if c.devices > 1 and c.strategy == trainer_pb2.STRATEGY_SINGLE_DEVICE:
        violation("devices", "STRATEGY_SINGLE_DEVICE takes one device")
    if not on_gpu and not limits.on_ray and c.devices > max(1, limits.cpu_count):
        violation("devices", f"{c.devices} CPU processes on a host with {limits.cpu_count} "
                  "cores")
    if limits.on_ray:  # Ray places devices x num_nodes workers across the cluster
        if not 0 <= c.num_nodes <= 64:
            violation("num_nodes", "must be between 0 and 64 (0 = 1)")
        c.num_nodes = c.num_nodes or 1
    else:
        if c.num_nodes not in (0, 1):
            violation("num_nodes", "multi-node jobs need a Ray cluster (trainer.ray_address); "
                      "without one the trainer service runs single-node jobs")
        c.num_nodes = 1

    # -- LoRA: ranges checked whether or not the method uses them (a stored config holds no
    # value the trainer would refuse); defaults filled in for LoRA jobs only
    lc = c.lora
    if not 0 <= lc.rank <= 256:
        violation("lora.rank", "must be between 0 and 256 (0 = 4)")
    if lc.HasField("alpha") and not 0 < lc.alpha <= MAX_LORA_ALPHA:
        violation("lora.alpha", f"must be in (0, {MAX_LORA_ALPHA:g}], got {lc.alpha:g}")
    if not 0 <= lc.dropout < 1:
        violation("lora.dropout", f"must be in [0, 1), got {lc.dropout:g}")
    if len(lc.target_modules) > MAX_TARGET_MODULES:
        violation("lora.target_modules", f"at most {MAX_TARGET_MODULES} names")
    for i, name in enumerate(lc.target_modules[:MAX_TARGET_MODULES]):
        if not MODULE_NAME_RE.fullmatch(name):
            violation(f"lora.target_modules[{i}]", f"{clip(name, 60)!r} is not a module "
                      "name (dotted words of letters, digits and '_', e.g. 'to_out.0')")
    if lora:
        lc.rank = lc.rank or 4
        if not lc.HasField("alpha"):
            lc.alpha = float(lc.rank)
        if not lc.target_modules:
            lc.target_modules.extend(["to_q", "to_k", "to_v", "to_out.0"])
    elif c.HasField("lora"):
        warnings.append(("LORA_IGNORED", "lora settings are ignored for a full fine-tune",
                         "config.lora"))

    # -- prior preservation: ranges always, defaults when enabled
    gen = prior.generation
    if not 0 <= prior.class_image_count <= limits.max_class_images:
        violation("prior_preservation.class_image_count",
                  f"must be between 0 and {limits.max_class_images} (0 = 100)")
    if prior.HasField("loss_weight") and not 0 <= prior.loss_weight <= MAX_PRIOR_WEIGHT:
        violation("prior_preservation.loss_weight",
                  f"must be in [0, {MAX_PRIOR_WEIGHT:g}], got {prior.loss_weight:g}")
    if not 0 <= gen.steps <= 1000:
        violation("prior_preservation.generation.steps", "must be between 0 and 1000")
    if gen.HasField("cfg_scale") and not 0 <= gen.cfg_scale <= 50:
        violation("prior_preservation.generation.cfg_scale",
                  f"must be between 0 and 50, got {gen.cfg_scale:g}")
    if len(gen.negative_prompt) > MAX_PROMPT_CHARS:
        violation("prior_preservation.generation.negative_prompt",
                  f"at most {MAX_PROMPT_CHARS} characters")
    # the sampler also draws the validation samples, so it is checked with or without a prior
    try:
        samplers.resolve(gen.sampler, gen.schedule)
    except samplers.SamplerError as exc:
        violation(f"prior_preservation.generation.{exc.field}", clip(str(exc), 300))
    if prior.enabled:
        prior.class_image_count = prior.class_image_count or 100
        if not prior.HasField("loss_weight"):
            prior.loss_weight = 1.0
        gen.steps = gen.steps or 20
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
    if not c.validation_prompts:
        prompts.append(instance_prompt)  # already filled in
    for i, p in enumerate(c.validation_prompts):
        if len(p) > MAX_PROMPT_CHARS:
            violation(f"validation_prompts[{i}]", f"at most {MAX_PROMPT_CHARS} characters")
            continue
        try:
            prompts.append(_fill(p, identifier, class_noun))
        except TemplateError as exc:
            violation(f"validation_prompts[{i}]", str(exc))
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
