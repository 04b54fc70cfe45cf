"""The DreamBooth LightningModule and its step-indexed data.

Training is deterministic from (seed, micro-batch index, rank): which instance and class images
form micro-batch i, their crops and flips, the latent sample, the noise and the timesteps are
all drawn from generators seeded by that triple. The data position is therefore the optimiser
step itself, and resuming from a checkpoint at step k replays exactly what an uninterrupted run
would have done from step k on.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

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


@dataclass
class DataSpec:
    seed: int
    batch_size: int
    resolution: int
    center_crop: bool
    random_flip: bool
    caption_dropout: float = 0.0
    random_crop_scale: float = 0.0  # 0 = off; else the smallest zoomed square's share of the side


class StepBatches(Dataset):  # type: ignore[type-arg]
    """Item i is micro-batch i for this rank: instance images (+ class images) and token ids."""

    def __init__(self, spec: DataSpec, instance: Sequence[torch.Tensor],
                 instance_ids: torch.Tensor, class_images: Sequence[torch.Tensor] = (),
                 class_ids: torch.Tensor | None = None, total: int = 0,
                 empty_ids: torch.Tensor | None = None) -> None:
        self.spec = spec
        self.instance = list(instance)
        self.instance_ids = instance_ids  # [n_instance, L]
        self.class_images = list(class_images)
        self.class_ids = class_ids  # [n_class, L]: each class image's own prompt
        self.total = total
        self.empty_ids = empty_ids  # [L]: the empty prompt, for caption dropout
        self.rank = 0
        self.world_size = 1

    def __len__(self) -> int:
        return self.total

    def _order(self, n: int, position: int, salt: int) -> int:
        epoch, k = divmod(position, n)
        perm = list(range(n))
        random.Random(self.spec.seed * SEED_STRIDE + salt * 7919 + epoch).shuffle(perm)
        return perm[k]

    def _view(self, t: torch.Tensor, rng: random.Random) -> torch.Tensor:
        res = self.spec.resolution
        _, h, w = t.shape
        if self.spec.center_crop:
            top, left = (h - res) // 2, (w - res) // 2
        else:
            top, left = rng.randint(0, h - res), rng.randint(0, w - res)
        t = t[:, top:top + res, left:left + res]
        if 0 < self.spec.random_crop_scale < 1:
            side = round(res * rng.uniform(self.spec.random_crop_scale, 1.0))
            top, left = rng.randint(0, res - side), rng.randint(0, res - side)
            t = F.interpolate(t[None, :, top:top + side, left:left + side], size=(res, res),
                              mode="bilinear", antialias=True, align_corners=False)[0]
        if self.spec.random_flip and rng.random() < 0.5:
            t = t.flip(-1)
        return t

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = i * self.world_size + self.rank  # global micro-batch index across ranks
        rng = random.Random(self.spec.seed * SEED_STRIDE + g)
        bs = self.spec.batch_size
        idx = [self._order(len(self.instance), g * bs + j, 1) for j in range(bs)]
        # an instance picture's alpha (4th channel) goes through the same crop, zoom and flip
        views = [self._view(self.instance[k], rng) for k in idx]
        pixels = [v[:3] for v in views]
        ids = [self.instance_ids[k] for k in idx]
        if self.class_images:
            assert self.class_ids is not None
            cidx = [self._order(len(self.class_images), g * bs + j, 2) for j in range(bs)]
            pixels += [self._view(self.class_images[k], rng) for k in cidx]
            ids += [self.class_ids[k] for k in cidx]
        if self.spec.caption_dropout > 0 and self.empty_ids is not None:
            ids = [self.empty_ids if rng.random() < self.spec.caption_dropout else t for t in ids]
        batch = {"pixels": torch.stack(pixels), "input_ids": torch.stack(ids),
                 "n_instance": bs, "noise_seed": self.spec.seed * SEED_STRIDE + g, "index": i}
        if any(v.shape[0] == 4 for v in views):
            batch["masks"] = torch.stack([v[3:] if v.shape[0] == 4 else torch.ones_like(v[:1])
                                          for v in views])
        return batch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor,
               background_weight: float) -> torch.Tensor:
    """MSE weighted per latent cell by the highest alpha among its pixels (a cell with any of
    the subject counts whole: the VAE spreads an edge over the cell), `background_weight` where
    the cell is all transparent. All-ones masks give the plain MSE."""
    cover = F.adaptive_max_pool2d(masks, pred.shape[-2:])
    weight = background_weight + (1 - background_weight) * cover
    err = (pred - target).pow(2).mean(dim=1, keepdim=True)
    return (err * weight).sum() / weight.sum().clamp_min(1e-8)


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

    @property
    def trains_text_encoder(self) -> bool:
        """Some text encoder weights change (all of them, or the identifier's embedding)."""
        return self.train_text_encoder or self.identifier_learning_rate > 0


class DreamBoothModule(L.LightningModule):
    """UNet (+ optional text encoder) trained, VAE frozen in eval mode.

    Loss = MSE(instance) + prior_loss_weight * MSE(class) (the instance MSE weighted by the
    pictures' alpha in masked training); the target is the noise (epsilon
    models) or the velocity (v-prediction models), as the base model's scheduler config says.
    """

    def __init__(self, components: dict[str, Any], optim: OptimSpec,
                 dataset: StepBatches | None = None, lora: dict[str, Any] | None = None) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        self.unet = components["unet"]
        self.text_encoder = components["text_encoder"]
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
                inject_adapter_in_model(LoraConfig(
                    r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                    init_lora_weights="gaussian",
                    target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
                    self.text_encoder, adapter_name="default")
        else:
            self.unet.requires_grad_(True)
            if optim.train_text_encoder:
                self.text_encoder.requires_grad_(True)
            if optim.identifier_learning_rate > 0:
                self._train_identifier_embedding(optim.identifier_token_ids)
        if optim.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if optim.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()
        self.grad_norm = 0.0
        self.last: dict[str, float] = {}
        # EMA of the trainable weights (name -> fp32 tensor), when ema_decay > 0
        self.ema: dict[str, torch.Tensor] | None = None
        alphas = self.noise_scheduler.alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas.clone().float(), persistent=False)

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
            self.text_encoder.eval()
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
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
            latents = (dist.mean + dist.std * eps).float() * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],), generator=gen).to(self.device)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        hidden = self.text_encoder(batch["input_ids"].to(self.device))[0]
        pred = self.unet(noisy, t, hidden).sample.float()
        if self.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * latents
        elif self.prediction_type == "epsilon":
            target = noise
        else:
            target = latents
        if "masks" in batch and self.optim.masked_loss_background_weight is not None:
            inst = masked_mse(pred[:n_inst], target[:n_inst], batch["masks"].to(pred),
                              self.optim.masked_loss_background_weight)
        else:
            inst = F.mse_loss(pred[:n_inst], target[:n_inst])
        prior = F.mse_loss(pred[n_inst:], target[n_inst:]) if pred.shape[0] > n_inst else None
        loss = inst if prior is None else inst + self.optim.prior_loss_weight * prior
        return loss, inst, prior

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, inst, prior = self.compute_loss(batch)
        self.last = {"loss": float(loss.detach()), "instance_loss": float(inst.detach())}
        if prior is not None:
            self.last["prior_loss"] = float(prior.detach())
        self.log("train/loss", loss.detach(), prog_bar=False, on_step=True, batch_size=1)
        self.log("train/instance_loss", inst.detach(), on_step=True, batch_size=1)
        if prior is not None:
            self.log("train/prior_loss", prior.detach(), on_step=True, batch_size=1)
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
        if te:
            groups.append({"params": te, "lr": o.text_encoder_learning_rate})
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
