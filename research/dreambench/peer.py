"""The peer on the toy DreamBench: diffusers' examples/dreambooth/train_dreambooth.py's algorithm,
written again here in plain PyTorch + diffusers (no Lightning, no BoothStudio trainer code), on
the embedded model, with bench.py's instance pictures, steps, batch and learning rate, scored
with bench.py's own evaluation.

    .venv/bin/python -m research.dreambench.peer --threads 1 [--seed 0] [--out DIR]

What the peer does (the script's defaults unless said):
- one fixed instance prompt for every picture ("a zwx circle"; no per-image captions) and one
  class prompt ("a circle"), tokenized to the tokenizer's full length, no attention mask;
- class images sampled from the class prompt with the pipeline's own defaults (scheduler,
  steps, guidance), before training;
- pictures resized (short side, bilinear) and randomly cropped to the resolution, whole (no
  masked loss, no flip), in [-1, 1];
- each batch: `batch_size` instance pictures then as many class pictures (item i of an epoch is
  instance i mod 4 and class i mod 72, the items shuffled each epoch); one forward pass;
- VAE latents sampled from the posterior times the scaling factor, Gaussian noise, a uniform
  timestep per sample, the model's own DDPM schedule; target = noise (epsilon) or velocity
  (v-prediction);
- loss = MSE on the instance half + prior_loss_weight x MSE on the class half;
- AdamW (betas 0.9 / 0.999, weight decay 1e-2, eps 1e-8) over the UNet and, with
  --train-text-encoder (on here, as in bench.py), the whole text encoder at the same lr;
  constant lr; gradients clipped to norm 1.

Checkpoints every --every steps go to <out>/<run>/exports/step-NNNNNN.safetensors in the layout
bench.load_export reads; bench.evaluate_run then picks the best on the picking seeds and
re-scores it on fresh ones.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from research.dreambench import bench
from research.embedded_model.scenes import subject_images

INSTANCE_PROMPT = f"a {bench.IDENTIFIER} {bench.CLASS_NOUN}"
CLASS_PROMPT = f"a {bench.CLASS_NOUN}"


def picture_tensor(img: Image.Image, resolution: int, gen: torch.Generator) -> torch.Tensor:
    """Resize the short side to `resolution` (bilinear), crop a random square, scale to
    [-1, 1]: the script's image transform."""
    img = img.convert("RGB")
    scale = resolution / min(img.size)
    size = (max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale)))
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    left = int(torch.randint(0, img.width - resolution + 1, (1,), generator=gen))
    top = int(torch.randint(0, img.height - resolution + 1, (1,), generator=gen))
    img = img.crop((left, top, left + resolution, top + resolution))
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return t.view(resolution, resolution, 3).permute(2, 0, 1).float() / 127.5 - 1.0


def batches(n_instance: int, n_class: int, batch_size: int, steps: int,
            gen: torch.Generator) -> list[tuple[list[int], list[int]]]:
    """(instance indices, class indices) of each step: an epoch is max(n_instance, n_class)
    items, item i pairing instance i mod n_instance with class i mod n_class, shuffled; the
    last short batch of an epoch is kept, as a DataLoader without drop_last does."""
    length = max(n_instance, n_class or 0)
    out: list[tuple[list[int], list[int]]] = []
    while len(out) < steps:
        order = torch.randperm(length, generator=gen).tolist()
        for start in range(0, length, batch_size):
            items = order[start:start + batch_size]
            out.append(([i % n_instance for i in items],
                        [i % n_class for i in items] if n_class else []))
            if len(out) == steps:
                break
    return out


def dreambooth_loss(pred: torch.Tensor, target: torch.Tensor, prior_weight: float | None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(total loss, prior loss): with prior preservation (`prior_weight` not None) the batch's
    first half is the instance pictures and the second the class pictures, each half its own
    mean squared error; without it one MSE over the batch."""
    if prior_weight is None:
        return F.mse_loss(pred.float(), target.float()), None
    pred_inst, pred_prior = pred.chunk(2)
    target_inst, target_prior = target.chunk(2)
    prior = F.mse_loss(pred_prior.float(), target_prior.float())
    return F.mse_loss(pred_inst.float(), target_inst.float()) + prior_weight * prior, prior


def diffusion_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction type {kind!r} is not supported")


def encode_text(tokenizer: Any, text_encoder: Any, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def train_step(parts: dict[str, Any], pixels: torch.Tensor, prompts: list[str],
               prior_weight: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass of the UNet (and text encoder) over a batch: (loss, prior loss)."""
    with torch.no_grad():
        latents = parts["vae"].encode(pixels).latent_dist.sample()
        latents = latents * parts["vae"].config.scaling_factor
    noise = torch.randn_like(latents)
    scheduler = parts["noise_scheduler"]
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    hidden = encode_text(parts["tokenizer"], parts["text_encoder"], prompts)
    pred = parts["unet"](noisy, timesteps, hidden, return_dict=False)[0]
    return dreambooth_loss(pred, diffusion_target(scheduler, latents, noise, timesteps),
                           prior_weight)


def load_parts(model: Path) -> dict[str, Any]:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return {"pipe": pipe, "vae": pipe.vae, "unet": pipe.unet, "tokenizer": pipe.tokenizer,
            "text_encoder": pipe.text_encoder,
            "noise_scheduler": DDPMScheduler.from_pretrained(str(model), subfolder="scheduler")}


def class_images(pipe: Any, prompt: str, count: int, folder: Path,
                 sample_batch: int = 4) -> list[Image.Image]:
    """`count` class pictures from `prompt` with the pipeline's defaults (kept in `folder`, so
    a rerun with the same seed reuses them)."""
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("*.png"))
    for start in range(len(have), count, sample_batch):
        n = min(sample_batch, count - start)
        with torch.no_grad():
            for i, img in enumerate(pipe([prompt] * n).images):
                img.save(folder / f"{start + i:04d}.png")
    out = []
    for path in sorted(folder.glob("*.png"))[:count]:
        with Image.open(path) as im:
            out.append(im.convert("RGB"))
    return out


def save_export(parts: dict[str, Any], path: Path, text_encoder: bool) -> None:
    """The trained weights in bench.load_export's layout ("unet.<key>", "text_encoder.<key>")."""
    from safetensors.torch import save_file

    weights = {f"unet.{k}": v.detach().clone().contiguous()
               for k, v in parts["unet"].state_dict().items()}
    if text_encoder:
        weights |= {f"text_encoder.{k}": v.detach().clone().contiguous()
                    for k, v in parts["text_encoder"].state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))


def train_peer(name: str, out: Path, model: Path, *, seed: int, steps: int, lr: float,
               every: int, batch_size: int, class_count: int, prior_weight: float | None,
               text_encoder: bool, resolution: int = 64) -> Path:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    parts = load_parts(model)
    job = out / name
    instance = [img for img, _ in subject_images(4)]
    classes = (class_images(parts["pipe"], CLASS_PROMPT, class_count,
                            job / "class_images") if prior_weight is not None else [])
    unet, te = parts["unet"], parts["text_encoder"]
    parts["vae"].requires_grad_(False)
    te.requires_grad_(text_encoder)
    unet.train()
    te.train(text_encoder)
    params = (list(itertools.chain(unet.parameters(), te.parameters())) if text_encoder
              else list(unet.parameters()))
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8)  # constant lr: no scheduler to step
    t0 = time.time()
    for step, (inst, cls) in enumerate(batches(len(instance), len(classes), batch_size, steps,
                                               gen), start=1):
        pixels = torch.stack([picture_tensor(instance[i], resolution, gen) for i in inst]
                             + [picture_tensor(classes[i], resolution, gen) for i in cls])
        prompts = [INSTANCE_PROMPT] * len(inst) + [CLASS_PROMPT] * len(cls)
        loss, prior = train_step(parts, pixels, prompts, prior_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps:
            extra = f" prior {prior.item():.4f}" if prior is not None else ""
            print(f"  {name} step {step}/{steps} loss {loss.item():.4f}{extra} "
                  f"{step / (time.time() - t0):.2f} step/s", flush=True)
        if step % every == 0 or step == steps:
            save_export(parts, job / "exports" / f"step-{step:06d}.safetensors", text_encoder)
    return job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.dreambench.peer")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench-results/dreambench-peer"))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=4,
                   help="instance pictures per step (as many class pictures with the prior)")
    p.add_argument("--class-images", type=int, default=72)
    p.add_argument("--prior-weight", type=float, default=1.0)
    p.add_argument("--no-prior", action="store_true", help="without prior preservation")
    p.add_argument("--unet-only", action="store_true", help="freeze the text encoder")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--confirm-seeds", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", default="0", help="training seed, or a list (0,1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from boothstudio.services.diffusion.loading import embedded_model_dir

    model = args.model or embedded_model_dir()
    # the fields bench.render reads
    args.class_noun, args.lr_scheduler, args.captions = bench.CLASS_NOUN, "constant", False
    args.recipe = (f"peer (diffusers train_dreambooth.py's algorithm; prompts "
                   f"'{INSTANCE_PROMPT}' / '{CLASS_PROMPT}', no masks, AdamW wd 1e-2, clip 1)")
    t0 = time.time()
    pipe, base_state, seeds, results = bench.start_bench(args, model)
    train_seeds = [int(x) for x in str(args.seed).split(",")]
    for seed in train_seeds:
        name = "peer" if len(train_seeds) == 1 else f"peer-seed{seed}"
        job = train_peer(name, args.out, model, seed=seed, steps=args.steps, lr=args.lr,
                         every=args.every, batch_size=args.batch_size,
                         class_count=args.class_images,
                         prior_weight=None if args.no_prior else args.prior_weight,
                         text_encoder=not args.unet_only)
        results["runs"][name] = bench.evaluate_run(name, job / "exports", pipe, base_state,
                                                   seeds, args)
    bench.finish(results, args, t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
