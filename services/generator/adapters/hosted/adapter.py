"""Stability AI's REST API (v1 generation) as a backend: a hosted service over HTTPS, keyed by
`Authorization: Bearer <key>`.

Translation (the only place it happens):
- prompt and negative prompt -> `text_prompts` [{text, weight 1}, {text, weight -1}];
- guidance -> `cfg_scale`, steps -> `steps`, size -> `width`/`height`, our sampler id -> the
  API's `sampler` enum (services.diffusion.backends.HOSTED_SAMPLERS); the API has no schedule
  field, so only a sampler's default schedule is accepted;
- one call per image (`samples` 1, `seed` that image's seed): every image then has the seed
  we report, where `samples` > 1 would let the service pick the others;
- the model -> the engine id in the path, `/v1/generation/{engine}/...`;
- img2img -> multipart `image-to-image` with `init_image_mode` IMAGE_STRENGTH and
  `image_strength` = 1 - strength (the API's figure is how much of the init image is KEPT);
- inpainting -> multipart `image-to-image/masking`, `mask_source` MASK_IMAGE_WHITE (the white
  part is repainted; MASK_IMAGE_BLACK when the mask is inverted); the API has no blur field, so
  the adapter blurs the mask it sends by `mask_blur`;
- outpainting arrives as inpainting on the extended canvas (mask_fill "original" starts from
  its stretched edge colours); hires fix is refused (the API has no second pass);
- backend options `style_preset` and `clip_guidance_preset` pass through.
Answers are `{"artifacts": [{"base64", "seed", "finishReason"}]}`; CONTENT_FILTERED becomes a
warning on that image, ERROR a failure. Errors `{id, name, message}` keep their message.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFilter

from boothstudio.services.diffusion.backends import HOSTED_SAMPLERS, RemoteEndpoint
from boothstudio.services.diffusion.samplers import SAMPLERS
from boothstudio.services.generator.adapters.base import (
    Adapter,
    Cancelled,
    GenerationSpec,
    RunHooks,
    StepProgress,
)
from boothstudio.services.generator.adapters.http import (
    BackendError,
    http_request,
    json_request,
    png_bytes,
)

MAX_SEED = 4_294_967_295
MAX_PROMPT = 2000


@dataclass
class HostedCall:
    """One HTTP call: a JSON body (text-to-image) or multipart form fields and files."""

    path: str
    json: dict[str, Any] | None = None
    form: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)


def multipart(form: list[tuple[str, str]], files: dict[str, bytes]) -> tuple[bytes, str]:
    """multipart/form-data body and its Content-Type (files go as PNG attachments)."""
    boundary = "boothstudio-" + secrets.token_hex(12)
    out = io.BytesIO()
    for name, value in form:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                  f"{value}\r\n".encode())
    for name, data in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="{name}.png"\r\nContent-Type: image/png\r\n\r\n'.encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class HostedAdapter(Adapter):
    id = "hosted"
    kind = "hosted"

    def __init__(self, url: str, api_key: str, timeout: float = 120.0) -> None:
        self.endpoint = RemoteEndpoint("hosted", url.rstrip("/"), api_key)
        self.url = self.endpoint.url
        self.timeout = timeout

    # ------------------------------------------------------------------ validation

    def validate(self, spec: GenerationSpec) -> list[tuple[str, str]]:
        problems = super().validate(spec)
        sampler = SAMPLERS[spec.sampler]
        if spec.schedule != sampler.default_schedule:
            problems.append(("schedule", "the hosted API picks its own noise schedule: "
                                         f"leave it unset ({sampler.default_schedule!r})"))
        for p in sampler.parameters:
            if spec.sampler_options.get(p.name, p.default) != p.default:
                problems.append((f"sampler_options.{p.name}", "the hosted API has no such setting"))
        if not 10 <= spec.steps <= 50:
            problems.append(("steps", f"the hosted API takes 10-50 steps, got {spec.steps}"))
        if not 0 <= spec.cfg_scale <= 35:
            problems.append(("cfg_scale", f"the hosted API takes 0-35, got {spec.cfg_scale:g}"))
        for name, side in (("width", spec.width), ("height", spec.height)):
            if side % 64 or side < 128:
                problems.append((name, f"the hosted API wants a multiple of 64 >= 128: {side}"))
        if any(s > MAX_SEED for s in spec.seeds):
            problems.append(("seed", f"the hosted API takes seeds 0-{MAX_SEED}"))
        if spec.mode == "inpaint" and spec.mask_fill != "original":
            problems.append(("mask_fill", "the hosted API always starts from the original"))
        for name, text in (("prompt", spec.prompt), ("negative_prompt", spec.negative_prompt)):
            if len(text) > MAX_PROMPT:
                problems.append((name, f"the hosted API takes at most {MAX_PROMPT} characters"))
        if not spec.model.source_path:
            problems.append(("model_id", "the model names no engine of the hosted API"))
        if spec.hires is not None:
            problems.append(("hires", "the hosted API has no hires fix (a second pass at a "
                                      "larger size): ask for the size directly"))
        return problems

    # ------------------------------------------------------------------ translation

    def translate(self, specs: Sequence[GenerationSpec]) -> list[HostedCall]:
        """One call per image of the (single) request."""
        (s,) = specs
        prompts = [(s.prompt, 1.0)] + ([(s.negative_prompt, -1.0)] if s.negative_prompt else [])
        common: dict[str, Any] = {
            "cfg_scale": s.cfg_scale,
            "samples": 1,
            "steps": s.steps,
            "sampler": HOSTED_SAMPLERS[s.sampler],
        }
        for key in ("style_preset", "clip_guidance_preset"):
            if s.backend_options.get(key):
                common[key] = s.backend_options[key]
        base = f"/v1/generation/{s.model.source_path}"
        calls = []
        for seed in s.seeds:
            if s.init_image is None:
                body = {"text_prompts": [{"text": t, "weight": w} for t, w in prompts],
                        "height": s.height, "width": s.width, "seed": seed, **common}
                calls.append(HostedCall(f"{base}/text-to-image", json=body))
                continue
            form = [(f"text_prompts[{i}][{k}]", str(v)) for i, (t, w) in enumerate(prompts)
                    for k, v in (("text", t), ("weight", w))]
            form += [(k, str(v)) for k, v in {**common, "seed": seed}.items()]
            init = s.init_image.convert("RGB").resize((s.width, s.height))
            files = {"init_image": png_bytes(init)}
            if s.mask is None:
                form += [("init_image_mode", "IMAGE_STRENGTH"),
                         ("image_strength", f"{1.0 - s.strength:g}")]
                calls.append(HostedCall(f"{base}/image-to-image", form=form, files=files))
                continue
            mask = s.mask.convert("L").resize((s.width, s.height))
            if s.mask_blur > 0:
                mask = mask.filter(ImageFilter.GaussianBlur(s.mask_blur))
            source = "MASK_IMAGE_BLACK" if s.invert_mask else "MASK_IMAGE_WHITE"
            form.append(("mask_source", source))
            files["mask_image"] = png_bytes(mask)
            calls.append(HostedCall(f"{base}/image-to-image/masking", form=form, files=files))
        return calls

    # ------------------------------------------------------------------ HTTP

    def _call(self, call: HostedCall) -> Any:
        if call.json is not None:
            return json_request(self.url + call.path, call.json, headers=self.endpoint.headers(),
                                timeout=self.timeout, backend="hosted API")
        data, content_type = multipart(call.form, call.files)
        headers = {**self.endpoint.headers(), "Accept": "application/json",
                   "Content-Type": content_type}
        raw = http_request(self.url + call.path, method="POST", data=data, headers=headers,
                           timeout=self.timeout, backend="hosted API")
        return json.loads(raw)

    async def check(self) -> tuple[bool, str]:
        import asyncio

        try:
            await asyncio.to_thread(http_request, self.url + self.endpoint.health_path,
                                    headers=self.endpoint.headers(), timeout=5.0,
                                    backend="hosted API")
        except BackendError as exc:
            return False, str(exc)
        return True, "ok"

    def run(self, specs: Sequence[GenerationSpec], hooks: RunHooks) -> None:
        (spec,) = specs
        calls = self.translate(specs)
        started = time.perf_counter()
        total = spec.steps * len(calls)
        for i, call in enumerate(calls):
            if hooks.should_stop():
                raise Cancelled()
            answer = self._call(call)
            artifacts = (answer or {}).get("artifacts") or []
            if not artifacts:
                raise BackendError("BACKEND_INCOMPLETE", "hosted API returned no image")
            art = artifacts[0]
            reason = art.get("finishReason", "SUCCESS")
            if reason == "ERROR":
                raise BackendError("BACKEND_FAILED", f"hosted API failed image {i}")
            if reason == "CONTENT_FILTERED":
                hooks.on_warning(0, "CONTENT_FILTERED",
                                 f"image {i} was filtered by the hosted API", "prompt")
            with Image.open(io.BytesIO(base64.b64decode(art["base64"]))) as im:
                im.load()
                hooks.on_image(0, i, im.convert("RGB"))
            done = spec.steps * (i + 1)
            elapsed = time.perf_counter() - started
            rate = done / elapsed if elapsed else 0.0
            hooks.on_step(StepProgress(done, total, elapsed, rate,
                                       (total - done) / rate if rate else 0.0, lambda k: None))
