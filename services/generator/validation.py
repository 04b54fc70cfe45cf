"""Validation of GenerateRequest before any work: every problem found at once, with field names.

Plain checks (ranges, sizes, decodable images, sampler/schedule/options) come first and raise
INVALID_ARGUMENT with all violations; then the model is looked up in Catalog (NOT_FOUND on
model_id) and the backend adapter adds its own checks.
"""

from __future__ import annotations

import dataclasses
import io
import math
import secrets
from typing import Any

import grpc
from PIL import Image, UnidentifiedImageError

from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, generator_pb2
from services.diffusion import samplers as sampler_table
from services.generator.adapters.base import Adapter, GenerationSpec, ModelRef
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.ids import is_valid_id

MAX_PROMPT_CHARS = 4000
MAX_SIDE = 2048
MIN_SIDE = 64
MAX_COUNT = 16
MAX_IMAGE_BYTES = 32 * 1024 * 1024
FILLS = {
    generator_pb2.MASK_FILL_UNSPECIFIED: "original",
    generator_pb2.MASK_FILL_FILL: "fill",
    generator_pb2.MASK_FILL_ORIGINAL: "original",
    generator_pb2.MASK_FILL_LATENT_NOISE: "latent_noise",
    generator_pb2.MASK_FILL_LATENT_NOTHING: "latent_nothing",
}
_FORMATS = {
    catalog_pb2.MODEL_FORMAT_DIFFUSERS: "diffusers",
    catalog_pb2.MODEL_FORMAT_SINGLE_FILE: "single_file",
    catalog_pb2.MODEL_FORMAT_HF_CACHE: "hf_cache",
    catalog_pb2.MODEL_FORMAT_LORA: "lora",
}


def option_python(value: common_pb2.OptionValue) -> Any:
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


def decode_image(data: bytes, field: str, problems: list[tuple[str, str]]) -> Image.Image | None:
    if len(data) > MAX_IMAGE_BYTES:
        problems.append((field, f"larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB"))
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.width > 4 * MAX_SIDE or im.height > 4 * MAX_SIDE:
                problems.append((field, f"image too large ({im.width}x{im.height})"))
                return None
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        problems.append((field, f"not a decodable PNG/JPEG/WebP image: {exc}"))
        return None


def model_ref(m: catalog_pb2.Model) -> ModelRef:
    return ModelRef(
        id=m.id,
        backend_id=m.backend_id,
        source_path=m.source_path,
        format=_FORMATS.get(m.format, ""),
        config_path=m.config_path,
        architecture=m.architecture,
        native_resolution=m.native_resolution or 512,
        inpainting=m.inpainting,
    )


class Validator:
    def __init__(
        self,
        catalog: catalog_pb2_grpc.CatalogServiceStub,
        adapters: dict[str, Adapter],
        default_model: str,
    ) -> None:
        self.catalog = catalog
        self.adapters = adapters
        self.default_model = default_model

    async def _with_base(self, lora: ModelRef, base_id: str) -> ModelRef:
        """A LoRA runs on its base model: resolve that too (it may have been deleted)."""
        try:
            base = (await self.catalog.GetModel(
                catalog_pb2.GetModelRequest(model_id=base_id), timeout=5.0)).model
        except grpc.RpcError as exc:
            raise FailedPrecondition(
                f"LoRA {lora.id!r} applies to base model {base_id!r}, which Catalog cannot "
                f"give: {exc.code() if hasattr(exc, 'code') else exc}",
                reason="LORA_BASE_MISSING", violations=[("model_id", "base model missing")]
            ) from exc
        if base.format == catalog_pb2.MODEL_FORMAT_LORA:
            raise FailedPrecondition(f"LoRA {lora.id!r} names another LoRA as its base",
                                     reason="LORA_BASE_MISSING",
                                     violations=[("model_id", "base is a LoRA")])
        ref = model_ref(base)
        return dataclasses.replace(
            lora, base=ref, backend_id=lora.backend_id or ref.backend_id,
            architecture=ref.architecture, native_resolution=ref.native_resolution,
            inpainting=ref.inpainting)

    def check_plain(
        self, r: generator_pb2.GenerateRequest
    ) -> tuple[dict[str, Any], list[common_pb2.Warning]]:
        """Checks needing no model; raises InvalidArgument with every violation."""
        p: list[tuple[str, str]] = []
        warnings: list[common_pb2.Warning] = []
        out: dict[str, Any] = {}
        for name in ("prompt", "negative_prompt"):
            if len(getattr(r, name)) > MAX_PROMPT_CHARS:
                p.append((name, f"longer than {MAX_PROMPT_CHARS} characters"))
        if r.HasField("steps") and not 1 <= r.steps <= 150:
            p.append(("steps", f"must be between 1 and 150, got {r.steps}"))
        if r.HasField("cfg_scale") and not (math.isfinite(r.cfg_scale) and 0 <= r.cfg_scale <= 30):
            p.append(("cfg_scale", f"must be between 0 and 30, got {r.cfg_scale:g}"))
        for name in ("width", "height"):
            if r.HasField(name):
                v = getattr(r, name)
                if v % 8:
                    p.append((name, f"must be a multiple of 8, got {v}"))
                elif not MIN_SIDE <= v <= MAX_SIDE:
                    p.append((name, f"must be between {MIN_SIDE} and {MAX_SIDE}, got {v}"))
        if r.HasField("count") and not 1 <= r.count <= MAX_COUNT:
            p.append(("count", f"must be between 1 and {MAX_COUNT}, got {r.count}"))
        if r.HasField("strength") and not (math.isfinite(r.strength) and 0 <= r.strength <= 1):
            p.append(("strength", f"must be between 0 and 1, got {r.strength:g}"))
        if r.HasField("mask_blur") and not 0 <= r.mask_blur <= 64:
            p.append(("mask_blur", f"must be between 0 and 64, got {r.mask_blur}"))
        if r.mask_fill not in FILLS:
            p.append(("mask_fill", f"unknown mask fill {r.mask_fill}"))
        if r.HasField("preview_interval") and r.preview_interval < 0:
            p.append(("preview_interval", "must be >= 0"))
        if r.job_id and not is_valid_id(r.job_id):
            p.append(("job_id", "lowercase letter first, then [a-z0-9_-], at most 128 characters"))
        init = decode_image(r.init_image, "init_image", p) if r.init_image else None
        mask = decode_image(r.mask_image, "mask_image", p) if r.mask_image else None
        if r.mask_image and not r.init_image:
            p.append(("mask_image", "inpainting needs init_image too"))
        if init is not None and mask is not None and init.size != mask.size:
            p.append(
                (
                    "mask_image",
                    f"must be the same size as init_image ({init.width}x{init.height}), "
                    f"got {mask.width}x{mask.height}",
                )
            )
        if r.HasField("strength") and not r.init_image:
            warnings.append(
                common_pb2.Warning(
                    reason="STRENGTH_IGNORED",
                    message="strength applies to img2img/inpainting only",
                    field="strength",
                )
            )
        try:
            spec, schedule = sampler_table.resolve(r.sampler, r.schedule)
            options = {k: option_python(v) for k, v in r.sampler_options.items()}
            values, problems = sampler_table.check_options(spec, options)
            p += problems
            out.update(sampler=spec, schedule=schedule, sampler_options=values)
        except sampler_table.SamplerError as exc:
            p.append((exc.field, str(exc)))
        if p:
            raise InvalidArgument(violations=p)
        out.update(init=init, mask=mask)
        return out, warnings

    async def resolve(
        self, r: generator_pb2.GenerateRequest
    ) -> tuple[GenerationSpec, Adapter, list[common_pb2.Warning]]:
        plain, warnings = self.check_plain(r)
        model_id = r.model_id or self.default_model
        try:
            resp = await self.catalog.GetModel(
                catalog_pb2.GetModelRequest(model_id=model_id), timeout=5.0
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    resource_type="model", resource_name=model_id, field="model_id"
                ) from exc
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument.for_field("model_id", "not a valid model id") from exc
            raise Unavailable(
                f"catalog not reachable to resolve model {model_id!r}: {code}",
                reason="CATALOG_UNAVAILABLE",
                retry_after=1.0,
            ) from exc
        model = model_ref(resp.model)
        if model.format == "lora":
            model = await self._with_base(model, resp.model.origin.base_model_id)
        backend_id = r.backend_id or model.backend_id or "diffusers"
        adapter = self.adapters.get(backend_id)
        if adapter is None:
            raise NotFound(
                f"backend {backend_id!r} is not configured here (configured: "
                f"{', '.join(self.adapters)})",
                resource_type="backend",
                resource_name=backend_id,
                field="backend_id",
            )
        if r.backend_id and model.backend_id and r.backend_id != model.backend_id:
            raise InvalidArgument.for_field(
                "backend_id", f"model {model.id!r} is served by {model.backend_id!r}"
            )
        sampler = plain["sampler"]
        init, mask = plain["init"], plain["mask"]
        native = model.native_resolution
        if init is not None:
            w = r.width if r.HasField("width") else max(MIN_SIDE, init.width // 8 * 8)
            h = r.height if r.HasField("height") else max(MIN_SIDE, init.height // 8 * 8)
        else:
            w = r.width if r.HasField("width") else native
            h = r.height if r.HasField("height") else native
        count = r.count if r.HasField("count") else 1
        base_seed = r.seed if r.HasField("seed") else secrets.randbelow(2**32)
        spec = GenerationSpec(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt,
            model=model,
            sampler=sampler.id,
            schedule=plain["schedule"],
            steps=r.steps if r.HasField("steps") else sampler.default_steps,
            cfg_scale=float(r.cfg_scale) if r.HasField("cfg_scale") else 7.0,
            width=w,
            height=h,
            seeds=[(base_seed + i) % 2**64 for i in range(count)],
            init_image=init,
            mask=mask,
            strength=float(r.strength) if r.HasField("strength") else 0.75,
            mask_blur=r.mask_blur if r.HasField("mask_blur") else 4,
            invert_mask=r.invert_mask,
            mask_fill=FILLS[r.mask_fill],
            sampler_options=plain["sampler_options"],
            backend_options={k: option_python(v) for k, v in r.backend_options.items()},
        )
        caps = adapter.capabilities
        if not {"txt2img": caps.txt2img, "img2img": caps.img2img, "inpaint": caps.inpaint}[
            spec.mode
        ]:
            raise FailedPrecondition(
                f"backend {adapter.id!r} cannot do {spec.mode}", reason="UNSUPPORTED_MODE"
            )
        problems = adapter.validate(spec)
        if problems:
            raise InvalidArgument(violations=problems)
        return spec, adapter, warnings
