"""The DreamBooth LightningModule and its step-indexed data.

Training is deterministic from (seed, micro-batch index, rank): which instance and class images
form micro-batch i, their crops and flips, the latent sample, the noise and the timesteps are
all drawn from generators seeded by that triple (so are a bucketed micro-batch's bucket and the
offset noise). The data position is therefore the optimiser step itself, and resuming from a
checkpoint at step k replays exactly what an uninterrupted run would have done from step k on.

A job with several concepts (ConceptMix) fills its micro-batches' slots from a fixed
interleaving of the concepts, each weighted by its pictures x repeats and spread evenly (two
equal concepts alternate, so a batch of two holds one of each); within a concept its pictures
come in a seeded epoch order, and each slot of a concept with prior preservation brings one of
that concept's class images, whose loss weighs that concept's prior weight.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from boothstudio.services.trainer import sdxl

SEED_STRIDE = 1_000_003


def check_target_modules(model: torch.nn.Module, targets: Sequence[str]) -> None:
    """Every LoRA target names a module of `model` (peft's rule: the whole name or its dotted
    tail); the service checked their form, only the model knows whether they exist."""
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"config.lora.target_modules: {missing} name no module of the "
                         f"{type(model).__name__}")


def image_tensor(img: Image.Image, resolution: int) -> torch.Tensor:
    """RGB in [-1, 1] (plus, for an RGBA image, its alpha in [0, 1] as a 4th channel), resized
    so that the short side is `resolution` (not cropped yet)."""
    img = img.convert("RGBA" if img.mode == "RGBA" else "RGB")
    scale = resolution / min(img.size)
    if img.size != (resolution, resolution):
        size = (max(resolution, round(img.width * scale)),
                max(resolution, round(img.height * scale)))
        img = img.resize(size, Image.BICUBIC)
    bands = len(img.getbands())
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    t = t.view(img.height, img.width, bands).permute(2, 0, 1).float()
    rgb = t[:3] / 127.5 - 1.0
    return torch.cat([rgb, t[3:] / 255.0]) if bands == 4 else rgb


MAX_BUCKET_RATIO = 2.0


def latent_multiple(vae: Any, unet: Any) -> int:
    """What a picture's sides must be a multiple of for this model: the VAE's downsampling
    times the UNet's (its latents go through every down block whole)."""
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(unet.config.down_block_types) - 1)
    return int(vae_factor * unet_factor)


def aspect_buckets(resolution: int, multiple: int,
                   max_ratio: float = MAX_BUCKET_RATIO) -> list[tuple[int, int]]:
    """(width, height) buckets: sides multiples of `multiple`, at most resolution^2 pixels,
    each width with the tallest height that fits, long side at most `max_ratio` times the
    short one; the square always included. Sorted by aspect ratio (width / height)."""
    area = resolution * resolution
    out = {(resolution, resolution)}
    width = multiple
    while width <= resolution * max_ratio:
        height = area // width // multiple * multiple
        if height >= multiple and max(width / height, height / width) <= max_ratio:
            out.add((width, height))
        width += multiple
    return sorted(out, key=lambda wh: (wh[0] / wh[1], wh[0]))


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]
                   ) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width / height (in log ratio; a tie goes to
    the squarer bucket)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - ratio),
                                        abs(math.log(wh[0] / wh[1]))))


def cover(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`t` [C, H, W] scaled (keeping its aspect ratio) so that it covers `size` (height,
    width) with its shorter fit exact; not cropped yet."""
    _, h, w = t.shape
    scale = max(size[0] / h, size[1] / w)
    target = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    if target == (h, w):
        return t
    return F.interpolate(t[None], size=target, mode="bilinear", antialias=True,
                         align_corners=False)[0]


@dataclass
class DataSpec:
    seed: int
    batch_size: int
    resolution: int
    center_crop: bool
    random_flip: bool
    caption_dropout: float = 0.0
    random_crop_scale: float = 0.0  # 0 = off; else the smallest zoomed square's share of the side
    # aspect-ratio buckets, sides a multiple of this (0 = off: square crops)
    bucket_multiple: int = 0
    # SDXL: each micro-batch also carries its images' size conditioning ("time_ids")
    size_conditioning: bool = False


@dataclass(frozen=True)
class ConceptMix:
    """The concepts of a job with several: which concept each picture is of, and per concept
    how often its pictures are shown (repeats) and how much its class images' loss weighs."""

    instance: Sequence[int]  # concept of each instance picture
    classes: Sequence[int]  # concept of each class image
    repeats: Sequence[int]  # per concept
    prior_weights: Sequence[float]  # per concept

    def pattern(self) -> list[int]:
        """One period of the slot interleaving: concept k appears pictures_k x repeats_k
        times, spread evenly (smooth weighted round robin, no randomness)."""
        weights = [self.instance.count(k) * r for k, r in enumerate(self.repeats)]
        credit = [0] * len(weights)
        out = []
        for _ in range(sum(weights)):
            for k, w in enumerate(weights):
                credit[k] += w
            k = max(range(len(weights)), key=lambda j: credit[j])
            credit[k] -= sum(weights)
            out.append(k)
        return out


def _instance_salt(concept: int) -> int:
    return 1 if concept == 0 else 10_000 + concept


def _class_salt(concept: int) -> int:
    return 2 if concept == 0 else 20_000 + concept


class StepBatches(Dataset):  # type: ignore[type-arg]
    """Item i is micro-batch i for this rank: instance images (+ class images) and token ids.
    Without `mix`, one concept (all pictures are one subject's)."""

    def __init__(self, spec: DataSpec, instance: Sequence[torch.Tensor],
                 instance_ids: torch.Tensor, class_images: Sequence[torch.Tensor] = (),
                 class_ids: torch.Tensor | None = None, total: int = 0,
                 empty_ids: torch.Tensor | None = None, mix: ConceptMix | None = None,
                 instance_sizes: Sequence[tuple[int, int]] = (),
                 class_sizes: Sequence[tuple[int, int]] = ()) -> None:
        self.spec = spec
        # the pictures' original (height, width), for size conditioning (default: as given)
        self.instance_sizes = list(instance_sizes) or [tuple(t.shape[1:]) for t in instance]
        self.class_sizes = list(class_sizes) or [tuple(t.shape[1:]) for t in class_images]
        self.mix = mix
        n = len(instance)
        concept_of = list(mix.instance) if mix else [0] * n
        class_of = list(mix.classes) if mix else [0] * len(class_images)
        concepts = len(mix.repeats) if mix else 1
        # per concept: its pictures and class images (indices into the flat lists)
        self.pictures = [[k for k in range(n) if concept_of[k] == c] for c in range(concepts)]
        self.class_members = [[k for k in range(len(class_images)) if class_of[k] == c]
                              for c in range(concepts)]
        self.concept_of = concept_of
        self.slots = mix.pattern() if mix else [0] * n
        # occurrences of each concept before each point of a period
        self.before: list[list[int]] = []
        seen = [0] * concepts
        for c in self.slots:
            self.before.append(list(seen))
            seen[c] += 1
        self.per_period = seen
        self.instance = list(instance)
        self.instance_ids = instance_ids  # [n_instance, L]
        self.class_images = list(class_images)
        self.class_ids = class_ids  # [n_class, L]: each class image's own prompt
        self.total = total
        self.empty_ids = empty_ids  # [L]: the empty prompt, for caption dropout
        self.rank = 0
        self.world_size = 1
        # bucketing: each instance picture's bucket (height, width) and the picture scaled to
        # cover it; the images of each bucket
        self.buckets: list[tuple[int, int]] = []
        self.members: dict[tuple[int, int], list[int]] = {}
        if spec.bucket_multiple:
            choices = aspect_buckets(spec.resolution, spec.bucket_multiple)
            for k, t in enumerate(self.instance):
                w, h = nearest_bucket(t.shape[2], t.shape[1], choices)
                self.buckets.append((h, w))
                self.members.setdefault((h, w), []).append(k)
                self.instance[k] = cover(t, (h, w))

    def __len__(self) -> int:
        return self.total

    def _order(self, n: int, position: int, salt: int) -> int:
        epoch, k = divmod(position, n)
        perm = list(range(n))
        random.Random(self.spec.seed * SEED_STRIDE + salt * 7919 + epoch).shuffle(perm)
        return perm[k]

    def _view(self, t: torch.Tensor, rng: random.Random, size: tuple[int, int] | None = None,
              corners: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """A crop of `size` (height, width; default the square resolution), zoomed and
        flipped as the spec says. Appends to `corners` the crop's top-left in the (flipped)
        picture, as SDXL's size conditioning counts it (flip first, then crop)."""
        rh, rw = size or (self.spec.resolution, self.spec.resolution)
        _, h, w = t.shape
        if self.spec.center_crop:
            top, left = (h - rh) // 2, (w - rw) // 2
        else:
            top, left = rng.randint(0, h - rh), rng.randint(0, w - rw)
        t = t[:, top:top + rh, left:left + rw]
        if 0 < self.spec.random_crop_scale < 1:
            share = rng.uniform(self.spec.random_crop_scale, 1.0)
            sh, sw = round(rh * share), round(rw * share)
            top, left = rng.randint(0, rh - sh), rng.randint(0, rw - sw)
            t = F.interpolate(t[None, :, top:top + sh, left:left + sw], size=(rh, rw),
                              mode="bilinear", antialias=True, align_corners=False)[0]
        flipped = self.spec.random_flip and rng.random() < 0.5
        if flipped:
            t = t.flip(-1)
        if corners is not None:
            corners.append((top, w - rw - left if flipped else left))
        return t

    def _slot(self, position: int) -> int:
        """The instance picture of slot `position` of the interleaving: its concept from the
        fixed pattern, then the concept's own epoch order (one concept: the plain epoch order
        over all pictures)."""
        period, offset = divmod(position, len(self.slots))
        concept = self.slots[offset]
        nth = period * self.per_period[concept] + self.before[offset][concept]
        members = self.pictures[concept]
        return members[self._order(len(members), nth, _instance_salt(concept))]

    def _instance_indices(self, g: int) -> list[int]:
        """Micro-batch g's instance pictures. Bucketed, the first comes from the interleaving
        at position g (each picture leads once per epoch) and the rest from the shuffled order
        of its bucket."""
        bs = self.spec.batch_size
        if not self.buckets:
            return [self._slot(g * bs + j) for j in range(bs)]
        first = self._slot(g)
        bucket = self.buckets[first]
        members = self.members[bucket]
        salt = 100 + sorted(self.members).index(bucket)
        return [first] + [members[self._order(len(members), g * (bs - 1) + j, salt)]
                          for j in range(bs - 1)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = i * self.world_size + self.rank  # global micro-batch index across ranks
        rng = random.Random(self.spec.seed * SEED_STRIDE + g)
        bs = self.spec.batch_size
        idx = self._instance_indices(g)
        size = self.buckets[idx[0]] if self.buckets else None
        # an instance picture's alpha (4th channel) goes through the same crop, zoom and flip
        corners: list[tuple[int, int]] = []
        views = [self._view(self.instance[k], rng, size, corners) for k in idx]
        originals = [self.instance_sizes[k] for k in idx]
        pixels = [v[:3] for v in views]
        ids = [self.instance_ids[k] for k in idx]
        if self.class_images:
            assert self.class_ids is not None
            # one class image of the slot's concept per slot (none for a concept without)
            cidx = []
            for j, k in enumerate(idx):
                members = self.class_members[self.concept_of[k]]
                if members:
                    cidx.append(members[self._order(len(members), g * bs + j,
                                                    _class_salt(self.concept_of[k]))])
            # (square) class images are scaled and cropped to the micro-batch's bucket
            pixels += [self._view(cover(self.class_images[k], size) if size else
                                  self.class_images[k], rng, size, corners) for k in cidx]
            originals += [self.class_sizes[k] for k in cidx]
            ids += [self.class_ids[k] for k in cidx]
        if self.spec.caption_dropout > 0 and self.empty_ids is not None:
            ids = [self.empty_ids if rng.random() < self.spec.caption_dropout else t for t in ids]
        batch = {"pixels": torch.stack(pixels), "input_ids": torch.stack(ids),
                 "n_instance": bs, "noise_seed": self.spec.seed * SEED_STRIDE + g, "index": i}
        if self.spec.size_conditioning:
            target = tuple(pixels[0].shape[1:])
            batch["time_ids"] = torch.stack([sdxl.time_ids(o, c, target)  # type: ignore[arg-type]
                                             for o, c in zip(originals, corners, strict=True)])
        if self.mix is not None:
            batch["concepts"] = torch.tensor([self.concept_of[k] for k in idx])
            if self.class_images:
                batch["prior_weights"] = torch.tensor(
                    [float(self.mix.prior_weights[self.mix.classes[k]]) for k in cidx])
        if any(v.shape[0] == 4 for v in views):
            batch["masks"] = torch.stack([v[3:] if v.shape[0] == 4 else torch.ones_like(v[:1])
                                          for v in views])
        return batch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor,
               background_weight: float,
               sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE weighted per latent cell by the highest alpha among its pixels (a cell with any of
    the subject counts whole: the VAE spreads an edge over the cell), `background_weight` where
    the cell is all transparent, and per sample by `sample_weights` [B]. All-ones masks give
    the plain MSE."""
    area = F.adaptive_max_pool2d(masks, pred.shape[-2:])
    weight = background_weight + (1 - background_weight) * area
    err = (pred - target).pow(2).mean(dim=1, keepdim=True)
    if sample_weights is not None:
        err = err * sample_weights.view(-1, 1, 1, 1)
    return (err * weight).sum() / weight.sum().clamp_min(1e-8)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor,
                 sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE; with `sample_weights` [B], each sample's mean squared error weighed by its own."""
    if sample_weights is None:
        return F.mse_loss(pred, target)
    per_sample = (pred - target).pow(2).flatten(1).mean(dim=1)
    return (per_sample * sample_weights).mean()


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights [B] of timesteps `t`: SNR = a / (1 - a), the weight
    min(SNR, gamma) / SNR for epsilon targets, min(SNR, gamma) / (SNR + 1) for velocity
    targets and min(SNR, gamma) for sample (x0) targets: in each case the loss then weighs a
    timestep like min(SNR, gamma) times the error of the predicted clean latents."""
    a = alphas_cumprod[t].double()
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":  # (a zero-SNR last timestep weighs 1, its limit)
        w = torch.where(snr > 0, clipped / snr.clamp_min(1e-30), torch.ones_like(snr))
    elif prediction_type == "v_prediction":
        w = clipped / (snr + 1)
    else:
        w = clipped
    return w.float()


def training_noise(shape: torch.Size, generator: torch.Generator,
                   offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise; with `offset`, plus `offset` times one Gaussian draw per image and
    channel, the same over the whole image (offset noise). Without it the draws are exactly
    the plain noise's."""
    noise = torch.randn(shape, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn(shape[0], shape[1], 1, 1, generator=generator)
    return noise


class ResumableSampler(Sampler[int]):
    """Yields micro-batch indices from the current training position to the end."""

    def __init__(self, total: int, start: Callable[[], int]) -> None:
        self.total = total
        self.start = start

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[int]:
        return iter(range(min(self.start(), self.total), self.total))


@dataclass
class OptimSpec:
    learning_rate: float
    text_encoder_learning_rate: float
    weight_decay: float
    lr_scheduler: str
    lr_warmup_steps: int
    total_steps: int
    use_8bit_adam: bool = False
    train_text_encoder: bool = False
    prior_loss_weight: float = 1.0
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0
    # the identifier's embedding rows train at their own rate (0 = off)
    identifier_learning_rate: float = 0.0
    identifier_token_ids: tuple[int, ...] = ()
    # masked training: weight of the instance pictures' transparent part (None = off)
    masked_loss_background_weight: float | None = None
    # min-SNR-gamma loss weighting (0 = off) and offset noise (0 = off)
    min_snr_gamma: float = 0.0
    offset_noise: float = 0.0
    # SDXL's second text encoder (None = text_encoder_learning_rate)
    text_encoder_2_learning_rate: float | None = None

    @property
    def trains_text_encoder(self) -> bool:
        """Some text encoder weights change (all of them, or the identifier's embedding)."""
        return self.train_text_encoder or self.identifier_learning_rate > 0


class DreamBoothModule(L.LightningModule):
    """UNet (+ optional text encoder) trained, VAE frozen in eval mode.

    Loss = MSE(instance) + prior_loss_weight * MSE(class) (the instance MSE weighted by the
    pictures' alpha in masked training, each sample's by its min-SNR-gamma weight when that
    is on); the target is the noise (epsilon models) or the velocity (v-prediction models), as
    the base model's scheduler config says.
    """

    def __init__(self, components: dict[str, Any], optim: OptimSpec,
                 dataset: StepBatches | None = None, lora: dict[str, Any] | None = None) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet = components["unet"]
        self.text_encoder = components["text_encoder"]
        # SDXL's second text encoder (None for SD 1.x/2.x)
        self.text_encoder_2 = components.get("text_encoder_2")
        self.vae = components["vae"]
        self.tokenizer = components["tokenizer"]
        self.base_scheduler = components["scheduler"]
        self.noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        self.optim = optim
        self.dataset = dataset
        self.lora = lora
        self.strict_loading = False  # checkpoints hold only the trained weights
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.text_encoder.requires_grad_(False)
        if self.text_encoder_2 is not None:
            self.text_encoder_2.requires_grad_(False)
        if lora is not None:
            from peft import LoraConfig

            self.unet.requires_grad_(False)
            check_target_modules(self.unet, lora["target_modules"])
            self.unet.add_adapter(LoraConfig(
                r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                init_lora_weights="gaussian", target_modules=list(lora["target_modules"])))
            if optim.train_text_encoder:
                from peft import inject_adapter_in_model

                # peft itself, not transformers' add_adapter: that one demands a newer peft
                # than PyPI has for the transformers we pin (diffusers loads it the same way)
                for encoder in self.text_encoders:
                    inject_adapter_in_model(LoraConfig(
                        r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        init_lora_weights="gaussian",
                        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
                        encoder, adapter_name="default")
        else:
            self.unet.requires_grad_(True)
            if optim.train_text_encoder:
                for encoder in self.text_encoders:
                    encoder.requires_grad_(True)
            if optim.identifier_learning_rate > 0:
                self._train_identifier_embedding(optim.identifier_token_ids)
        if optim.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if optim.train_text_encoder:
                for encoder in self.text_encoders:
                    encoder.gradient_checkpointing_enable()
        self.grad_norm = 0.0
        self.last: dict[str, float] = {}
        # token ids -> (embeddings, pooled) while the text encoders stay frozen
        self.prompt_cache: dict[bytes, tuple[torch.Tensor, torch.Tensor | None]] = {}
        # EMA of the trainable weights (name -> fp32 tensor), when ema_decay > 0
        self.ema: dict[str, torch.Tensor] | None = None
        alphas = self.noise_scheduler.alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas.clone().float(), persistent=False)

    @property
    def text_encoders(self) -> list[Any]:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    def _train_identifier_embedding(self, token_ids: tuple[int, ...]) -> None:
        """Only the identifier's rows of the embedding table get gradients; the others stay
        as they are (their gradient is masked, and AdamW without weight decay leaves a row
        whose gradient is always zero where it was)."""
        table = self.text_encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        rows = torch.zeros(table.shape[0], 1, dtype=table.dtype)
        rows[list(token_ids)] = 1
        table.register_hook(lambda grad: grad * rows.to(grad))

    # keep the frozen parts in eval mode whatever Lightning asks for
    def train(self, mode: bool = True) -> DreamBoothModule:
        super().train(mode)
        self.vae.eval()
        if not self.optim.train_text_encoder:
            for encoder in self.text_encoders:
                encoder.eval()
        return self

    def trainable_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    # -- data

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        assert self.dataset is not None
        self.dataset.rank = self.global_rank
        self.dataset.world_size = self.trainer.world_size
        accum = self.trainer.accumulate_grad_batches
        sampler = ResumableSampler(len(self.dataset), lambda: self.trainer.global_step * accum)
        return DataLoader(self.dataset, batch_size=None, sampler=sampler, num_workers=0)

    # -- loss

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor,
                                                           torch.Tensor | None]:
        pixels = batch["pixels"].to(self.device)
        n_inst = int(batch["n_instance"])
        gen = torch.Generator().manual_seed(int(batch["noise_seed"]))
        # SDXL's VAE overflows in fp16: it encodes in fp32 whatever the mixed precision
        keep_fp32 = torch.autocast(self.device.type, enabled=False) if self.text_encoder_2 \
            is not None else contextlib.nullcontext()
        with torch.no_grad(), keep_fp32:
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
            latents = (dist.mean + dist.std * eps).float() * self.vae.config.scaling_factor
        noise = training_noise(latents.shape, gen, self.optim.offset_noise).to(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],), generator=gen).to(self.device)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        hidden, pooled = self._encode_prompts(batch["input_ids"].to(self.device))
        if pooled is None:
            pred = self.unet(noisy, t, hidden).sample.float()
        else:
            added = {"text_embeds": pooled, "time_ids": batch["time_ids"].to(self.device)}
            pred = self.unet(noisy, t, hidden, added_cond_kwargs=added).sample.float()
        if self.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * latents
        elif self.prediction_type == "epsilon":
            target = noise
        else:
            target = latents
        w = None
        if self.optim.min_snr_gamma > 0:
            w = min_snr_weights(self.alphas_cumprod, t, self.optim.min_snr_gamma,
                                self.prediction_type).to(pred)
        w_inst, w_prior = (None, None) if w is None else (w[:n_inst], w[n_inst:])
        if "masks" in batch and self.optim.masked_loss_background_weight is not None:
            inst = masked_mse(pred[:n_inst], target[:n_inst], batch["masks"].to(pred),
                              self.optim.masked_loss_background_weight, w_inst)
        else:
            inst = weighted_mse(pred[:n_inst], target[:n_inst], w_inst)
        prior = (weighted_mse(pred[n_inst:], target[n_inst:], w_prior)
                 if pred.shape[0] > n_inst else None)
        if prior is None:
            loss = inst
        elif "prior_weights" in batch:  # several concepts: each class image its concept's
            pw = batch["prior_weights"].to(pred)
            loss = inst + weighted_mse(pred[n_inst:], target[n_inst:],
                                       pw if w_prior is None else w_prior * pw)
        else:
            loss = inst + self.optim.prior_loss_weight * prior
        return loss, inst, prior

    def _encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt embeddings, SDXL's pooled embeddings or None) of token ids."""
        if self.text_encoder_2 is None:
            return self.text_encoder(ids)[0], None
        return sdxl.encode_prompt(self.text_encoder, self.text_encoder_2, ids)

    def _encode_prompts(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text conditioning of a micro-batch; with frozen text encoders, each prompt's
        is computed once and kept (a job has a few distinct prompts: its pictures' captions,
        the class prompts and the empty one)."""
        if self.optim.trains_text_encoder:
            return self._encode(ids)
        keys = [row.cpu().numpy().tobytes() for row in ids]
        for j, key in enumerate(keys):
            if key not in self.prompt_cache:  # one at a time: the same whichever batch it is in
                with torch.no_grad():
                    hidden, pooled = self._encode(ids[j:j + 1])
                self.prompt_cache[key] = (hidden[0], None if pooled is None else pooled[0])
        rows = [self.prompt_cache[k] for k in keys]
        hidden = torch.stack([h for h, _ in rows])
        return hidden, None if rows[0][1] is None else torch.stack([p for _, p in rows])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, inst, prior = self.compute_loss(batch)
        # the job callback reports these and writes them to the loggers once per optimizer
        # step; Lightning's self.log machinery cost ~2.5 ms a step for three scalars
        self.last = {"loss": float(loss.detach()), "instance_loss": float(inst.detach())}
        if prior is not None:
            self.last["prior_loss"] = float(prior.detach())
        return loss

    # -- optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        from diffusers.optimization import get_scheduler

        o = self.optim
        unet_params = [p for p in self.unet.parameters() if p.requires_grad]
        groups = [{"params": unet_params, "lr": o.learning_rate}]
        table = self.text_encoder.get_input_embeddings().weight
        own_rate = o.identifier_learning_rate > 0 and self.lora is None
        te = [p for p in self.text_encoder.parameters()
              if p.requires_grad and not (own_rate and p is table)]
        te2 = [p for encoder in self.text_encoders[1:] for p in encoder.parameters()
               if p.requires_grad]
        if o.text_encoder_2_learning_rate is None:
            te, te2 = te + te2, []
        if te:
            groups.append({"params": te, "lr": o.text_encoder_learning_rate})
        if te2:
            groups.append({"params": te2, "lr": o.text_encoder_2_learning_rate})
        if own_rate:
            groups.append({"params": [table], "lr": o.identifier_learning_rate,
                           "weight_decay": 0.0})
        if o.use_8bit_adam:
            import bitsandbytes as bnb  # only resolved on GPU hosts that have it

            opt: torch.optim.Optimizer = bnb.optim.AdamW8bit(groups, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, weight_decay=o.weight_decay)
        sched = get_scheduler(o.lr_scheduler, opt, num_warmup_steps=o.lr_warmup_steps,
                              num_training_steps=o.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        max_norm = float(gradient_clip_val) if gradient_clip_val else float("inf")
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    # -- EMA of the trained weights

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per optimiser step, right after it: fold the new weights into the average."""
        decay = self.optim.ema_decay
        if decay <= 0:
            return
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        if self.ema is None:
            self.ema = {n: p.detach().float().clone() for n, p in params.items()}
            return
        # warm-up: early averages follow the weights closely (as diffusers' EMAModel does)
        step = self.trainer.global_step if self._trainer is not None else 0
        d = min(decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for n, p in params.items():
                self.ema[n].mul_(d).add_(p.detach().float(), alpha=1 - d)

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside: the trainable weights are the EMA (when there is one); restored after."""
        if self.ema is None:
            yield
            return
        params = dict(self.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.ema}
        with torch.no_grad():
            for n, v in self.ema.items():
                params[n].copy_(v.to(params[n].dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, v in saved.items():
                    params[n].copy_(v)

    # -- checkpoints: only trained weights, plus RNG states

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in keep}
        checkpoint["boothstudio_rng"] = {
            "torch": torch.get_rng_state(), "python": random.getstate()}
        if self.ema is not None:
            checkpoint["boothstudio_ema"] = {n: v.clone() for n, v in self.ema.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "boothstudio_ema" in checkpoint:
            self.ema = {n: v.float().clone() for n, v in checkpoint["boothstudio_ema"].items()}
        rng = checkpoint.get("boothstudio_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
