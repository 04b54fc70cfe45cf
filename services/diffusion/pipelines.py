"""Running txt2img, img2img and inpainting on a loaded Stable Diffusion pipeline.

Our own denoising loop over the pipeline's components (tokenizer, text encoder, UNet, VAE) rather
than the pipeline's `__call__`, because the services need what `__call__` does not give:

- a *batch of several requests* at once (micro-batching): each with its own prompt, negative
  prompt, guidance scale and seeds; conditional and unconditional rows go through the UNet in ONE
  batched pass, guidance is applied per row;
- per-image seeds: image i draws its initial noise *and* every ancestral/SDE step's noise from its
  own `torch.Generator`, so an image is the same whatever batch it ran in;
- a per-step callback with progress and a lazily computed cheap preview, and cancellation checked
  before every UNet pass (`GenerationCancelled`);
- inpainting with a plain 4-channel model (latent blending with the mask at every step) and with a
  9-channel inpainting UNet (mask + masked-image latents as extra input channels), mask blur,
  invert and the four A1111 fill modes; the final image keeps the original pixels outside the
  (blurred) mask.

Plain-argument helpers for other engines (the Trainer's class images)::

    images = txt2img(pipe, "a photo of a dog", seeds=[1, 2, 3], steps=20)
    out = img2img(pipe, init, "a red circle", strength=0.6, seeds=[7])
    out = inpaint(pipe, init, mask, "a blue square", seeds=[7], mask_blur=4)

Prompts are weighted as A1111 weighs them (prompt_weights: "(word:1.3)", "(word)", "[word]").
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from . import samplers as sampler_table
from .prompt_weights import apply_emphasis, token_rows, weighted_tokens

MASK_FILLS = ("original", "fill", "latent_noise", "latent_nothing")


class GenerationCancelled(Exception):
    """should_stop() said stop: raised before the next UNet pass (nothing is returned)."""


@dataclass
class ImageJob:
    """One request in a batch: its prompts, guidance, seeds (one image per seed) and images.

    init_image set = img2img; init_image and mask set = inpainting (white = repaint).
    """

    prompt: str
    negative_prompt: str = ""
    seeds: Sequence[int] = (0,)
    cfg_scale: float = 7.0
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float = 0.75
    mask_blur: int = 4
    invert_mask: bool = False
    mask_fill: str = "original"

    @property
    def mode(self) -> str:
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask is not None else "img2img"


@dataclass
class StepState:
    """What the per-step callback gets: progress, timing and a lazy preview of any row."""

    step: int  # 1-based, passes done
    total: int  # passes in this run
    elapsed: float  # seconds since the loop started
    _preview: Callable[[int], Image.Image] = field(repr=False)
    #: (job index, image index within the job) for each batch row
    rows: list[tuple[int, int]] = field(default_factory=list, repr=False)

    @property
    def steps_per_second(self) -> float:
        return self.step / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float:
        return (self.total - self.step) / self.steps_per_second if self.step else 0.0

    def preview(self, job: int = 0, image: int = 0) -> Image.Image:
        """A cheap RGB preview of the current estimate of one image (computed on demand)."""
        return self._preview(self.rows.index((job, image)))


@dataclass
class BatchResult:
    images: list[list[Image.Image]]  # per job, per seed
    steps: int  # denoising passes run
    seconds: float
    truncated: list[bool]  # per job: the prompt was longer than the text encoder takes


# --------------------------------------------------------------------------- prompts


def prompt_token_count(pipe: Any, prompt: str) -> tuple[int, int]:
    """(tokens the prompt needs, tokens the text encoder takes) without BOS/EOS."""
    tokenizer = pipe.tokenizer
    ids, _ = weighted_tokens(tokenizer, prompt)
    return len(ids), tokenizer.model_max_length - 2


@torch.inference_mode()
def encode_prompts(
    pipe: Any, prompts: Sequence[str], clip_skip: int = 1
) -> tuple[torch.Tensor, list[bool]]:
    """Text embeddings for the prompts (weighted as A1111 does) and which were truncated."""
    rows, weight_rows, truncated = token_rows(pipe.tokenizer, prompts)
    input_ids = torch.tensor(rows, device=pipe.unet.device)
    text_encoder = pipe.text_encoder
    if clip_skip > 1:
        out = text_encoder(input_ids, output_hidden_states=True)
        hidden = out.hidden_states[-clip_skip]
        text_model = getattr(text_encoder, "text_model", text_encoder)
        final_norm = getattr(text_model, "final_layer_norm", None)
        embeddings = final_norm(hidden) if final_norm is not None else hidden
    else:
        embeddings = text_encoder(input_ids)[0]
    return apply_emphasis(embeddings, weight_rows).to(pipe.unet.dtype), truncated


@torch.inference_mode()
def encode_prompts_xl(
    pipe: Any, prompts: Sequence[str], clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """SDXL: both text encoders' penultimate layers side by side (one layer further back per
    clip skip, without the final norm, as SDXL was trained), the second encoder's pooled
    projection, and which prompts were truncated."""
    parts, pooled, truncated = [], None, [False] * len(prompts)
    encoders = ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
    for tokenizer, text_encoder in encoders:
        if text_encoder is None:
            continue
        rows, weight_rows, cut = token_rows(tokenizer, prompts)
        truncated = [a or b for a, b in zip(truncated, cut, strict=True)]
        out = text_encoder(torch.tensor(rows, device=pipe.unet.device), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        parts.append(apply_emphasis(out.hidden_states[-(clip_skip + 1)], weight_rows))
    assert pooled is not None, "SDXL needs a text_encoder_2 with a projection"
    dtype = pipe.unet.dtype
    return torch.cat(parts, dim=-1).to(dtype), pooled.to(dtype), truncated


# --------------------------------------------------------------------------- images


def _to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    img = image.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def _to_pil(x: torch.Tensor) -> Image.Image:
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def prepare_mask(
    mask: Image.Image, width: int, height: int, blur: int = 4, invert: bool = False
) -> np.ndarray:
    """The mask as float HxW in [0, 1] (1 = repaint): resized, optionally inverted, blurred."""
    m = mask.convert("L")
    if m.size != (width, height):
        m = m.resize((width, height), Image.Resampling.NEAREST)
    if invert:
        m = Image.eval(m, lambda v: 255 - v)
    if blur > 0:
        m = m.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(m, dtype=np.float32) / 255.0


def fill_masked(image: torch.Tensor, hard_mask: np.ndarray) -> torch.Tensor:
    """A1111 "fill": masked pixels take the blurred colours around them."""
    from scipy.ndimage import gaussian_filter

    arr = image.permute(1, 2, 0).numpy().copy()
    keep = (hard_mask < 0.5).astype(np.float32)
    if keep.sum() == 0:
        return torch.zeros_like(image)
    todo = keep < 0.5
    for sigma in (2, 4, 8, 16, 32, 64, 128):
        den = gaussian_filter(keep, sigma)
        ok = todo & (den > 1e-3)
        if ok.any():
            for c in range(3):
                num = gaussian_filter(arr[..., c] * keep, sigma)
                arr[..., c][ok] = (num / np.maximum(den, 1e-6))[ok]
            todo &= ~ok
        if not todo.any():
            break
    return torch.from_numpy(arr).permute(2, 0, 1)


def _vae_scale(pipe: Any) -> int:
    return int(2 ** (len(pipe.vae.config.block_out_channels) - 1))


def _scaling(pipe: Any) -> float:
    return float(getattr(pipe.vae.config, "scaling_factor", 1.0) or 1.0)


@torch.inference_mode()
def encode_images(pipe: Any, images: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] (B,3,H,W) -> scaled latents (distribution mean: deterministic)."""
    vae = pipe.vae
    lat = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    return lat * _scaling(pipe)


@torch.inference_mode()
def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    vae = pipe.vae
    px = vae.decode(latents.to(vae.dtype) / _scaling(pipe)).sample
    return [_to_pil(px[i].float()) for i in range(px.shape[0])]


def latent_rgb_map(pipe: Any) -> torch.Tensor:
    """A (5, 3) linear map latents(+1) -> RGB in [-1, 1], fitted once per pipeline by encoding
    a few solid colours with its own VAE (works for any VAE, no hard-coded factors)."""
    cached = getattr(pipe, "_boothstudio_latent_rgb", None)
    if cached is not None:
        return cached
    levels = (-1.0, 0.0, 1.0)
    colours = torch.tensor([(r, g, b) for r in levels for g in levels for b in levels])
    size = 8 * _vae_scale(pipe)
    x = colours.view(-1, 3, 1, 1).expand(-1, 3, size, size).contiguous()
    lat = encode_images(pipe, x).float().mean(dim=(2, 3)).cpu()  # (n, c)
    design = torch.cat([lat, torch.ones(len(lat), 1)], dim=1)
    weights = torch.linalg.lstsq(design, colours).solution  # (c + 1, 3)
    pipe._boothstudio_latent_rgb = weights
    return weights


def latents_preview(pipe: Any, latents: torch.Tensor, max_side: int = 128) -> Image.Image:
    """A cheap RGB preview of latents (1, c, h, w): the fitted linear map, no VAE decode."""
    w = latent_rgb_map(pipe)
    lat = latents[0].float().cpu()
    rgb = torch.einsum("chw,cr->rhw", lat, w[:-1]) + w[-1].view(3, 1, 1)
    img = _to_pil(rgb)
    scale = max(1, min(_vae_scale(pipe), max_side // max(img.size)))
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


# --------------------------------------------------------------------------- the loop


def _timesteps(scheduler: Any, steps: int, strength: float) -> tuple[torch.Tensor, int]:
    scheduler.set_timesteps(steps)
    if strength >= 1.0:
        return scheduler.timesteps, 0
    # (the epsilon absorbs float32 strengths from the wire: 0.9f * 10 = 8.99999)
    init = min(max(int(steps * strength + 1e-4), 1), steps)
    t_start = max(steps - init, 0)
    order = getattr(scheduler, "order", 1)
    ts = scheduler.timesteps[t_start * order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * order)
    return ts, t_start * order


def check_batch(jobs: Sequence[ImageJob]) -> str:
    """The batch's common mode; raises ValueError when jobs cannot share one run."""
    if not jobs:
        raise ValueError("empty batch")
    modes = {j.mode for j in jobs}
    if len(modes) != 1:
        raise ValueError(f"jobs of different modes cannot share a batch: {sorted(modes)}")
    mode = modes.pop()
    if mode != "txt2img" and len({round(j.strength, 6) for j in jobs}) != 1:
        raise ValueError("img2img/inpaint jobs in one batch must share the strength")
    for j in jobs:
        if not j.seeds:
            raise ValueError("every job needs at least one seed")
        if j.mask_fill not in MASK_FILLS:
            raise ValueError(f"mask_fill must be one of {MASK_FILLS}")
    return mode


def run_batch(
    pipe: Any,
    jobs: Sequence[ImageJob],
    *,
    width: int,
    height: int,
    steps: int,
    sampler: str = sampler_table.DEFAULT_SAMPLER,
    schedule: str = "",
    sampler_options: dict[str, Any] | None = None,
    clip_skip: int = 1,
    on_step: Callable[[StepState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_image: Callable[[int, int, Image.Image], None] | None = None,
    skip_job: Callable[[int], bool] | None = None,
) -> BatchResult:
    """Run several compatible requests as one batch (same size, steps, sampler, mode, strength).

    Args:
        pipe: a loaded StableDiffusion(XL)(Inpaint)Pipeline (SD 1.x/2.x or SDXL; a 9-channel
            UNet is treated as an inpainting model).
        jobs: the requests; each makes len(job.seeds) images.
        on_step: called after every denoising pass with a StepState (preview on demand).
        should_stop: polled before every pass and before decoding; True -> GenerationCancelled.
        on_image: called with (job index, image index, image) as each image is decoded.
        skip_job: jobs for which it returns True are not decoded (e.g. cancelled in the batch).

    Returns:
        BatchResult with images per job (a skipped job gets an empty list).
    """
    xl = getattr(pipe, "text_encoder_2", None) is not None
    mode = check_batch(jobs)
    if width % 8 or height % 8:
        raise ValueError("width and height must be multiples of 8")
    stop = should_stop or (lambda: False)
    started = time.perf_counter()
    unet, device = pipe.unet, pipe.unet.device
    spec, schedule_id = sampler_table.resolve(sampler, schedule)
    scheduler = sampler_table.build_scheduler(
        pipe.scheduler.config, spec, schedule_id, sampler_options
    )
    step_kw = sampler_table.step_kwargs(spec, sampler_options)
    step_params = inspect.signature(scheduler.step).parameters
    takes_generator = "generator" in step_params

    rows: list[tuple[int, int]] = [
        (j, i) for j, job in enumerate(jobs) for i in range(len(job.seeds))
    ]
    n = len(rows)
    gens = [torch.Generator("cpu").manual_seed(int(jobs[j].seeds[i]) % 2**64) for j, i in rows]
    scale = _vae_scale(pipe)
    lat_c = pipe.vae.config.latent_channels
    lh, lw = height // scale, width // scale
    nine = unet.config.in_channels == 9
    if nine and mode != "inpaint":
        # An inpainting UNet without a mask: repaint everything from a blank image.
        pass

    # Text: [uncond rows..., cond rows...] in one batch.
    prompts = [jobs[j].prompt for j, _ in rows]
    negatives = [jobs[j].negative_prompt for j, _ in rows]
    added: dict[str, torch.Tensor] | None = None
    if xl:
        emb, pooled, trunc_rows = encode_prompts_xl(pipe, negatives + prompts, clip_skip)
        if pipe.config.get("force_zeros_for_empty_prompt", False):
            # SDXL's unconditional input for "no negative prompt" is zeros, not an encoded ""
            empty = torch.tensor([not neg for neg in negatives] + [False] * n, device=emb.device)
            emb = torch.where(empty.view(-1, 1, 1), torch.zeros_like(emb), emb)
            pooled = torch.where(empty.view(-1, 1), torch.zeros_like(pooled), pooled)
        # micro-conditioning: original size, crop (0, 0), target size, as SDXL was trained
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=emb.dtype)
        added = {"text_embeds": pooled.to(device),
                 "time_ids": time_ids.repeat(2 * n, 1).to(device)}
    else:
        emb, trunc_rows = encode_prompts(pipe, negatives + prompts, clip_skip)
    truncated = [False] * len(jobs)
    for (j, _), cut in zip(rows, trunc_rows[n:], strict=True):
        truncated[j] = truncated[j] or cut
    guidance = torch.tensor(
        [jobs[j].cfg_scale for j, _ in rows], dtype=torch.float32, device=device
    ).view(-1, 1, 1, 1)

    noise = torch.stack(
        [torch.randn((lat_c, lh, lw), generator=g, dtype=torch.float32) for g in gens]
    ).to(device)
    strength = 1.0 if mode == "txt2img" else float(jobs[0].strength)
    timesteps, _ = _timesteps(scheduler, steps, strength)

    originals: torch.Tensor | None = None  # pixels, for the final composite
    px_mask: torch.Tensor | None = None  # (n,1,H,W) soft mask, 1 = repaint
    lat_mask: torch.Tensor | None = None  # (n,1,lh,lw)
    orig_latents: torch.Tensor | None = None
    nine_extra: torch.Tensor | None = None
    if mode == "txt2img":
        latents = noise * scheduler.init_noise_sigma
        if nine:  # no mask: everything is repainted
            blank = encode_images(pipe, torch.zeros((1, 3, height, width)))
            nine_extra = torch.cat(
                [torch.ones((n, 1, lh, lw), device=device), blank.expand(n, -1, -1, -1)], dim=1
            )
    else:
        originals = torch.stack(
            [_to_tensor(jobs[j].init_image, width, height) for j, _ in rows]  # type: ignore[arg-type]
        )
        start_px = originals
        if mode == "inpaint":
            masks = [
                prepare_mask(jobs[j].mask, width, height, jobs[j].mask_blur, jobs[j].invert_mask)  # type: ignore[arg-type]
                for j, _ in rows
            ]
            px_mask = torch.from_numpy(np.stack(masks)).unsqueeze(1)
            lat_mask = torch.nn.functional.interpolate(px_mask, size=(lh, lw), mode="area").to(
                device
            )
            fills = [jobs[j].mask_fill for j, _ in rows]
            if any(f == "fill" for f in fills):
                start_px = torch.stack(
                    [
                        fill_masked(originals[k], (px_mask[k, 0] > 0.5).numpy())
                        if fills[k] == "fill"
                        else originals[k]
                        for k in range(n)
                    ]
                )
        orig_latents = encode_images(pipe, originals)
        init_latents = (
            orig_latents if start_px is originals else encode_images(pipe, start_px)
        ).clone()
        if mode == "inpaint":
            assert lat_mask is not None
            hard = (lat_mask > 0.5).float()
            for k, (j, _) in enumerate(rows):
                if jobs[j].mask_fill == "latent_noise":
                    fill_noise = torch.randn((lat_c, lh, lw), generator=gens[k]).to(device)
                    init_latents[k] = init_latents[k] * (1 - hard[k]) + fill_noise * hard[k]
                elif jobs[j].mask_fill == "latent_nothing":
                    init_latents[k] = init_latents[k] * (1 - hard[k])
            if nine:
                masked_px = originals * (px_mask < 0.5).float()
                nine_extra = torch.cat([hard, encode_images(pipe, masked_px)], dim=1)
        if strength >= 1.0:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(n))

    preview_source = {"x": latents}

    def preview_row(k: int) -> Image.Image:
        return latents_preview(pipe, preview_source["x"][k : k + 1])

    emb = emb.to(device)
    total = len(timesteps)
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            if stop():
                raise GenerationCancelled()
            x = torch.cat([latents, latents])
            x = scheduler.scale_model_input(x, t)
            if nine_extra is not None:
                x = torch.cat([x, torch.cat([nine_extra, nine_extra])], dim=1)
            eps = unet(x, t, encoder_hidden_states=emb, added_cond_kwargs=added).sample
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
            kw = dict(step_kw)
            if takes_generator:
                kw["generator"] = gens
            out = scheduler.step(eps, t, latents, **kw)
            latents = out.prev_sample
            if mode == "inpaint" and not nine:
                assert lat_mask is not None and orig_latents is not None
                if i < total - 1:
                    back = scheduler.add_noise(
                        orig_latents, noise, timesteps[i + 1 : i + 2].repeat(n)
                    )
                else:
                    back = orig_latents
                latents = (1 - lat_mask) * back + lat_mask * latents
            x0 = getattr(out, "pred_original_sample", None)
            preview_source["x"] = x0 if x0 is not None else latents
            if on_step is not None:
                on_step(StepState(i + 1, total, time.perf_counter() - started, preview_row, rows))

        if stop():
            raise GenerationCancelled()
        images: list[list[Image.Image]] = [[] for _ in jobs]
        for k, (j, i) in enumerate(rows):
            if skip_job is not None and skip_job(j):
                continue
            img = decode_latents(pipe, latents[k : k + 1])[0]
            if originals is not None and px_mask is not None:
                gen_px = _to_tensor(img, width, height)
                m = px_mask[k]
                img = _to_pil(originals[k] * (1 - m) + gen_px * m)
            images[j].append(img)
            if on_image is not None:
                on_image(j, i, img)
    return BatchResult(images, total, time.perf_counter() - started, truncated)


# --------------------------------------------------------------------------- simple API


def _defaults(pipe: Any, width: int | None, height: int | None) -> tuple[int, int]:
    native = int(pipe.unet.config.sample_size) * _vae_scale(pipe)
    return width or native, height or native


def _single(
    pipe: Any,
    job: ImageJob,
    width: int,
    height: int,
    steps: int,
    sampler: str,
    schedule: str,
    sampler_options: dict[str, Any] | None,
    on_step: Callable[[StepState], None] | None,
    should_stop: Callable[[], bool] | None,
) -> list[Image.Image]:
    """One job as a batch of one: what txt2img, img2img and inpaint share."""
    return run_batch(pipe, [job], width=width, height=height, steps=steps, sampler=sampler,
                     schedule=schedule, sampler_options=sampler_options, on_step=on_step,
                     should_stop=should_stop).images[0]


def txt2img(
    pipe: Any,
    prompt: str,
    *,
    negative_prompt: str = "",
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    cfg_scale: float = 7.0,
    width: int | None = None,
    height: int | None = None,
    sampler: str = sampler_table.DEFAULT_SAMPLER,
    schedule: str = "",
    sampler_options: dict[str, Any] | None = None,
    on_step: Callable[[StepState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Image.Image]:
    """Text to image: one image per seed (the model's native size unless given)."""
    w, h = _defaults(pipe, width, height)
    job = ImageJob(prompt, negative_prompt, list(seeds), cfg_scale)
    return _single(pipe, job, w, h, steps, sampler, schedule, sampler_options,
                   on_step, should_stop)


def img2img(
    pipe: Any,
    init_image: Image.Image,
    prompt: str,
    *,
    strength: float = 0.75,
    negative_prompt: str = "",
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    cfg_scale: float = 7.0,
    width: int | None = None,
    height: int | None = None,
    sampler: str = sampler_table.DEFAULT_SAMPLER,
    schedule: str = "",
    sampler_options: dict[str, Any] | None = None,
    on_step: Callable[[StepState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Image.Image]:
    """Image to image: runs about strength x steps passes from the noised init image."""
    w, h = width or init_image.width, height or init_image.height
    job = ImageJob(prompt, negative_prompt, list(seeds), cfg_scale, init_image, None, strength)
    return _single(pipe, job, w, h, steps, sampler, schedule, sampler_options,
                   on_step, should_stop)


def inpaint(
    pipe: Any,
    init_image: Image.Image,
    mask: Image.Image,
    prompt: str,
    *,
    strength: float = 0.75,
    mask_blur: int = 4,
    invert_mask: bool = False,
    mask_fill: str = "original",
    negative_prompt: str = "",
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    cfg_scale: float = 7.0,
    sampler: str = sampler_table.DEFAULT_SAMPLER,
    schedule: str = "",
    sampler_options: dict[str, Any] | None = None,
    on_step: Callable[[StepState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Image.Image]:
    """Repaint the white area of `mask` (black with invert_mask); the rest keeps its pixels."""
    job = ImageJob(
        prompt,
        negative_prompt,
        list(seeds),
        cfg_scale,
        init_image,
        mask,
        strength,
        mask_blur,
        invert_mask,
        mask_fill,
    )
    w, h = init_image.width, init_image.height
    return _single(pipe, job, w, h, steps, sampler, schedule, sampler_options, on_step,
                   should_stop)


@torch.inference_mode()
def vae_round_trip(pipe: Any, image: Image.Image) -> Image.Image:
    """The picture encoded and decoded by the model's VAE: the most any fine-tune of the UNet
    can show of it (the detectors' ceiling for a subject)."""
    pixels = _to_tensor(image, image.width, image.height)[None]
    return decode_latents(pipe, encode_images(pipe, pixels))[0]


def images_differ(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute pixel difference (0..255), for tests and checks."""
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


__all__ = [
    "MASK_FILLS",
    "BatchResult",
    "GenerationCancelled",
    "ImageJob",
    "StepState",
    "check_batch",
    "decode_latents",
    "encode_images",
    "encode_prompts",
    "encode_prompts_xl",
    "img2img",
    "inpaint",
    "prepare_mask",
    "prompt_token_count",
    "run_batch",
    "txt2img",
    "vae_round_trip",
]
