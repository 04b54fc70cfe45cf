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
- hires fix (`HiresPass`): the batch runs first at a smaller size, its latents are enlarged
  (in latent space, or decoded, resized and encoded again), then img2img runs at the output size;
  one run, one step count (both passes), previews from both;
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
#: how hires fix enlarges the first pass: on the latents (bilinear, nearest) or on the decoded
#: pixels (Lanczos, nearest), which are then encoded again
HIRES_UPSCALERS = ("latent", "latent_nearest", "lanczos", "nearest")
_PIXEL_RESAMPLING = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


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


@dataclass(frozen=True)
class HiresPass:
    """Hires fix for a txt2img batch: a first pass at first_width x first_height, enlarged by
    `upscaler`, then img2img at the run's width x height with its own steps and strength."""

    first_width: int
    first_height: int
    upscaler: str = "latent"
    steps: int = 0  # 0 = the first pass's steps
    denoising_strength: float = 0.5

    def check(self, width: int, height: int) -> None:
        if self.upscaler not in HIRES_UPSCALERS:
            raise ValueError(f"hires upscaler must be one of {HIRES_UPSCALERS}")
        if self.first_width % 8 or self.first_height % 8:
            raise ValueError("the hires first pass size must be a multiple of 8")
        if self.first_width > width or self.first_height > height:
            raise ValueError("the hires first pass must not be larger than the output")


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


# --------------------------------------------------------------------------- the batch


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


@dataclass
class _Batch:
    """What every stage of a run shares: the jobs, one row per image, the image size."""

    pipe: Any
    jobs: Sequence[ImageJob]
    mode: str
    width: int
    height: int
    #: (job index, image index within the job) for each batch row
    rows: list[tuple[int, int]]
    #: one per row: its initial noise and every ancestral step's noise come from it, so an
    #: image is the same whatever batch it ran in
    generators: list[torch.Generator]
    #: the share of the schedule that runs (1 = txt2img: all of it)
    strength: float = 1.0

    @classmethod
    def of(cls, pipe: Any, jobs: Sequence[ImageJob], width: int, height: int) -> _Batch:
        mode = check_batch(jobs)
        if width % 8 or height % 8:
            raise ValueError("width and height must be multiples of 8")
        rows = [(j, i) for j, job in enumerate(jobs) for i in range(len(job.seeds))]
        generators = [
            torch.Generator("cpu").manual_seed(int(jobs[j].seeds[i]) % 2**64) for j, i in rows
        ]
        strength = 1.0 if mode == "txt2img" else float(jobs[0].strength)
        return cls(pipe, jobs, mode, width, height, rows, generators, strength)

    def resized(self, width: int, height: int, strength: float) -> _Batch:
        """The same rows (and generators, so noise keeps flowing per image) as img2img at
        another size: hires fix's second pass."""
        if width % 8 or height % 8:
            raise ValueError("width and height must be multiples of 8")
        return _Batch(self.pipe, self.jobs, "img2img", width, height, self.rows,
                      self.generators, strength)

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def row_jobs(self) -> list[ImageJob]:
        """The job of each row."""
        return [self.jobs[j] for j, _ in self.rows]

    @property
    def device(self) -> torch.device:
        device: torch.device = self.pipe.unet.device
        return device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latents."""
        scale = _vae_scale(self.pipe)
        return self.pipe.vae.config.latent_channels, self.height // scale, self.width // scale

    @property
    def nine_channels(self) -> bool:
        """An inpainting UNet: the mask and masked-image latents go in as extra channels."""
        return bool(self.pipe.unet.config.in_channels == 9)


@dataclass
class _Conditioning:
    """The text side of the batch: [uncond rows..., cond rows...] for one batched UNet pass."""

    embeddings: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None  # SDXL's pooled text and size conditioning
    guidance: torch.Tensor  # (n,1,1,1) cfg scale per row
    truncated: list[bool]  # per job: the prompt was longer than the text encoder takes


@dataclass
class _StartLatents:
    """Where denoising starts, and what img2img/inpainting keep of the original image."""

    latents: torch.Tensor
    originals: torch.Tensor | None = None  # pixels, for the final composite
    pixel_mask: torch.Tensor | None = None  # (n,1,H,W) soft mask, 1 = repaint
    latent_mask: torch.Tensor | None = None  # (n,1,h,w)
    original_latents: torch.Tensor | None = None
    unet_extra: torch.Tensor | None = None  # a 9-channel UNet's mask + masked-image latents


# --------------------------------------------------------------------------- stages


def _encode_batch_prompts(batch: _Batch, clip_skip: int) -> _Conditioning:
    pipe, device = batch.pipe, batch.device
    prompts = [job.prompt for job in batch.row_jobs]
    negatives = [job.negative_prompt for job in batch.row_jobs]
    added_cond_kwargs: dict[str, torch.Tensor] | None = None
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        embeddings, pooled, truncated_rows = encode_prompts_xl(pipe, negatives + prompts, clip_skip)
        if pipe.config.get("force_zeros_for_empty_prompt", False):
            # SDXL's unconditional input for "no negative prompt" is zeros, not an encoded ""
            empty = torch.tensor(
                [not negative for negative in negatives] + [False] * batch.size,
                device=embeddings.device,
            )
            embeddings = torch.where(
                empty.view(-1, 1, 1), torch.zeros_like(embeddings), embeddings
            )
            pooled = torch.where(empty.view(-1, 1), torch.zeros_like(pooled), pooled)
        # micro-conditioning: original size, crop (0, 0), target size, as SDXL was trained
        height, width = batch.height, batch.width
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeddings.dtype)
        added_cond_kwargs = {
            "text_embeds": pooled.to(device),
            "time_ids": time_ids.repeat(2 * batch.size, 1).to(device),
        }
    else:
        embeddings, truncated_rows = encode_prompts(pipe, negatives + prompts, clip_skip)
    truncated = [False] * len(batch.jobs)
    for (job, _), cut in zip(batch.rows, truncated_rows[batch.size :], strict=True):
        truncated[job] = truncated[job] or cut
    guidance = torch.tensor(
        [job.cfg_scale for job in batch.row_jobs], dtype=torch.float32, device=device
    ).view(-1, 1, 1, 1)
    return _Conditioning(embeddings.to(device), added_cond_kwargs, guidance, truncated)


def _initial_noise(batch: _Batch) -> torch.Tensor:
    shape = batch.latent_shape
    return torch.stack(
        [torch.randn(shape, generator=g, dtype=torch.float32) for g in batch.generators]
    ).to(batch.device)


def _timesteps(scheduler: Any, steps: int, strength: float) -> torch.Tensor:
    """The timesteps to run: all of them, or img2img's last `strength` share."""
    scheduler.set_timesteps(steps)
    timesteps: torch.Tensor = scheduler.timesteps
    if strength >= 1.0:
        return timesteps
    # (the epsilon absorbs float32 strengths from the wire: 0.9f * 10 = 8.99999)
    init = min(max(int(steps * strength + 1e-4), 1), steps)
    begin = max(steps - init, 0) * getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return timesteps[begin:]


def _prepare_masks(batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Inpainting: the soft masks (n,1,H,W) in pixels and (n,1,h,w) in latents, 1 = repaint."""
    masks = [
        prepare_mask(job.mask, batch.width, batch.height, job.mask_blur, job.invert_mask)  # type: ignore[arg-type]
        for job in batch.row_jobs
    ]
    pixel_mask = torch.from_numpy(np.stack(masks)).unsqueeze(1)
    latent_mask = torch.nn.functional.interpolate(
        pixel_mask, size=batch.latent_shape[1:], mode="area"
    ).to(batch.device)
    return pixel_mask, latent_mask


def _fill_pixels(batch: _Batch, originals: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """The pixels to start from: A1111's "fill" rows get blurred colours in the mask."""
    fills = [job.mask_fill for job in batch.row_jobs]
    if "fill" not in fills:
        return originals  # (the same tensor: its latents are not encoded twice)
    return torch.stack(
        [
            fill_masked(originals[row], (pixel_mask[row, 0] > 0.5).numpy())
            if fill == "fill"
            else originals[row]
            for row, fill in enumerate(fills)
        ]
    )


def _fill_latents(batch: _Batch, latents: torch.Tensor, hard_mask: torch.Tensor) -> None:
    """A1111's "latent noise" and "latent nothing" fills, in place, inside the mask."""
    for row, job in enumerate(batch.row_jobs):
        keep = 1 - hard_mask[row]
        if job.mask_fill == "latent_noise":
            # drawn after the row's initial noise, from the same generator
            fill_noise = torch.randn(batch.latent_shape, generator=batch.generators[row])
            latents[row] = latents[row] * keep + fill_noise.to(batch.device) * hard_mask[row]
        elif job.mask_fill == "latent_nothing":
            latents[row] = latents[row] * keep


def _blank_unet_extra(batch: _Batch) -> torch.Tensor:
    """A 9-channel UNet without a mask: repaint everything, from a blank image."""
    _, latent_height, latent_width = batch.latent_shape
    blank = encode_images(batch.pipe, torch.zeros((1, 3, batch.height, batch.width)))
    everywhere = torch.ones((batch.size, 1, latent_height, latent_width), device=batch.device)
    return torch.cat([everywhere, blank.expand(batch.size, -1, -1, -1)], dim=1)


def _prepare_latents(
    batch: _Batch, scheduler: Any, timesteps: torch.Tensor, noise: torch.Tensor
) -> _StartLatents:
    pipe = batch.pipe
    if batch.mode == "txt2img":
        extra = _blank_unet_extra(batch) if batch.nine_channels else None
        return _StartLatents(noise * scheduler.init_noise_sigma, unet_extra=extra)
    originals = torch.stack(
        [_to_tensor(job.init_image, batch.width, batch.height) for job in batch.row_jobs]  # type: ignore[arg-type]
    )
    start = _StartLatents(noise, originals)
    start_pixels = originals
    if batch.mode == "inpaint":
        start.pixel_mask, start.latent_mask = _prepare_masks(batch)
        start_pixels = _fill_pixels(batch, originals, start.pixel_mask)
    start.original_latents = encode_images(pipe, originals)
    init_latents = (
        start.original_latents if start_pixels is originals else encode_images(pipe, start_pixels)
    ).clone()
    if start.latent_mask is not None and start.pixel_mask is not None:
        hard_mask = (start.latent_mask > 0.5).float()
        _fill_latents(batch, init_latents, hard_mask)
        if batch.nine_channels:
            masked_pixels = originals * (start.pixel_mask < 0.5).float()
            start.unet_extra = torch.cat([hard_mask, encode_images(pipe, masked_pixels)], dim=1)
    if batch.nine_channels and start.unet_extra is None:
        # img2img on an inpainting model: its extra channels say "repaint everywhere", as
        # A1111 does by default (inpainting mask weight 1); without them the UNet cannot run
        start.unet_extra = _blank_unet_extra(batch)
    if batch.strength >= 1.0:
        start.latents = noise * scheduler.init_noise_sigma
    else:
        start.latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(batch.size))
    return start


def _keep_unmasked(
    scheduler: Any,
    latents: torch.Tensor,
    start: _StartLatents,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    index: int,
) -> torch.Tensor:
    """4-channel inpainting: outside the mask, the original noised to the next step's level."""
    assert start.original_latents is not None and start.latent_mask is not None
    if index < len(timesteps) - 1:
        next_step = timesteps[index + 1 : index + 2].repeat(len(latents))
        original = scheduler.add_noise(start.original_latents, noise, next_step)
    else:
        original = start.original_latents
    kept: torch.Tensor = (1 - start.latent_mask) * original + start.latent_mask * latents
    return kept


@torch.inference_mode()
def _denoise(
    batch: _Batch,
    scheduler: Any,
    timesteps: torch.Tensor,
    conditioning: _Conditioning,
    start: _StartLatents,
    noise: torch.Tensor,
    step_kwargs: dict[str, Any],
    started: float,
    should_stop: Callable[[], bool],
    on_step: Callable[[StepState], None] | None,
    done_before: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """The loop: a guided UNet pass and a scheduler step per timestep; the final latents.

    Progress counts `done_before` earlier passes of the run, out of `total` (hires fix: both)."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs = {**step_kwargs, "generator": batch.generators}
    latents = start.latents
    preview_latents = latents  # the newest estimate of the final image (x0 when the step has it)

    def preview_row(row: int) -> Image.Image:
        return latents_preview(batch.pipe, preview_latents[row : row + 1])

    total = total or len(timesteps)
    for index, t in enumerate(timesteps):
        if should_stop():
            raise GenerationCancelled()
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        if start.unet_extra is not None:
            extra = torch.cat([start.unet_extra, start.unet_extra])
            model_input = torch.cat([model_input, extra], dim=1)
        noise_pred = batch.pipe.unet(
            model_input,
            t,
            encoder_hidden_states=conditioning.embeddings,
            added_cond_kwargs=conditioning.added_cond_kwargs,
        ).sample
        uncond, cond = noise_pred.chunk(2)
        noise_pred = uncond + conditioning.guidance * (cond - uncond)
        out = scheduler.step(noise_pred, t, latents, **step_kwargs)
        latents = out.prev_sample
        if batch.mode == "inpaint" and not batch.nine_channels:
            latents = _keep_unmasked(scheduler, latents, start, noise, timesteps, index)
        x0 = getattr(out, "pred_original_sample", None)
        preview_latents = x0 if x0 is not None else latents
        if on_step is not None:
            elapsed = time.perf_counter() - started
            on_step(StepState(done_before + index + 1, total, elapsed, preview_row, batch.rows))
    return latents


@torch.inference_mode()
def _decode(
    batch: _Batch,
    latents: torch.Tensor,
    start: _StartLatents,
    skip_job: Callable[[int], bool] | None,
    on_image: Callable[[int, int, Image.Image], None] | None,
) -> list[list[Image.Image]]:
    """Images per job; inpainting keeps the original pixels outside the (blurred) mask."""
    images: list[list[Image.Image]] = [[] for _ in batch.jobs]
    for row, (job, index) in enumerate(batch.rows):
        if skip_job is not None and skip_job(job):
            continue
        image = decode_latents(batch.pipe, latents[row : row + 1])[0]
        if start.originals is not None and start.pixel_mask is not None:
            generated = _to_tensor(image, batch.width, batch.height)
            mask = start.pixel_mask[row]
            image = _to_pil(start.originals[row] * (1 - mask) + generated * mask)
        images[job].append(image)
        if on_image is not None:
            on_image(job, index, image)
    return images


# --------------------------------------------------------------------------- hires fix


@torch.inference_mode()
def _upscale(first: _Batch, second: _Batch, latents: torch.Tensor, upscaler: str) -> torch.Tensor:
    """The first pass's final latents enlarged to the second pass's size."""
    if upscaler in ("latent", "latent_nearest"):
        mode = "nearest" if upscaler == "latent_nearest" else "bilinear"
        return torch.nn.functional.interpolate(latents, size=second.latent_shape[1:], mode=mode)
    resample = _PIXEL_RESAMPLING[upscaler]
    pixels = [
        _to_tensor(image.resize((second.width, second.height), resample), second.width,
                   second.height)
        for image in decode_latents(first.pipe, latents)
    ]
    return encode_images(first.pipe, torch.stack(pixels))


def _second_pass_start(
    batch: _Batch, scheduler: Any, timesteps: torch.Tensor, upscaled: torch.Tensor,
    noise: torch.Tensor,
) -> _StartLatents:
    """img2img from the upscaled latents: noised to the second pass's first timestep."""
    if batch.strength >= 1.0:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(upscaled, noise, timesteps[:1].repeat(batch.size))
    extra = _blank_unet_extra(batch) if batch.nine_channels else None
    return _StartLatents(latents, unet_extra=extra)


# --------------------------------------------------------------------------- run_batch


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
    hires: HiresPass | None = None,
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
        hires: hires fix (txt2img only): the first pass at its size, then img2img at
            width x height; on_step counts the passes of both (StepState.total covers both).

    Returns:
        BatchResult with images per job (a skipped job gets an empty list).
    """
    if hires is not None:
        hires.check(width, height)
        batch = _Batch.of(pipe, jobs, hires.first_width, hires.first_height)
        if batch.mode != "txt2img":
            raise ValueError("hires fix applies to txt2img only")
    else:
        batch = _Batch.of(pipe, jobs, width, height)
    stop = should_stop or (lambda: False)
    started = time.perf_counter()
    spec, schedule_id = sampler_table.resolve(sampler, schedule)

    def new_scheduler() -> Any:
        return sampler_table.build_scheduler(pipe.scheduler.config, spec, schedule_id,
                                             sampler_options)

    scheduler = new_scheduler()
    step_kwargs = sampler_table.step_kwargs(spec, sampler_options)

    conditioning = _encode_batch_prompts(batch, clip_skip)
    noise = _initial_noise(batch)
    timesteps = _timesteps(scheduler, steps, batch.strength)
    total = len(timesteps)
    if hires is not None:  # the second pass's schedule first: progress counts both passes
        second = batch.resized(width, height, hires.denoising_strength)
        second_scheduler = new_scheduler()
        second_timesteps = _timesteps(second_scheduler, hires.steps or steps, second.strength)
        total += len(second_timesteps)
    start = _prepare_latents(batch, scheduler, timesteps, noise)
    latents = _denoise(batch, scheduler, timesteps, conditioning, start, noise, step_kwargs,
                       started, stop, on_step, total=total)
    if hires is not None:
        if stop():
            raise GenerationCancelled()
        upscaled = _upscale(batch, second, latents, hires.upscaler)
        noise = _initial_noise(second)
        if conditioning.added_cond_kwargs is not None:  # SDXL's size conditioning changed
            conditioning = _encode_batch_prompts(second, clip_skip)
        start = _second_pass_start(second, second_scheduler, second_timesteps, upscaled, noise)
        latents = _denoise(second, second_scheduler, second_timesteps, conditioning, start,
                           noise, step_kwargs, started, stop, on_step,
                           done_before=len(timesteps), total=total)
        batch = second
    if stop():
        raise GenerationCancelled()
    images = _decode(batch, latents, start, skip_job, on_image)
    return BatchResult(images, total, time.perf_counter() - started, conditioning.truncated)


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
    hires: HiresPass | None = None,
) -> list[Image.Image]:
    """One job as a batch of one: what txt2img, img2img and inpaint share."""
    return run_batch(pipe, [job], width=width, height=height, steps=steps, sampler=sampler,
                     schedule=schedule, sampler_options=sampler_options, on_step=on_step,
                     should_stop=should_stop, hires=hires).images[0]


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
    hires: HiresPass | None = None,
) -> list[Image.Image]:
    """Text to image: one image per seed (the model's native size unless given; with `hires`,
    width x height is the size after the second pass)."""
    w, h = _defaults(pipe, width, height)
    job = ImageJob(prompt, negative_prompt, list(seeds), cfg_scale)
    return _single(pipe, job, w, h, steps, sampler, schedule, sampler_options,
                   on_step, should_stop, hires)


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
    "HIRES_UPSCALERS",
    "MASK_FILLS",
    "BatchResult",
    "GenerationCancelled",
    "HiresPass",
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
