"""Validation of GenerateRequest before any work: every problem found at once, with field names.

Plain checks (ranges, sizes, picture headers, sampler/schedule/options) come first and raise
INVALID_ARGUMENT with all violations; then the model is looked up in Catalog (NOT_FOUND on
model_id), the work of the whole request is bounded (MAX_REQUEST_PIXELS), pictures are decoded
in a worker thread, and the backend adapter adds its own checks. No picture is decoded before its
header passed INPUT_IMAGE_LIMITS, and a size taken from init_image obeys the same MAX_SIDE as an
explicit width/height.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
from typing import Any

import grpc
from PIL import Image

from boothstudio.services.diffusion import embeddings
from boothstudio.services.diffusion import samplers as sampler_table
from boothstudio.services.generator import loras as lora_requests
from boothstudio.services.generator.adapters.base import (
    HIRES_UPSCALERS,
    Adapter,
    EmbeddingRef,
    GenerationSpec,
    HiresSpec,
    LoraRef,
    ModelRef,
    OutpaintSpec,
)
from boothstudio.services.generator.canvas import Sides, extend_canvas
from boothstudio.shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from boothstudio.shared.ids import ID_RULE, is_valid_id
from boothstudio.shared.images import ImageInfo, ImageLimits, ImageRejected, decode, probe
from boothstudio.shared.option_values import from_option_value
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, generator_pb2

MAX_PROMPT_CHARS = 4000
MAX_SIDE = 2048
MIN_SIDE = 64
MAX_COUNT = 16
#: Work one request may ask for: width * height * count. 16 images of 1024x1024 (or 4 of
#: 2048x2048); beyond that a single request holds the device (and its memory) for minutes.
MAX_REQUEST_PIXELS = 16 * 1024 * 1024
#: Pictures sent with a request (init_image, mask_image): checked on their header before any
#: pixel is decoded. Larger than MAX_SIDE, since a picture is resized to width x height, but
#: bounded so the decoded copy stays small (16 Mpx: 64 MB as RGBA).
INPUT_IMAGE_LIMITS = ImageLimits(
    max_bytes=32 * 1024 * 1024, max_side=4 * MAX_SIDE, max_pixels=4096 * 4096
)
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
    catalog_pb2.MODEL_FORMAT_EMBEDDING: "embedding",
}
#: Embeddings of one architecture a prompt may call up: the newest this many
MAX_EMBEDDINGS = 1000


#: hires fix: the second pass's strength when the request leaves it unset. On the embedded
#: model 0.3-0.55 read alike by the detectors and 0.7 began to lose the first pass's shapes
#: (tests/research/test_hires_fix.py measures 0.5 against a direct generation)
HIRES_DEFAULT_STRENGTH = 0.5
#: outpainting: how far the repainted band reaches into the original by default, and at most
OUTPAINT_DEFAULT_FEATHER = 16
OUTPAINT_MAX_FEATHER = 256


def outpaint_sides(r: generator_pb2.GenerateRequest) -> Sides:
    o = r.outpaint
    return Sides(o.left, o.right, o.top, o.bottom)


def outpaint_problems(
    r: generator_pb2.GenerateRequest, init: ImageInfo | None
) -> list[tuple[str, str]]:
    """GenerateRequest.outpaint against the request and init_image's header."""
    p: list[tuple[str, str]] = []
    o = r.outpaint
    for name in ("left", "right", "top", "bottom"):
        if not 0 <= getattr(o, name) <= MAX_SIDE:
            p.append((f"outpaint.{name}", f"must be between 0 and {MAX_SIDE} pixels, got "
                                          f"{getattr(o, name)}"))
    if not any((o.left, o.right, o.top, o.bottom)):
        p.append(("outpaint", "extend at least one side (left, right, top or bottom) by 1 "
                              "pixel or more"))
    if o.HasField("feather") and not 0 <= o.feather <= OUTPAINT_MAX_FEATHER:
        p.append(("outpaint.feather", f"must be between 0 and {OUTPAINT_MAX_FEATHER}, got "
                                      f"{o.feather}"))
    if not r.init_image:
        p.append(("outpaint", "needs init_image: the picture to extend"))
    if r.mask_image:
        p.append(("mask_image", "outpainting makes its own mask (the new area): send none"))
    if r.invert_mask:
        p.append(("invert_mask", "outpainting repaints the new area: leave invert_mask off"))
    for name in ("width", "height"):
        if r.HasField(name):
            p.append((name, "outpainting sizes the output (init_image plus the sides): leave "
                            "width and height unset"))
    if p or init is None:
        return p
    sides = outpaint_sides(r).rounded(init.width, init.height)
    w, h = sides.canvas_size(init.width, init.height)
    for size, axis, first, second in ((w, "width", "right", "left"),
                                      (h, "height", "bottom", "top")):
        side = first if getattr(o, first) or not getattr(o, second) else second
        if size > MAX_SIDE:
            p.append((f"outpaint.{side}", f"the canvas would be {size} pixels in {axis}; at most "
                                          f"{MAX_SIDE}: extend less"))
        elif size < MIN_SIDE:
            p.append((f"outpaint.{side}", f"the canvas would be {size} pixels in {axis}; at "
                                          f"least {MIN_SIDE}: extend more"))
    return p


def hires_problems(
    r: generator_pb2.GenerateRequest, native: int | None = None
) -> list[tuple[str, str]]:
    """GenerateRequest.hires on its own (native = None) or against the output size."""
    p: list[tuple[str, str]] = []
    h = r.hires
    if native is None:
        if r.init_image:
            p.append(("hires", "applies to txt2img only (img2img and inpainting already run at "
                               "the output size): send no init_image, or no hires"))
        for name in ("first_pass_width", "first_pass_height"):
            if h.HasField(name):
                v = getattr(h, name)
                if v % 8:
                    p.append((f"hires.{name}", f"must be a multiple of 8, got {v}"))
                elif not MIN_SIDE <= v <= MAX_SIDE:
                    p.append((f"hires.{name}", f"must be between {MIN_SIDE} and {MAX_SIDE}, "
                                               f"got {v}"))
        if h.upscaler and h.upscaler not in HIRES_UPSCALERS:
            p.append(("hires.upscaler", f"unknown upscaler {h.upscaler!r} (choose one of "
                                        f"{', '.join(HIRES_UPSCALERS)})"))
        if h.HasField("steps") and not 0 <= h.steps <= 150:
            p.append(("hires.steps", f"must be between 0 (as steps) and 150, got {h.steps}"))
        if h.HasField("denoising_strength") and not (
            math.isfinite(h.denoising_strength) and 0 <= h.denoising_strength <= 1
        ):
            p.append(("hires.denoising_strength",
                      f"must be between 0 and 1, got {h.denoising_strength:g}"))
        return p
    width, height = output_size(r, None, native)
    first_w, first_h = hires_first_pass(r, native)
    for name, first, out in (("first_pass_width", first_w, width),
                             ("first_pass_height", first_h, height)):
        if first > out:
            p.append((f"hires.{name}", f"the first pass ({first}) may not be larger than the "
                                       f"output ({out})"))
    if not p and (first_w, first_h) == (width, height):
        p.append(("hires", f"the output ({width}x{height}) is the size of the first pass: hires "
                           f"fix enlarges it, so ask for a larger width and height (the model "
                           f"draws {native} px natively) or a smaller hires.first_pass_width"))
    return p


def hires_first_pass(r: generator_pb2.GenerateRequest, native: int) -> tuple[int, int]:
    """The first pass's size: as asked, else the output scaled down (keeping its aspect) until
    its shorter side is the model's native resolution, in multiples of 8."""
    width, height = output_size(r, None, native)
    h = r.hires
    if h.HasField("first_pass_width") and h.HasField("first_pass_height"):
        return h.first_pass_width, h.first_pass_height

    def scaled(side: int, factor: float) -> int:
        return max(MIN_SIDE, int(side / factor) // 8 * 8)

    if h.HasField("first_pass_width"):
        return h.first_pass_width, scaled(height, width / h.first_pass_width)
    if h.HasField("first_pass_height"):
        return scaled(width, height / h.first_pass_height), h.first_pass_height
    factor = max(1.0, min(width, height) / native)
    return scaled(width, factor), scaled(height, factor)


def probe_image(data: bytes, field: str, problems: list[tuple[str, str]]) -> ImageInfo | None:
    """The picture's header checked against INPUT_IMAGE_LIMITS (nothing decoded)."""
    try:
        return probe(data, INPUT_IMAGE_LIMITS)
    except ImageRejected as exc:
        problems.append((field, str(exc)))
        return None


def output_size(
    r: generator_pb2.GenerateRequest, init: ImageInfo | None, native: int
) -> tuple[int, int]:
    """width x height of the output: as asked, else the init image's (rounded down to a
    multiple of 8), else the model's native resolution."""
    if init is not None and r.HasField("outpaint"):
        return outpaint_sides(r).rounded(init.width, init.height).canvas_size(
            init.width, init.height)
    if init is not None:
        w = r.width if r.HasField("width") else max(MIN_SIDE, init.width // 8 * 8)
        h = r.height if r.HasField("height") else max(MIN_SIDE, init.height // 8 * 8)
    else:
        w = r.width if r.HasField("width") else native
        h = r.height if r.HasField("height") else native
    return w, h


def derived_size_problem(
    r: generator_pb2.GenerateRequest, init: ImageInfo | None
) -> tuple[str, str] | None:
    """A size taken from init_image must pass the same limits as an explicit width/height
    (outpainting's canvas is checked by outpaint_problems)."""
    if init is None or r.HasField("outpaint") or (r.HasField("width") and r.HasField("height")):
        return None
    w, h = output_size(r, init, MAX_SIDE)
    if max(w, h) <= MAX_SIDE:
        return None
    return (
        "init_image",
        f"is {init.width}x{init.height}; without width and height the output takes its size, "
        f"which may be at most {MAX_SIDE} a side: set width and height (the picture is resized "
        "to them)",
    )


def request_pixels_problem(width: int, height: int, count: int) -> tuple[str, str] | None:
    """The whole request's work (width x height x count) within MAX_REQUEST_PIXELS."""
    pixels = width * height * count
    if pixels <= MAX_REQUEST_PIXELS:
        return None
    return (
        "count",
        f"{count} images of {width}x{height} are {pixels} pixels; a request may ask for at most "
        f"{MAX_REQUEST_PIXELS} (width x height x count): lower count or size",
    )


async def decode_input(data: bytes, field: str) -> Image.Image:
    """Decode a picture that passed probe_image, in a worker thread (never on the event loop)."""
    try:
        return await asyncio.to_thread(decode, data, INPUT_IMAGE_LIMITS)
    except ImageRejected as exc:  # a header promising more than the data holds
        raise InvalidArgument.for_field(field, str(exc)) from exc


#: Ids one request may name in a repeated field (DeleteImages.image_ids).
MAX_DELETE_IDS = 1000


def check_id_list(field: str, values: list[str]) -> None:
    """check_id for a repeated field: every bad entry named by its index."""
    if len(values) > MAX_DELETE_IDS:
        raise InvalidArgument.for_field(
            field, f"at most {MAX_DELETE_IDS} per call, got {len(values)}"
        )
    bad = [(f"{field}[{i}]", ID_RULE) for i, v in enumerate(values) if not is_valid_id(v)]
    if bad:
        raise InvalidArgument(violations=bad)


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

    async def _embeddings(
        self, model: ModelRef, r: generator_pb2.GenerateRequest
    ) -> tuple[EmbeddingRef, ...]:
        """The Catalog's embeddings for the model's architecture and backend whose names the
        prompt or negative prompt holds as words."""
        if not (r.prompt or r.negative_prompt) or not model.architecture:
            return ()
        try:
            listed = (await self.catalog.ListModels(catalog_pb2.ListModelsRequest(
                kind=catalog_pb2.MODEL_KIND_EMBEDDING, architecture=model.architecture,
                backend_id=model.backend_id, page_size=MAX_EMBEDDINGS), timeout=5.0)).models
        except grpc.RpcError as exc:
            raise Unavailable(
                f"catalog not reachable to look up embeddings: "
                f"{exc.code() if hasattr(exc, 'code') else exc}",
                reason="CATALOG_UNAVAILABLE", retry_after=1.0,
            ) from exc
        by_name = {m.id: m for m in listed}
        return tuple(
            EmbeddingRef(name, by_name[name].source_path, by_name[name].embedding.vectors,
                         by_name[name].embedding.sha256)
            for name in embeddings.mentioned(by_name, r.prompt, r.negative_prompt)
        )

    @staticmethod
    def _hires(r: generator_pb2.GenerateRequest, native: int) -> HiresSpec:
        first_w, first_h = hires_first_pass(r, native)
        h = r.hires
        return HiresSpec(
            first_width=first_w,
            first_height=first_h,
            upscaler=h.upscaler or "latent",
            steps=h.steps,
            denoising_strength=(float(h.denoising_strength) if h.HasField("denoising_strength")
                                else HIRES_DEFAULT_STRENGTH),
        )

    @staticmethod
    async def _outpaint(
        r: generator_pb2.GenerateRequest, init: Image.Image, warnings: list[common_pb2.Warning]
    ) -> tuple[OutpaintSpec, Image.Image, Image.Image]:
        """The extended canvas and its mask (built in a worker thread) for an outpaint."""
        asked = outpaint_sides(r)
        sides = asked.rounded(init.width, init.height)
        if sides != asked:
            w, h = sides.canvas_size(init.width, init.height)
            warnings.append(common_pb2.Warning(
                reason="OUTPAINT_ROUNDED",
                message=f"the canvas is rounded up to {w}x{h} (multiples of 8): extending "
                        f"{sides.describe()} instead of {asked.describe()}",
                field="outpaint"))
        feather = (r.outpaint.feather if r.outpaint.HasField("feather")
                   else OUTPAINT_DEFAULT_FEATHER)
        canvas, mask = await asyncio.to_thread(extend_canvas, init, sides, feather)
        spec = OutpaintSpec(sides.left, sides.right, sides.top, sides.bottom, feather)
        return spec, canvas, mask

    async def _loras(
        self, model: ModelRef, wanted: list[lora_requests.AskedLora]
    ) -> tuple[LoraRef, ...]:
        """The Catalog's LoRA models a request names (its list, its prompt's tags), each made
        for the architecture of the model it is applied to."""
        target = model.base or model
        out = []
        for a in wanted:
            try:
                m = (await self.catalog.GetModel(
                    catalog_pb2.GetModelRequest(model_id=a.model_id), timeout=5.0)).model
            except grpc.RpcError as exc:
                if (exc.code() if hasattr(exc, "code") else None) == grpc.StatusCode.NOT_FOUND:
                    raise NotFound(f"{a.field}: no LoRA model {a.model_id!r} in the Catalog",
                                   resource_type="model", resource_name=a.model_id,
                                   field=a.field) from exc
                raise Unavailable(
                    f"catalog not reachable to resolve LoRA {a.model_id!r}: "
                    f"{exc.code() if hasattr(exc, 'code') else exc}",
                    reason="CATALOG_UNAVAILABLE", retry_after=1.0) from exc
            if m.kind != catalog_pb2.MODEL_KIND_LORA:
                raise InvalidArgument.for_field(a.field, f"{m.id!r} is not a LoRA model")
            if m.id == model.id:
                raise InvalidArgument.for_field(a.field, f"LoRA {m.id!r} is model_id already")
            if m.architecture != target.architecture or (
                    (m.backend_id or "diffusers") != (target.backend_id or "diffusers")):
                message = (f"LoRA {m.id!r} is for {m.architecture} models on "
                           f"{m.backend_id or 'diffusers'}; {target.id!r} is "
                           f"{target.architecture} on {target.backend_id or 'diffusers'}")
                raise InvalidArgument(message, reason="LORA_MISMATCH",
                                      violations=[(a.field, message)])
            out.append(LoraRef(model_ref(m), a.weight))
        return tuple(out)

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
        if r.priority not in generator_pb2.Priority.values():
            p.append(("priority", f"unknown priority {r.priority}"))
        if r.HasField("preview_interval") and r.preview_interval < 0:
            p.append(("preview_interval", "must be >= 0"))
        if r.job_id and not is_valid_id(r.job_id):
            p.append(("job_id", ID_RULE))
        out["loras"] = lora_requests.asked(r, p)
        # headers only: nothing is decoded before every check has passed (see resolve)
        init = probe_image(r.init_image, "init_image", p) if r.init_image else None
        mask = probe_image(r.mask_image, "mask_image", p) if r.mask_image else None
        if r.mask_image and not r.init_image:
            p.append(("mask_image", "inpainting needs init_image too"))
        sizes = [(i.width, i.height) for i in (init, mask) if i is not None]
        if len(sizes) == 2 and sizes[0] != sizes[1]:
            p.append(
                (
                    "mask_image",
                    f"must be the same size as init_image ({init.width}x{init.height}), "
                    f"got {mask.width}x{mask.height}",
                )
            )
        if (derived := derived_size_problem(r, init)) is not None:
            p.append(derived)
        if r.HasField("hires"):
            p += hires_problems(r)
        if r.HasField("outpaint"):
            p += outpaint_problems(r, init)
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
            options = {k: from_option_value(v) for k, v in r.sampler_options.items()}
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
        if resp.model.kind == catalog_pb2.MODEL_KIND_EMBEDDING:
            raise InvalidArgument.for_field(
                "model_id", f"{resp.model.id!r} is a textual-inversion embedding: write its name "
                f"in the prompt of a {resp.model.architecture} model")
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
        w, h = output_size(r, plain["init"], model.native_resolution)
        count = r.count if r.HasField("count") else 1
        if (too_much := request_pixels_problem(w, h, count)) is not None:
            raise InvalidArgument(violations=[too_much])
        hires = None
        if r.HasField("hires"):
            if problems := hires_problems(r, model.native_resolution):
                raise InvalidArgument(violations=problems)
            hires = self._hires(r, model.native_resolution)
        # decoded last, off the event loop: only pictures whose request passed every check
        init = await decode_input(r.init_image, "init_image") if r.init_image else None
        mask = await decode_input(r.mask_image, "mask_image") if r.mask_image else None
        outpaint = None
        if r.HasField("outpaint") and init is not None:
            outpaint, init, mask = await self._outpaint(r, init, warnings)
        base_seed = r.seed if r.HasField("seed") else secrets.randbelow(2**32)
        prompt = lora_requests.strip_tags(r.prompt)
        used_loras = await self._loras(model, plain["loras"])
        used_embeddings = await self._embeddings(model, generator_pb2.GenerateRequest(
            prompt=prompt, negative_prompt=r.negative_prompt))
        spec = GenerationSpec(
            prompt=prompt,
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
            backend_options={k: from_option_value(v) for k, v in r.backend_options.items()},
            embeddings=used_embeddings,
            loras=used_loras,
            hires=hires,
            outpaint=outpaint,
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
