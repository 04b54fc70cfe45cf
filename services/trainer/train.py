"""Run one DreamBooth job with Lightning: prepare, train (resumably), export.

    result = run_job(JobSpec(...), reporter)

`run_job` is what a worker process executes (and what in-process tests call). It reports
progress through a `Reporter` (the worker's writes to the job store) and checks it for cancel
requests after every optimiser step.

Job folder layout::

    config.yaml                     resolved configuration (a job can be created from it)
    instance/                       instance images (+ captions.json)
    checkpoints/step-000050.ckpt    full training state (model, optimiser, LR scheduler, scaler,
                                    loop progress = data position, RNG); atomic, retention-limited
    exports/step-000050.safetensors inference-ready trained weights (fp16), kept apart
    samples/step-000050/*.png       fixed-seed validation samples
    logs/tensorboard, logs/csv      Lightning loggers
    output/diffusers/               final model (full fine-tune), output/<name>.safetensors
                                    (original single-file layout); output/lora/ for LoRA jobs

With an artifact store (JobSpec.store) the folder is a scratch copy of the store's
(services/trainer/job_files.py): inputs and the newest committed checkpoint are pulled when this
host lacks them, checkpoints and exports go up off the training thread, the final model is put
in the store before it is registered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from PIL import Image

from boothstudio.services.diffusion.single_file import export_single_file, make_readable
from boothstudio.services.trainer import sdxl
from boothstudio.services.trainer.class_images import (
    ClassImageCache,
    ClassImageKey,
    model_content_hash,
)
from boothstudio.services.trainer.concepts import concept_identifiers, job_concepts, trigger_phrase
from boothstudio.services.trainer.inputs import has_alpha
from boothstudio.services.trainer.job_files import (
    MARKER_SUFFIX,
    CheckpointUploader,
    is_in_place,
    job_key,
    prune_checkpoints,
    pull_inputs,
    pull_newest_checkpoint,
    store_output,
    write_kohya_lora,
)
from boothstudio.services.trainer.metrics import (
    CHECKPOINT_SECONDS,
    CLASS_IMAGES,
    PEAK_MEMORY,
    STEP_SECONDS,
)
from boothstudio.services.trainer.module import (
    ConceptMix,
    DataSpec,
    DreamBoothModule,
    OptimSpec,
    StepBatches,
    image_tensor,
    latent_multiple,
)
from boothstudio.services.trainer.scoring import best_step, load_scorer, score
from boothstudio.shared.artifact_store import MANIFEST, ArtifactStore
from boothstudio.shared.storage import fsync_dir
from boothstudio.v1 import trainer_pb2

if TYPE_CHECKING:
    from boothstudio.services.diffusion.model_cache import ModelCache

log = logging.getLogger("boothstudio.trainer.job")
JobState = trainer_pb2.TrainingJobState

PRECISION = {trainer_pb2.PRECISION_FP32: "32-true", trainer_pb2.PRECISION_BF16_MIXED: "bf16-mixed",
             trainer_pb2.PRECISION_FP16_MIXED: "16-mixed"}
SAMPLE_STEPS = 20
#: how often the per-step metric rows reach logs/ (also before every checkpoint)
LOG_FLUSH_SECONDS = 1.0


class Reporter:
    """Where a job reports to. The base class ignores everything (non-zero DDP ranks)."""

    def state(self, state: int, reason: str = "", message: str = "") -> bool:
        """Move the job to `state`; False when that is no longer allowed (a cancel won)."""
        return True

    def observe(self, name: str, value: float, label: str = "") -> None:
        """A domain observation for the service's metrics (see services.trainer.metrics)."""
    def metrics(self, m: trainer_pb2.TrainingMetrics) -> None: ...
    def sample(self, s: trainer_pb2.TrainingSample) -> None: ...
    def checkpoint(self, c: trainer_pb2.Checkpoint,
                   removed: list[trainer_pb2.Checkpoint]) -> None: ...
    def class_images(self, ready: int, total: int, cached: int) -> None: ...
    def warning(self, reason: str, message: str, field: str = "") -> None: ...

    def stop_requested(self) -> str:
        """"" to go on, else why to stop ("cancel", "drain", ABANDON)."""
        return ""


#: a stop reason: the job is no longer this run's (deleted, or claimed again elsewhere): stop
#: at once, saving nothing (its writes would be refused, and the new runner has its own)
ABANDON = "abandon"


@dataclass
class JobSpec:
    job_id: str
    job_dir: Path
    config: trainer_pb2.DreamBoothConfig  # resolved
    base_model: dict[str, Any]  # id, source_path, format (diffusers | hf_cache), ...
    cache_dir: Path  # class image cache root
    model_hash_memo: Path | None = None
    #: denoising steps of validation samples
    sample_steps: int = SAMPLE_STEPS
    #: tests: stop as if cancelled once this step is done
    stop_at_step: int = 0
    extra_callbacks: list[Callback] = field(default_factory=list)
    #: where the job's files live beyond this host (None: the job folder only)
    store: ArtifactStore | None = None
    #: where a base model kept in a remote store is pulled to (None: base models are local)
    model_cache: ModelCache | None = None
    #: Lightning Trainer arguments replacing the local engine's (strategy, plugins, devices,
    #: num_nodes): how another engine (Ray, ray_engine.py) places and connects the ranks
    placement: dict[str, Any] = field(default_factory=dict)
    #: applied to the Lightning Trainer before it fits (Ray's prepare_trainer)
    prepare_trainer: Callable[[L.Trainer], L.Trainer] | None = None


@dataclass
class JobResult:
    outcome: str  # "succeeded" | "stopped" | "rank"
    stop_reason: str = ""
    step: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    class_images_cached: int = 0
    class_images_generated: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def peak_memory_bytes() -> int:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _observe_peak_memory(reporter: Reporter) -> None:
    device = "cuda" if torch.cuda.is_available() and torch.cuda.is_initialized() else "cpu"
    reporter.observe(PEAK_MEMORY, peak_memory_bytes(), device)


def _is_remote(model_cache: ModelCache | None, location: str) -> bool:
    return bool(location) and model_cache is not None and model_cache.store.is_remote_location(
        location)


def load_base(base_model: dict[str, Any], model_cache: ModelCache | None = None) -> Any:
    """The base pipeline; weights (and a single file's config folder) kept in a remote store
    are pulled into the model cache first, and pinned there while they load."""
    from boothstudio.services.diffusion.loading import load_pipeline

    source, config = base_model["source_path"], base_model.get("config_path") or None
    with contextlib.ExitStack() as pins:
        if model_cache is not None and _is_remote(model_cache, source):
            source = str(pins.enter_context(model_cache.local(source)))
        if model_cache is not None and config and _is_remote(model_cache, config):
            config = str(pins.enter_context(model_cache.local(config)))
        pipe, _info = load_pipeline(source, source_format=base_model.get("format") or None,
                                    config=config, dtype=torch.float32)
    return pipe


def base_model_hash(spec: JobSpec) -> str:
    """What identifies the base model's weights in class-image keys: the content hash of a
    local model, the manifest digest of one kept in the store (the same on every host)."""
    location = str(spec.base_model["source_path"])
    if spec.model_cache is not None and _is_remote(spec.model_cache, location):
        folder = spec.model_cache.store.locate(location)
        if folder is not None:
            return f"store:{folder.manifest.digest}:{folder.inner}"
    source = Path(location)
    return (model_content_hash(source, spec.model_hash_memo) if source.exists()
            else f"id:{spec.base_model.get('id')}")


def make_pipeline(components: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionPipeline

    if sdxl.is_sdxl(components):
        return sdxl.make_pipeline(components)

    return StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"], unet=components["unet"],
        scheduler=components["scheduler"], safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def generate(pipe: Any, prompt: str, seeds: list[int], *, steps: int, cfg: float,
             resolution: int, sampler: str = "", schedule: str = "", negative: str = "",
             should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
    """Images through the same pipeline code the Generator uses."""
    from boothstudio.services.diffusion import pipelines, samplers

    with torch.no_grad():
        return list(pipelines.txt2img(
            pipe, prompt, negative_prompt=negative, seeds=seeds, steps=steps, cfg_scale=cfg,
            width=resolution, height=resolution, sampler=sampler or samplers.DEFAULT_SAMPLER,
            schedule=schedule, should_stop=should_stop))


def tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def checkpoint_files(job_dir: Path) -> list[Path]:
    return sorted((job_dir / "checkpoints").glob("step-*.ckpt"))


def lora_state(module: DreamBoothModule) -> dict[str, dict[str, torch.Tensor]]:
    """The LoRA factors in diffusers' layout, with the training scale alpha/rank folded into
    the up factors: the file carries no alpha, and every loader (diffusers, A1111, ComfyUI,
    kohya's) then applies exactly what was trained."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    assert module.lora is not None
    scale = float(module.lora["alpha"]) / float(module.lora["rank"])

    def part(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        factors = get_peft_model_state_dict(model)
        if scale != 1.0:
            factors = {k: v * scale if ".lora_B." in k else v for k, v in factors.items()}
        return convert_state_dict_to_diffusers(factors)

    out = {"unet": part(module.unet)}
    if module.optim.train_text_encoder:
        out["text_encoder"] = part(module.text_encoder)
        if module.text_encoder_2 is not None:
            out["text_encoder_2"] = part(module.text_encoder_2)
    return out


def trained_weights(module: DreamBoothModule) -> dict[str, torch.Tensor]:
    """The trained weights, inference-ready (fp16, safetensors names)."""
    if module.lora is not None:
        flat = {f"{part}.{k}": v for part, sd in lora_state(module).items() for k, v in sd.items()}
    else:
        flat = {f"unet.{k}": v for k, v in module.unet.state_dict().items()}
        if module.optim.trains_text_encoder:
            flat.update({f"text_encoder.{k}": v
                         for k, v in module.text_encoder.state_dict().items()})
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach())
            .contiguous().cpu() for k, v in flat.items()}


def _timestamp_now() -> Any:
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


class JobCallback(Callback):
    """Per optimiser step: metrics, stop requests, checkpoints (+ exports), samples."""

    def __init__(self, spec: JobSpec, reporter: Reporter, pipe_parts: dict[str, Any],
                 sampling: dict[str, Any]) -> None:
        self.spec = spec
        self.cfg = spec.config
        self.reporter = reporter
        self.parts = pipe_parts
        self.sampling = sampling
        self.last_step = -1
        self.times: deque[tuple[float, int]] = deque(maxlen=20)
        self.stop_reason = ""
        self.last_emit = 0.0
        self.last_log_flush = 0.0
        self.shares = spec.store is not None and not is_in_place(
            spec.store, job_key(spec.job_id), spec.job_dir)
        self.uploader: CheckpointUploader | None = None  # started with the first checkpoint
        # validation scoring: the scorer, each scored step's mean (kept in full-state
        # checkpoints, so a resumed job still knows its best), the last scored step's images
        self.scorer = load_scorer(self.cfg.validation_scorer) if self.cfg.validation_scorer \
            else None
        self.scores: dict[int, float] = {}
        self.validation_images: tuple[int, list[list[Image.Image]]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"validation_scores": dict(self.scores)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scores = {int(k): float(v) for k, v in state_dict.get("validation_scores",
                                                                   {}).items()}

    # -- hooks

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_step = trainer.global_step
        self.times.append((time.monotonic(), trainer.global_step))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self.last_step:
            return  # inside a gradient accumulation window
        self.last_step = step
        assert isinstance(pl_module, DreamBoothModule)
        total = self.cfg.max_train_steps
        now = time.monotonic()
        self.reporter.observe(STEP_SECONDS, now - self.times[-1][0])
        self.times.append((now, step))
        if trainer.is_global_zero:
            self._metrics(trainer, pl_module, step, total, now)
        reason = self.reporter.stop_requested() if trainer.is_global_zero else ""
        if self.spec.stop_at_step and step >= self.spec.stop_at_step:
            reason = reason or "cancel"
        if trainer.world_size > 1:
            reason = trainer.strategy.broadcast(reason, src=0)
        if reason == ABANDON:
            self.stop_reason = reason
            trainer.should_stop = True
            return
        every = self.cfg.checkpoint_every_steps
        if reason or step >= total or (every and step % every == 0):
            # scored before the save, so the checkpoint's state holds its own score; a cancel
            # stops without scoring
            scored = None if reason else self.validate(trainer, pl_module, step)
            self.save(trainer, pl_module, step, scored)
        sample_every = self.cfg.sample_every_steps
        if not reason and (step >= total or (sample_every and step % sample_every == 0)):
            self.samples(trainer, pl_module, step)
        if reason:
            self.stop_reason = reason
            trainer.should_stop = True

    # -- pieces

    def _metrics(self, trainer: L.Trainer, module: DreamBoothModule, step: int, total: int,
                 now: float) -> None:
        (t0, s0) = self.times[0]
        rate = (step - s0) / (now - t0) if now > t0 and step > s0 else 0.0
        last = module.last
        m = trainer_pb2.TrainingMetrics(
            step=step, total_steps=total, loss=last.get("loss", 0.0),
            instance_loss=last.get("instance_loss", 0.0),
            learning_rate=float(trainer.optimizers[0].param_groups[0]["lr"]),
            steps_per_second=rate, eta_seconds=(total - step) / rate if rate else 0.0,
            peak_memory_bytes=peak_memory_bytes(), grad_norm=module.grad_norm,
            epoch=(step * self.cfg.batch_size * self.cfg.gradient_accumulation_steps)
            // max(1, len(module.dataset.instance) if module.dataset else 1))
        if "prior_loss" in last:
            m.prior_loss = last["prior_loss"]
        # one row per optimizer step, indexed from 0 as Lightning's own step logging does
        row = {f"train/{k}": v for k, v in last.items()}
        row["epoch"] = trainer.current_epoch
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step - 1)
        if now - self.last_log_flush >= LOG_FLUSH_SECONDS:
            self._flush_logs(trainer, now)
        if step >= total or now - self.last_emit >= 0.25:
            self.last_emit = now
            self.reporter.metrics(m)

    def _flush_logs(self, trainer: L.Trainer, now: float) -> None:
        self.last_log_flush = now
        for logger in trainer.loggers:
            logger.save()

    def save(self, trainer: L.Trainer, module: DreamBoothModule, step: int,
             scored: list[float] | None = None) -> None:
        from safetensors.torch import save_file

        started = time.monotonic()
        self._flush_logs(trainer, started)  # the checkpoint's steps are on disk before it is
        name = f"step-{step:06d}"
        ck_dir = self.spec.job_dir / "checkpoints"
        ck_dir.mkdir(parents=True, exist_ok=True)
        final = ck_dir / f"{name}.ckpt"
        tmp = ck_dir / f".{name}.ckpt.tmp"
        trainer.save_checkpoint(tmp)  # every rank joins; rank 0 writes
        if not trainer.is_global_zero:
            return
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(ck_dir)
        ex_dir = self.spec.job_dir / "exports"
        ex_dir.mkdir(parents=True, exist_ok=True)
        export = ex_dir / f"{name}.safetensors"
        tmp_export = ex_dir / f".{name}.safetensors.tmp"
        meta = {"format": "pt", "kind": "lora" if module.lora else "full", "step": str(step),
                "base_model_id": str(self.spec.base_model.get("id", "")),
                "trigger_phrase": trigger_phrase(self.cfg)}
        with module.averaged_weights():
            weights = trained_weights(module)
        save_file(weights, str(tmp_export), metadata=meta)
        make_readable(tmp_export)
        os.replace(tmp_export, export)
        fsync_dir(ex_dir)
        # retention: full-state checkpoints only (exports are small and kept for picking)
        full = checkpoint_files(self.spec.job_dir)
        removed = []
        for old in full[:-self.cfg.checkpoints_to_keep]:
            old.unlink(missing_ok=True)
            removed.append(trainer_pb2.Checkpoint(
                checkpoint_id=old.stem, step=int(old.stem.split("-")[1]),
                kind=trainer_pb2.CHECKPOINT_KIND_FULL_STATE, path=str(old)))
        self.reporter.observe(CHECKPOINT_SECONDS, time.monotonic() - started)
        self._share(final, export)
        for path, kind in ((final, trainer_pb2.CHECKPOINT_KIND_FULL_STATE),
                           (export, trainer_pb2.CHECKPOINT_KIND_EXPORT)):
            ckpt = trainer_pb2.Checkpoint(
                checkpoint_id=name, step=step, kind=kind, path=str(path),
                size_bytes=path.stat().st_size, create_time=_timestamp_now())
            if scored is not None:
                ckpt.validation_scores.extend(
                    trainer_pb2.ValidationScore(prompt=p, score=v)
                    for p, v in zip(self.cfg.validation_prompts, scored, strict=True))
                ckpt.validation_score = self.scores[step]
            self.reporter.checkpoint(
                ckpt, removed if kind == trainer_pb2.CHECKPOINT_KIND_FULL_STATE else [])

    def validate(self, trainer: L.Trainer, module: DreamBoothModule,
                 step: int) -> list[float] | None:
        """This step's scores on the validation prompts (rank 0, with a scorer): one image per
        validation seed, drawn as the samples are (and reused by them)."""
        if self.scorer is None or not trainer.is_global_zero:
            return None
        prompts = list(self.cfg.validation_prompts)
        seeds = [int(s) for s in self.cfg.validation_seeds]
        was_training = module.training
        module.eval()
        try:
            with module.averaged_weights():
                pipe = make_pipeline(self.parts)
                images = [generate(pipe, p, seeds, **self.sampling) for p in prompts]
        finally:
            module.train(was_training)
        self.validation_images = (step, images)
        values = score(self.scorer, images, prompts)
        self.scores[step] = sum(values) / len(values)
        return values

    def best_export(self, step: int) -> Path:
        """The export of `step` on this host (pulled from the store when only it has it)."""
        path = self.spec.job_dir / "exports" / f"step-{step:06d}.safetensors"
        if not path.exists() and self.spec.store is not None:
            key = job_key(self.spec.job_id, "exports", path.name)
            digest = self.spec.store.get_bytes(key + MARKER_SUFFIX).decode().strip()
            self.spec.store.get_file(key, path, sha256=digest)
        return path

    def _share(self, checkpoint: Path, export: Path) -> None:
        """Queue the new files for the store, then retention there (the uploader thread works
        through them while training goes on)."""
        if not self.shares:
            return
        assert self.spec.store is not None
        if self.uploader is None:
            self.uploader = CheckpointUploader(self.spec.store)
        self._report_upload_failures(self.uploader.take_failures())
        self.uploader.upload(checkpoint, job_key(self.spec.job_id, "checkpoints",
                                                 checkpoint.name))
        self.uploader.upload(export, job_key(self.spec.job_id, "exports", export.name))
        store, job_id, keep = self.spec.store, self.spec.job_id, self.cfg.checkpoints_to_keep
        self.uploader.run(f"retention of job {job_id}'s stored checkpoints",
                          lambda: prune_checkpoints(store, job_id, keep))

    def finish_uploads(self) -> None:
        """Wait until every queued checkpoint is in the store (the job ends, or stops to be
        resumed elsewhere)."""
        if self.uploader is not None:
            self._report_upload_failures(self.uploader.close())
            self.uploader = None

    def _report_upload_failures(self, failures: list[str]) -> None:
        for failure in failures:
            self.reporter.warning("CHECKPOINT_UPLOAD_FAILED",
                                  f"kept on this host only: {failure}"[:1000])

    def samples(self, trainer: L.Trainer, module: DreamBoothModule, step: int) -> None:
        if not trainer.is_global_zero:
            return
        out_dir = self.spec.job_dir / "samples" / f"step-{step:06d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        was_training = module.training
        module.eval()
        try:
            with module.averaged_weights():
                self._write_samples(step, out_dir)
        finally:
            module.train(was_training)

    def _write_samples(self, step: int, out_dir: Path) -> None:
        pipe = make_pipeline(self.parts)
        index = 0
        scored = self.validation_images
        for p_i, prompt in enumerate(self.cfg.validation_prompts):
            seeds = [int(s) for s in self.cfg.validation_seeds]
            images = (scored[1][p_i] if scored and scored[0] == step
                      else generate(pipe, prompt, seeds, **self.sampling))
            for seed, img in zip(seeds, images, strict=True):
                path = out_dir / f"p{p_i:02d}-seed{seed}.png"
                img.save(path)
                self.reporter.sample(trainer_pb2.TrainingSample(
                    step=step, prompt=prompt, seed=seed, png=path.read_bytes(), index=index,
                    concept_identifiers=concept_identifiers(prompt, self.cfg)))
                index += 1


class DirectCheckpointIO(TorchCheckpointIO):
    """torch.save straight into the (temporary) file: Lightning's default serializes the whole
    state into memory first, a second copy of it at every checkpoint. Atomicity comes from the
    rename in JobCallback.save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, str(path))


def _csv_logger(logs: Path, resume_step: int) -> Any:
    """Lightning's CSV logger, keeping the rows a resumed job has already trained.

    Lightning deletes an existing metrics.csv when its logger starts, so every resume used to
    erase the job's earlier curve. Rows of steps before the checkpoint stay; later rows (a
    crashed run's steps past its last checkpoint) go, since those steps are trained again.
    Rows reach the file at least every LOG_FLUSH_SECONDS and before every checkpoint, so a
    killed worker loses none of the steps it kept (writing every step cost ~0.5 ms a step).
    """
    import csv

    from lightning.pytorch.loggers import CSVLogger

    class ResumableCSVLogger(CSVLogger):
        @property
        def experiment(self) -> Any:
            if self._experiment is not None:
                return self._experiment
            path = Path(self.log_dir) / "metrics.csv"
            header: list[str] = []
            rows: list[dict[str, str]] = []
            if path.exists() and resume_step > 0:
                with open(path, newline="") as f:
                    reader = csv.DictReader(f)
                    header = list(reader.fieldnames or [])
                    rows = [r for r in reader
                            if r.get("step") and float(r["step"]) < resume_step]
            exp = super().experiment  # removes the file
            if header and rows:
                with open(path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=header)
                    writer.writeheader()
                    writer.writerows(rows)
                exp.metrics_keys = header  # appended rows use the same columns
            return exp

    return ResumableCSVLogger(str(logs), name="", version="csv", flush_logs_every_n_steps=1 << 30)


def build_trainer(spec: JobSpec, callbacks: list[Callback], resume_step: int = 0) -> L.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    c = spec.config
    on_gpu = c.accelerator == "gpu"
    strategy: Any = "auto"
    if c.strategy == trainer_pb2.STRATEGY_DDP:
        strategy = DDPStrategy(process_group_backend="nccl" if on_gpu else "gloo")
    elif c.strategy == trainer_pb2.STRATEGY_FSDP:
        strategy = FSDPStrategy()
    elif c.strategy == trainer_pb2.STRATEGY_SINGLE_DEVICE:
        strategy = "auto"
    logs = spec.job_dir / "logs"
    loggers = [_csv_logger(logs, resume_step)]
    with contextlib.suppress(ModuleNotFoundError):  # tensorboard missing: CSV only
        loggers.append(TensorBoardLogger(str(logs), name="", version="tensorboard",
                                         default_hp_metric=False))  # type: ignore[arg-type]
    placement: dict[str, Any] = {"devices": c.devices, "num_nodes": 1, "strategy": strategy,
                                  "plugins": []}
    placement.update(spec.placement)
    trainer = L.Trainer(
        accelerator="gpu" if on_gpu else "cpu", devices=placement["devices"],
        num_nodes=placement["num_nodes"], strategy=placement["strategy"],
        precision=PRECISION[c.precision],  # type: ignore[arg-type]
        max_steps=c.max_train_steps, max_epochs=-1,
        accumulate_grad_batches=c.gradient_accumulation_steps,
        gradient_clip_val=c.max_grad_norm if c.max_grad_norm > 0 else None,
        logger=loggers, callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, log_every_n_steps=1, default_root_dir=str(spec.job_dir),
        use_distributed_sampler=False, plugins=[DirectCheckpointIO(), *placement["plugins"]])
    return spec.prepare_trainer(trainer) if spec.prepare_trainer else trainer


def _instance_images(job_dir: Path, keep_alpha: bool = False
                     ) -> tuple[list[Image.Image], list[str], list[str]]:
    """The job's instance pictures (RGB; RGBA where they carry alpha and `keep_alpha`), their
    file names and captions."""
    folder = job_dir / "instance"
    captions_file = folder / "captions.json"
    captions = json.loads(captions_file.read_text()) if captions_file.exists() else {}
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.name not in ("captions.json", MANIFEST)
                   and not p.name.startswith("."))
    images = []
    for n in names:
        with Image.open(folder / n) as im:
            images.append(im.convert("RGBA" if keep_alpha and has_alpha(im) else "RGB"))
    return images, names, [captions.get(n, "") for n in names]


def class_prompts(config: Any, captions: list[str]) -> list[str]:
    """The prompts class images are generated from: the class prompt, or the listed class
    prompts; with class_prompts_from_captions, each caption without its identifier first."""
    prior = config.prior_preservation
    listed = list(prior.class_prompts) or [config.class_prompt]
    if not prior.class_prompts_from_captions:
        return listed
    ident = config.identifier.lower()
    out: list[str] = []
    for cap in captions:
        words = [w for w in cap.split() if w.lower() not in ("{identifier}", ident)]
        prompt = " ".join(words) if cap else config.class_prompt
        if prompt not in out:
            out.append(prompt)
    if prior.class_prompts or not out:
        out += [p for p in listed if p not in out]
    return out


def prepare_class_images(spec: JobSpec, pipe: Any, reporter: Reporter, prompts: list[str]
                         ) -> tuple[list[tuple[Path, str]], int, int]:
    """(image path, its prompt) for every class image, `class_image_count` split evenly across
    `prompts`; each prompt is its own cache entry."""
    c = spec.config
    gen = c.prior_preservation.generation
    from boothstudio.services.diffusion import samplers

    sampler_spec, schedule = samplers.resolve(gen.sampler, gen.schedule)
    model_hash = base_model_hash(spec)
    cache = ClassImageCache(spec.cache_dir, spec.store)
    total = c.prior_preservation.class_image_count
    share, extra = divmod(total, len(prompts))
    counts = [share + (i < extra) for i in range(len(prompts))]

    from tqdm import tqdm

    bar = tqdm(total=total, desc="class images", disable=None)
    done = {"ready": 0, "cached": 0}
    out: list[tuple[Path, str]] = []
    for prompt, count in zip(prompts, counts, strict=True):
        if count == 0:
            continue
        key = ClassImageKey(model_hash=model_hash, prompt=prompt,
                            negative_prompt=gen.negative_prompt, sampler=sampler_spec.id,
                            schedule=schedule, steps=gen.steps,
                            cfg_scale=round(gen.cfg_scale, 4), resolution=c.resolution,
                            first_seed=int(gen.seed))

        def make(seeds: list[int], prompt: str = prompt) -> list[Image.Image]:
            return generate(pipe, prompt, seeds, steps=gen.steps, cfg=gen.cfg_scale,
                            resolution=c.resolution, sampler=sampler_spec.id,
                            schedule=schedule, negative=gen.negative_prompt,
                            should_stop=lambda: bool(reporter.stop_requested()))

        def progress(ready: int, _total: int, cached: int) -> None:
            bar.n = done["ready"] + ready
            bar.refresh()
            reporter.class_images(done["ready"] + ready, total, done["cached"] + cached)

        result = cache.ensure(key, count, make, progress)
        done["ready"] += count
        done["cached"] += result.cached
        out += [(path, prompt) for path in result.paths]
        if reporter.stop_requested():
            break
    bar.close()
    return out, done["cached"], done["ready"] - done["cached"]


def run_job(spec: JobSpec, reporter: Reporter) -> JobResult:
    """Prepare, train from the latest checkpoint (if any) to max_train_steps, export."""
    c = spec.config
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    if not reporter.state(JobState.TRAINING_JOB_STATE_PREPARING):  # cancelled before it started
        return JobResult("stopped", "cancel", seconds=timings)
    if spec.store is not None:  # a job created, or last run, on another host
        pull_inputs(spec.store, spec.job_id, spec.job_dir)
    torch.manual_seed(c.seed)
    pipe = load_base(spec.base_model, spec.model_cache)
    masked = c.HasField("masked_loss_background_weight")
    images, names, captions = _instance_images(spec.job_dir, keep_alpha=masked)
    res = c.resolution
    # each concept as a one-subject config (a one-subject job: itself): its pictures, prompts
    # and class images (services/trainer/concepts.py)
    concepts = job_concepts(c)
    inst_t: list[torch.Tensor] = []
    inst_sizes: list[tuple[int, int]] = []  # (height, width) before resizing (SDXL's time ids)
    class_sizes: list[tuple[int, int]] = []
    prompts: list[str] = []
    class_t: list[torch.Tensor] = []
    class_texts: list[str] = []
    inst_concept: list[int] = []
    class_concept: list[int] = []
    cached = generated = 0
    for k, one in enumerate(concepts):
        files = {im.filename for im in one.instance_images}
        own = [i for i, n in enumerate(names) if not c.concepts or n in files]
        caps = [captions[i] for i in own]
        inst_t += [image_tensor(images[i], res) for i in own]
        inst_sizes += [(images[i].height, images[i].width) for i in own]
        prompts += [(cap.replace("{identifier}", one.identifier) if cap else one.instance_prompt)
                    for cap in caps]
        inst_concept += [k] * len(own)
        if not one.prior_preservation.enabled:
            continue
        t = time.monotonic()
        class_paths, n_cached, n_generated = prepare_class_images(
            replace(spec, config=one), pipe, reporter, class_prompts(one, caps))
        timings["class_images"] = timings.get("class_images", 0.0) + time.monotonic() - t
        cached, generated = cached + n_cached, generated + n_generated
        if reporter.stop_requested():
            return JobResult("stopped", reporter.stop_requested(), 0, seconds=timings)
        for path, prompt in class_paths:
            with Image.open(path) as im:
                class_t.append(image_tensor(im, res))
                class_sizes.append((im.height, im.width))
            class_texts.append(prompt)
            class_concept.append(k)
    if "class_images" in timings:
        reporter.observe(CLASS_IMAGES, generated, "generated")
        reporter.observe(CLASS_IMAGES, cached, "cached")
    mix = None
    if c.concepts:
        mix = ConceptMix(inst_concept, class_concept, [k.repeats or 1 for k in c.concepts],
                         [one.prior_preservation.loss_weight if one.prior_preservation.enabled
                          else 0.0 for one in concepts])
    text_ids = sdxl.training_tokenizer(pipe)  # SDXL: both tokenizers
    data = StepBatches(DataSpec(c.seed, c.batch_size, res, c.center_crop, c.random_flip,
                                c.caption_dropout, c.random_crop_scale,
                                latent_multiple(pipe.vae, pipe.unet) if c.aspect_buckets
                                else 0, size_conditioning=sdxl.is_sdxl(pipe)),
                       inst_t, tokenize(text_ids, prompts), class_t,
                       tokenize(text_ids, class_texts) if class_texts else None,
                       total=c.max_train_steps * c.gradient_accumulation_steps,
                       empty_ids=tokenize(text_ids, [""])[0], mix=mix,
                       instance_sizes=inst_sizes, class_sizes=class_sizes)
    lora = None
    if c.method == trainer_pb2.TRAINING_METHOD_LORA:
        lora = {"rank": c.lora.rank, "alpha": c.lora.alpha, "dropout": c.lora.dropout,
                "target_modules": list(c.lora.target_modules)}
    optim = OptimSpec(
        learning_rate=c.learning_rate,
        text_encoder_learning_rate=(c.text_encoder_learning_rate
                                    if c.HasField("text_encoder_learning_rate")
                                    else c.learning_rate),
        text_encoder_2_learning_rate=(c.text_encoder_2_learning_rate
                                      if c.HasField("text_encoder_2_learning_rate") else None),
        weight_decay=c.weight_decay, lr_scheduler=c.lr_scheduler,
        lr_warmup_steps=c.lr_warmup_steps, total_steps=c.max_train_steps,
        use_8bit_adam=c.use_8bit_adam, train_text_encoder=c.train_text_encoder,
        prior_loss_weight=(c.prior_preservation.loss_weight
                           if c.prior_preservation.enabled else 0.0),
        gradient_checkpointing=c.gradient_checkpointing, ema_decay=c.ema_decay,
        identifier_learning_rate=c.identifier_learning_rate,
        masked_loss_background_weight=c.masked_loss_background_weight if masked else None,
        min_snr_gamma=c.min_snr_gamma, offset_noise=c.offset_noise,
        identifier_token_ids=tuple(dict.fromkeys(
            t for one in concepts
            for t in pipe.tokenizer(one.identifier, add_special_tokens=False).input_ids)))
    parts = {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
             "unet": pipe.unet, "scheduler": pipe.scheduler, **sdxl.extra_parts(pipe)}
    module = DreamBoothModule(parts, optim, data, lora)
    gen = c.prior_preservation.generation
    sampling = {"steps": spec.sample_steps, "cfg": 7.0, "resolution": res,
                "sampler": gen.sampler, "schedule": gen.schedule}
    job_cb = JobCallback(spec, reporter, parts, sampling)
    if spec.store is not None:
        pull_newest_checkpoint(spec.store, spec.job_id, spec.job_dir)
    ckpts = checkpoint_files(spec.job_dir)
    resume = ckpts[-1] if ckpts else None
    done = int(resume.stem.split("-")[1]) if resume else 0
    trainer = build_trainer(spec, [job_cb, *spec.extra_callbacks], resume_step=done)
    timings["prepare"] = time.monotonic() - t0
    # cancelled while preparing (the state change fails once the service set CANCELLING):
    # nothing new to save
    if reporter.stop_requested() or not reporter.state(
            JobState.TRAINING_JOB_STATE_RUNNING, "RESUMED" if resume else "",
            f"resuming from {resume.name}" if resume else ""):
        return JobResult("stopped", reporter.stop_requested() or "cancel", done, seconds=timings)
    t = time.monotonic()
    try:
        trainer.fit(module, ckpt_path=str(resume) if resume else None)
    finally:  # a cancelled or drained job resumes anywhere only from what reached the store
        job_cb.finish_uploads()
    timings["train"] = time.monotonic() - t
    step = trainer.global_step
    if not trainer.is_global_zero:
        return JobResult("rank", step=step)
    _observe_peak_memory(reporter)
    if job_cb.stop_reason:
        return JobResult("stopped", job_cb.stop_reason, step, class_images_cached=cached,
                         class_images_generated=generated, seconds=timings)
    best = best_step(job_cb.scores) if c.export_best_checkpoint else None
    best_note: tuple[str, str] = ("", "")
    if best is not None:
        best_note = ("BEST_CHECKPOINT", f"exporting step-{best:06d}, the best mean validation "
                     f"score ({job_cb.scores[best]:.4g}; the last, step-{step:06d}: "
                     f"{job_cb.scores.get(step, float('nan')):.4g})")
    if not reporter.state(JobState.TRAINING_JOB_STATE_EXPORTING, *best_note):
        # a cancel was acknowledged after the last step's check: honour it (the final
        # checkpoint is saved, so a resume only exports)
        return JobResult("stopped", "cancel", step, class_images_cached=cached,
                         class_images_generated=generated, seconds=timings)
    t = time.monotonic()
    from safetensors.torch import load_file

    best_weights = (load_file(str(job_cb.best_export(best)))
                    if best is not None and best != step else None)
    with module.averaged_weights():
        outputs = export(spec, module, best_weights)
    if spec.store is not None:
        outputs = store_output(spec.store, spec.job_id, spec.job_dir, outputs)
    timings["export"] = time.monotonic() - t
    return JobResult("succeeded", "", step, outputs, cached, generated, timings)


def export(spec: JobSpec, module: DreamBoothModule,
           weights: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
    """Write the final model: diffusers folder + original single file, or a LoRA file; from
    `weights` (a checkpoint's export, e.g. the best scored one) when given."""
    import shutil


    out = spec.job_dir / "output"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    module.eval()
    parts = {"vae": module.vae, "text_encoder": module.text_encoder,
             "tokenizer": module.tokenizer, "unet": module.unet,
             "scheduler": module.base_scheduler}
    if module.lora is not None:
        from diffusers import StableDiffusionPipeline

        lora_dir = out / "lora"
        st = lora_state(module) if weights is None else _parts(weights)
        if module.text_encoder_2 is not None:
            sdxl.save_lora(lora_dir, st)
        else:
            StableDiffusionPipeline.save_lora_weights(
                str(lora_dir), unet_lora_layers=st["unet"],
                text_encoder_lora_layers=st.get("text_encoder"), safe_serialization=True)
        write_kohya_lora(lora_dir, spec.job_id, sdxl=module.text_encoder_2 is not None)
        make_readable(lora_dir)
        return {"lora": str(lora_dir / "pytorch_lora_weights.safetensors")}
    if weights is not None:
        with torch.no_grad():
            for part, sd in _parts(weights).items():
                getattr(module, part).load_state_dict(sd, strict=False)
    pipe = make_pipeline(parts)
    diffusers_dir = out / "diffusers"
    pipe.save_pretrained(str(diffusers_dir), safe_serialization=True)
    make_readable(diffusers_dir)
    single = out / f"{spec.job_id}.safetensors"
    export_single_file(pipe, single, dtype=torch.float16)
    return {"diffusers": str(diffusers_dir), "single_file": str(single)}


def _parts(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """An export's weights by part ("unet", "text_encoder"), names without the part's prefix."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        part, _, name = key.partition(".")
        out.setdefault(part, {})[name] = value
    return out
