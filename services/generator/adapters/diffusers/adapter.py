"""The local diffusers backend: pipelines in this process, an LRU cache of loaded models, our
batched denoising loop (services.diffusion.pipelines) and the sampler table's schedulers.

Models (and LoRAs, and a single file's config folder) recorded at a location in a remote
artifact store are pulled into the replica's ModelCache on a pipeline miss, reported through
`on_download(model_id, bytes_done, bytes_total)`; the files stay pinned only while they load.

LoRAs (a LoRA model_id, GenerateRequest.loras, `<lora:name:w>` tags) are loaded into their base
model's pipeline once each (diffusers' loader reads both the kohya/A1111 and the diffusers/PEFT
layout); a batch runs with the weights of its LoRA combination fused into the base layers
(base + sum of weight x delta, computed once per combination and kept for the newest
FUSED_COMBINATIONS), swapped in by reference for the run and back after it, with the LoRA
layers switched off: no per-step LoRA cost, and the base weights are never rewritten in place.

Textual-inversion embeddings a prompt names (GenerationSpec.embeddings) are loaded into the
pipeline's tokenizer(s) and text encoder(s) once per cached pipeline, each under a token of its
own (services.diffusion.embeddings); `translate` writes those tokens where the names stand.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from boothstudio.services.diffusion import embeddings as ti
from boothstudio.services.diffusion import samplers as sampler_table
from boothstudio.services.diffusion.model_cache import ModelCache
from boothstudio.services.generator import metrics
from boothstudio.services.generator.adapters.base import (
    Adapter,
    Cancelled,
    GenerationSpec,
    ModelRef,
    RunHooks,
    StepProgress,
    applied_loras,
)

MASK_FILLS = ("original", "fill", "latent_noise", "latent_nothing")
#: LoRA combinations whose fused weights are kept (each holds a copy of the adapted layers)
FUSED_COMBINATIONS = 4
#: (model id, bytes done, bytes total) while a model is pulled from the artifact store
OnDownload = Callable[[str, int, int], None]


@dataclass
class DiffusersPlan:
    """What a batch becomes for diffusers (the translation tests pin)."""

    model_source: str
    source_format: str
    config_path: str | None
    scheduler_class: str
    scheduler_kwargs: dict[str, Any]
    step_kwargs: dict[str, Any]
    width: int
    height: int
    steps: int
    clip_skip: int
    jobs: list[Any] = field(default_factory=list)  # pipelines.ImageJob
    hires: Any = None  # pipelines.HiresPass: the first pass's size, upscaler, steps, strength


def embedding_words(spec: GenerationSpec) -> dict[str, str]:
    """Each embedding's name -> the tokens the pipeline holds its vectors under."""
    return {
        e.name: ti.token_words(ti.embedding_token(e.name, e.sha256 or e.source_path), e.vectors)
        for e in spec.embeddings
    }


class DiffusersAdapter(Adapter):
    id = "diffusers"
    kind = "diffusers"
    applies_loras = True

    def __init__(self, device: str = "cpu", cache_size: int = 2, threads: int = 0,
                 model_cache: ModelCache | None = None) -> None:
        self.device = device
        #: where remote models are pulled to (None: every location is used as a local path)
        self.model_cache = model_cache
        self.cache_size = max(1, cache_size)
        self.threads = threads
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        # LoRA adapters attached to each cached base pipeline (they leave with it)
        self._loras: dict[tuple[str, str], set[str]] = {}
        # tokens of the textual-inversion embeddings loaded into each cached pipeline
        self._embeddings: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        # fused weights per (base pipeline key, LoRA combination), newest last
        self._fused: OrderedDict[tuple[Any, ...], dict[Any, Any]] = OrderedDict()
        # the base layers' own weights while a combination's are swapped in, per pipeline
        self._swapped: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = (
            weakref.WeakKeyDictionary())

    # ------------------------------------------------------------------ description

    def validate(self, spec: GenerationSpec) -> list[tuple[str, str]]:
        problems = super().validate(spec)
        if spec.model.format == "lora" and spec.model.base is None:
            problems.append(("model_id", "a LoRA model needs its base model"))
        elif spec.model.format != "lora" and "lora_scale" in spec.backend_options:
            problems.append(("backend_options.lora_scale", "applies to LoRA models only"))
        if spec.mask_fill not in MASK_FILLS:
            problems.append(("mask_fill", f"must be one of {MASK_FILLS}"))
        return problems

    def batch_key(self, spec: GenerationSpec) -> Hashable | None:
        opts = tuple(sorted(spec.sampler_options.items()))
        return (
            spec.model.id,
            spec.model.source_path,
            spec.width,
            spec.height,
            spec.sampler,
            spec.schedule,
            spec.steps,
            opts,
            spec.mode,
            round(spec.strength, 6) if spec.mode != "txt2img" else None,
            int(spec.backend_options.get("clip_skip", 1)),
            float(spec.backend_options.get("lora_scale", 1.0)),
            # a batch runs with one set of fused LoRA weights
            tuple((lora.model.id, lora.model.source_path, lora.weight) for lora in spec.loras),
            spec.hires,  # frozen: hires fix runs a batch's first pass and upscale alike
        )

    def translate(self, specs: Sequence[GenerationSpec]) -> DiffusersPlan:
        from boothstudio.services.diffusion.pipelines import HiresPass, ImageJob

        first = specs[0]
        hires = first.hires
        spec, schedule = sampler_table.resolve(first.sampler, first.schedule)
        values, problems = sampler_table.check_options(spec, first.sampler_options)
        if problems:
            raise ValueError(problems[0][1])
        return DiffusersPlan(
            model_source=first.model.source_path,
            source_format=first.model.format or "diffusers",
            config_path=first.model.config_path or None,
            scheduler_class=spec.scheduler_class,
            scheduler_kwargs=sampler_table.scheduler_kwargs(spec, schedule, values),
            step_kwargs=sampler_table.step_kwargs(spec, values),
            width=first.width,
            height=first.height,
            steps=first.steps,
            clip_skip=int(first.backend_options.get("clip_skip", 1)),
            hires=None if hires is None else HiresPass(
                hires.first_width, hires.first_height, hires.upscaler, hires.steps,
                hires.denoising_strength),
            jobs=[
                ImageJob(
                    prompt=ti.expand_names(s.prompt, embedding_words(s)),
                    negative_prompt=ti.expand_names(s.negative_prompt, embedding_words(s)),
                    seeds=list(s.seeds),
                    cfg_scale=s.cfg_scale,
                    init_image=s.init_image,
                    mask=s.mask,
                    strength=s.strength,
                    mask_blur=s.mask_blur,
                    invert_mask=s.invert_mask,
                    mask_fill=s.mask_fill,
                )
                for s in specs
            ],
        )

    # ------------------------------------------------------------------ pipelines

    def _set_threads(self) -> None:
        if self.threads > 0:
            import torch

            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)

    @contextlib.contextmanager
    def _local(self, model: ModelRef, location: str,
               on_download: OnDownload | None) -> Iterator[str]:
        """A local path for a recorded location (pulled into the model cache when remote)."""
        if self.model_cache is None:
            yield location
            return
        progress = None if on_download is None else (
            lambda done, total: on_download(model.id, done, total))
        with self.model_cache.local(location, progress) as path:
            yield str(path)

    def pipeline(self, model: ModelRef, on_download: OnDownload | None = None) -> Any:
        """The loaded pipeline for a model (LRU cache; loads on a miss).

        A LoRA model shares its base model's pipeline: the adapter is loaded into it once,
        under its own name, and switched on only for that LoRA's runs (see `_activate`).
        """
        if model.base is not None:
            pipe = self.pipeline(model.base, on_download)
            self._attach_lora(pipe, model, on_download)
            return pipe
        key = (model.id, model.source_path)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        from boothstudio.services.diffusion.loading import load_pipeline

        self._set_threads()
        start = time.perf_counter()
        fmt = model.format or "diffusers"
        with contextlib.ExitStack() as pins:
            source = pins.enter_context(self._local(model, model.source_path, on_download))
            config = model.config_path and pins.enter_context(
                self._local(model, model.config_path, on_download))
            pipe, _ = load_pipeline(
                source,
                source_format=fmt,
                config=config or None,
                device=self.device,
            )
        pipe.set_progress_bar_config(disable=True)
        metrics.MODEL_LOAD_SECONDS.observe(time.perf_counter() - start)
        with self._lock:
            self._cache[key] = pipe
            while len(self._cache) > self.cache_size:
                evicted, _ = self._cache.popitem(last=False)
                self._loras.pop(evicted, None)
                for combo in [c for c in self._fused if c[0] == evicted]:
                    del self._fused[combo]
            metrics.MODEL_CACHE.set(len(self._cache))
        return pipe

    @staticmethod
    def _lora_name(model: ModelRef) -> str:
        import hashlib

        # peft keys modules by adapter name: no dots; the path makes a re-import a new adapter
        digest = hashlib.sha1(model.source_path.encode()).hexdigest()[:8]
        return f"{model.id.replace('.', '_')}_{digest}"

    def _attach_lora(self, pipe: Any, model: ModelRef, on_download: OnDownload | None,
                     base: ModelRef | None = None) -> None:
        """Load a LoRA into its base model's pipeline once, under its own adapter name."""
        base = base or model.base
        assert base is not None
        key = (base.id, base.source_path)
        name = self._lora_name(model)
        with self._lock:
            if name in self._loras.get(key, set()):
                return
        start = time.perf_counter()
        with self._local(model, model.source_path, on_download) as source:
            pipe.load_lora_weights(source, adapter_name=name)
        metrics.MODEL_LOAD_SECONDS.observe(time.perf_counter() - start)
        with self._lock:
            self._loras.setdefault(key, set()).add(name)

    def _activate(self, pipe: Any, spec: GenerationSpec,
                  on_download: OnDownload | None = None) -> None:
        """Put this batch's LoRAs on the pipeline: the LoRA layers off, the fused weights of
        its combination swapped into the base layers (none: the base model alone)."""
        self._restore_weights(pipe)
        base = spec.model.base or spec.model
        for lora in spec.loras:
            self._attach_lora(pipe, lora.model, on_download, base)
        key = (base.id, base.source_path)
        if not self._loras.get(key):
            return
        pipe.disable_lora()
        # sorted: the same set in another order sums alike, to the same image
        combo = tuple(sorted((self._lora_name(lora.model), lora.weight)
                             for lora in applied_loras(spec) if lora.weight != 0))
        if combo:
            fused = self._fused_weights(pipe, key, combo)
            self._swapped[pipe] = {layer: layer.weight.data for layer in fused}
            for layer, weight in fused.items():
                layer.weight.data = weight

    def _restore_weights(self, pipe: Any) -> None:
        for layer, weight in self._swapped.pop(pipe, {}).items():
            layer.weight.data = weight

    def _fused_weights(self, pipe: Any, key: tuple[str, str],
                       combo: tuple[tuple[str, float], ...]) -> dict[Any, Any]:
        """base layer -> its weight with the combination's LoRA deltas added (LRU cached)."""
        with self._lock:
            if (key, combo) in self._fused:
                self._fused.move_to_end((key, combo))
                return self._fused[(key, combo)]
        import torch
        from peft.tuners.lora import LoraLayer

        weights = dict(combo)
        fused = {}
        components = (getattr(pipe, name, None)
                      for name in ("unet", "text_encoder", "text_encoder_2"))
        with torch.no_grad():
            for component in (c for c in components if c is not None):
                for module in component.modules():
                    if not isinstance(module, LoraLayer):
                        continue
                    names = [n for n in weights if n in module.lora_A]
                    if not names:
                        continue
                    layer = module.get_base_layer()
                    own = layer.weight.data
                    delta = sum(module.get_delta_weight(n) * weights[n] for n in names)
                    fused[layer] = (own + delta).to(own.dtype)
        with self._lock:
            self._fused[(key, combo)] = fused
            while len(self._fused) > FUSED_COMBINATIONS:
                self._fused.popitem(last=False)
        return fused

    def _attach_embeddings(self, pipe: Any, specs: Sequence[GenerationSpec],
                           on_download: OnDownload | None) -> None:
        """Load the batch's embeddings into the pipeline, each once (they stay while the
        pipeline is cached; a prompt without their names is unaffected)."""
        loaded = self._embeddings.setdefault(pipe, set())
        refs = sorted({e for s in specs for e in s.embeddings}, key=lambda e: e.name)
        for ref in refs:
            token = ti.embedding_token(ref.name, ref.sha256 or ref.source_path)
            if token in loaded:
                continue
            where = ModelRef(ref.name, self.id, ref.source_path, "embedding")
            with self._local(where, ref.source_path, on_download) as path:
                embedding = ti.read_embedding(path)
            ti.load_into(pipe, token, embedding)
            loaded.add(token)

    def warm(self, model: ModelRef) -> None:
        import boothstudio.services.diffusion.pipelines  # noqa: F401 - import torch/diffusers now

        self.pipeline(model)

    def run(self, specs: Sequence[GenerationSpec], hooks: RunHooks) -> None:
        from boothstudio.services.diffusion import pipelines

        plan = self.translate(specs)
        pipe = self.pipeline(specs[0].model, hooks.on_download)
        self._activate(pipe, specs[0], hooks.on_download)
        self._attach_embeddings(pipe, specs, hooks.on_download)
        self._set_threads()

        def on_step(state: pipelines.StepState) -> None:
            def preview(k: int) -> Any:
                if hooks.is_cancelled(k):
                    return None
                return state.preview(k, 0)

            hooks.on_step(
                StepProgress(
                    state.step,
                    state.total,
                    state.elapsed,
                    state.steps_per_second,
                    state.eta_seconds,
                    preview,
                )
            )

        try:
            result = pipelines.run_batch(
                pipe,
                plan.jobs,
                width=plan.width,
                height=plan.height,
                steps=plan.steps,
                sampler=specs[0].sampler,
                schedule=specs[0].schedule,
                sampler_options=specs[0].sampler_options,
                clip_skip=plan.clip_skip,
                hires=plan.hires,
                on_step=on_step,
                should_stop=hooks.should_stop,
                on_image=hooks.on_image,
                skip_job=hooks.is_cancelled,
            )
        except pipelines.GenerationCancelled as exc:
            raise Cancelled() from exc
        finally:
            self._restore_weights(pipe)
        for k, cut in enumerate(result.truncated):
            if cut:
                n, room = pipelines.prompt_token_count(pipe, specs[k].prompt)
                hooks.on_warning(
                    k,
                    "PROMPT_TRUNCATED",
                    f"the prompt has {n} tokens; the text encoder reads the first {room}",
                    "prompt",
                )

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
