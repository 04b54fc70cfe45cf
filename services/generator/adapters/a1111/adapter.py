"""AUTOMATIC1111 webui over its HTTP API (`--api`): /sdapi/v1/txt2img, img2img, progress,
interrupt, samplers.

Translation (the only place it happens): our sampler id -> the webui's sampler label
(`sampler_name`), our schedule -> its `scheduler`, guidance -> `cfg_scale` (StableStudio's plugin
once sent `cfgScale`, which the server silently ignored), seeds -> `seed` + `batch_size` (the
webui numbers images seed, seed+1, ...), the model -> `override_settings.sd_model_checkpoint`,
img2img/inpainting -> `init_images`, `denoising_strength`, `mask`, `mask_blur`,
`inpainting_fill` (0 fill, 1 original, 2 latent noise, 3 latent nothing),
`inpainting_mask_invert` (outpainting arrives as inpainting on the extended canvas); hires fix ->
`enable_hr`, the first pass as `width`/`height`, `hr_scale` and the exact `hr_resize_x`/`_y`
(the output), `hr_upscaler` (its names: Latent, Lanczos...), `hr_second_pass_steps`,
`denoising_strength`. Progress comes from polling /sdapi/v1/progress; cancelling posts
/sdapi/v1/interrupt (process-global on the webui, so batches are never shared).
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

from boothstudio.services.diffusion.backends import RemoteEndpoint
from boothstudio.services.diffusion.samplers import SAMPLERS
from boothstudio.services.generator.adapters.base import (
    HIRES_UPSCALERS,
    Adapter,
    Cancelled,
    GenerationSpec,
    RunHooks,
    StepProgress,
)
from boothstudio.services.generator.adapters.http import BackendError, json_request, png_base64

FILL = {"fill": 0, "original": 1, "latent_noise": 2, "latent_nothing": 3}


A1111Error = BackendError


class A1111Adapter(Adapter):
    id = "a1111"
    kind = "a1111"

    def __init__(self, url: str, timeout: float = 600.0, poll_interval: float = 0.25) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.poll_interval = poll_interval

    # ------------------------------------------------------------------ translation

    def translate(self, specs: Sequence[GenerationSpec]) -> tuple[str, dict[str, Any]]:
        """(endpoint path, JSON payload) for one request."""
        (s,) = specs
        sampler = SAMPLERS[s.sampler]
        payload: dict[str, Any] = {
            "prompt": s.prompt,
            "negative_prompt": s.negative_prompt,
            "seed": s.seeds[0],
            "subseed": -1,
            "subseed_strength": 0,
            "sampler_name": sampler.label,
            "scheduler": s.schedule,
            "batch_size": len(s.seeds),
            "n_iter": 1,
            "steps": s.steps,
            "cfg_scale": s.cfg_scale,
            "width": s.width,
            "height": s.height,
            "restore_faces": bool(s.backend_options.get("restore_faces", False)),
            "tiling": bool(s.backend_options.get("tiling", False)),
            "send_images": True,
            "save_images": False,
            "override_settings": {"sd_model_checkpoint": s.model.source_path},
            "override_settings_restore_afterwards": True,
        }
        if "eta" in s.sampler_options:
            payload["eta"] = s.sampler_options["eta"]
        if "s_noise" in s.sampler_options:
            payload["s_noise"] = s.sampler_options["s_noise"]
        if "clip_skip" in s.backend_options:
            payload["override_settings"]["CLIP_stop_at_last_layers"] = int(
                s.backend_options["clip_skip"]
            )
        if s.hires is not None:
            payload.update(
                width=s.hires.first_width,
                height=s.hires.first_height,
                enable_hr=True,
                hr_scale=s.width / s.hires.first_width,
                hr_resize_x=s.width,
                hr_resize_y=s.height,
                hr_upscaler=HIRES_UPSCALERS[s.hires.upscaler],
                hr_second_pass_steps=s.hires.steps,
                denoising_strength=s.hires.denoising_strength,
            )
        if s.init_image is None:
            return "/sdapi/v1/txt2img", payload
        payload["init_images"] = [png_base64(s.init_image)]
        payload["denoising_strength"] = s.strength
        if s.mask is not None:
            payload.update(
                mask=png_base64(s.mask),
                mask_blur=s.mask_blur,
                inpainting_fill=FILL[s.mask_fill],
                inpainting_mask_invert=1 if s.invert_mask else 0,
                inpaint_full_res=False,
            )
        return "/sdapi/v1/img2img", payload

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        return json_request(self.url + path, body, method=method, timeout=timeout,
                            backend="webui")

    async def check(self) -> tuple[bool, str]:
        import asyncio

        try:
            health = RemoteEndpoint(self.kind, self.url).health_path
            await asyncio.to_thread(self._request, "GET", health, None, 2.0)
        except A1111Error as exc:
            return False, str(exc)
        return True, "ok"

    def run(self, specs: Sequence[GenerationSpec], hooks: RunHooks) -> None:
        (spec,) = specs
        path, payload = self.translate(specs)
        done = threading.Event()
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result["response"] = self._request("POST", path, payload, self.timeout)
            except A1111Error as exc:
                result["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=call, daemon=True)
        started = time.perf_counter()
        worker.start()
        interrupted = False
        last_step = 0
        while not done.wait(self.poll_interval):
            if hooks.should_stop():
                if not interrupted:
                    self._request("POST", "/sdapi/v1/interrupt", {}, 5.0)
                    interrupted = True
                continue
            try:
                prog = self._request("GET", "/sdapi/v1/progress?skip_current_image=false")
            except A1111Error:
                continue
            state = (prog or {}).get("state") or {}
            step, total = int(state.get("sampling_step", 0)), int(state.get("sampling_steps", 0))
            if total and step != last_step:
                last_step = step
                elapsed = time.perf_counter() - started
                current = prog.get("current_image")

                def preview(k: int, current: Any = current) -> Image.Image | None:
                    if not current:
                        return None
                    with Image.open(io.BytesIO(base64.b64decode(current))) as im:
                        im.load()
                        return im.copy()

                hooks.on_step(
                    StepProgress(
                        step, total, elapsed, step / elapsed if elapsed else 0.0,
                        float(prog.get("eta_relative") or 0.0), preview,
                    )
                )  # fmt: skip
        if interrupted or hooks.should_stop():
            raise Cancelled()
        if "error" in result:
            raise result["error"]
        response = result["response"] or {}
        images = response.get("images") or []
        for i, b64 in enumerate(images[: len(spec.seeds)]):
            with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
                im.load()
                hooks.on_image(0, i, im.convert("RGB"))
        if len(images) < len(spec.seeds):
            raise A1111Error(
                "BACKEND_INCOMPLETE", f"webui returned {len(images)} of {len(spec.seeds)} images"
            )
