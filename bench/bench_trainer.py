"""Trainer benchmarks, each against a baseline measured in the same run.

1. DreamBooth step time through the service's Lightning path (run_job: LightningModule, Trainer,
   the job callback with metrics/loggers) / a plain PyTorch loop doing the same work on the same
   model and batches (goal <= 1.02).
2. Peak RSS of the two (goal <= 1.1). Each measurement runs in its own fresh process; A and B are
   interleaved `--repeats` times and the medians are compared.
3. Wall time of a second job whose class images are cached / the first job that generated them.

    .venv/bin/python bench/bench_trainer.py [--model DIR] [--steps 30] [--repeats 3]

Default model: the embedded one when its weights are there, else an untrained model of the same
architecture (built into a temporary folder). One torch thread per process by default (the CI
box has 2 shared cores; pass --threads 0 for torch's default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from bench.common import child_result  # noqa: E402


def _job_dir(tmp: Path, name: str, pngs: int = 4) -> Path:
    from research.embedded_model.scenes import subject_images

    d = tmp / name
    (d / "instance").mkdir(parents=True, exist_ok=True)
    for i, (img, _) in enumerate(subject_images(pngs)):
        img.save(d / "instance" / f"{i}.png")
    return d


def _config(steps: int, prior: bool, class_images: int = 4, warm: int = 0):
    from boothstudio.services.trainer.options import Limits, resolve
    from boothstudio.v1 import trainer_pb2 as P

    cfg = P.DreamBoothConfig(base_model_id="bench", class_noun="circle", identifier="zwx",
                             max_train_steps=steps, seed=5, learning_rate=1e-4,
                             train_text_encoder=True)
    cfg.instance_images.add(data=b"", filename="x.png")
    if prior:
        cfg.prior_preservation.enabled = True
        cfg.prior_preservation.class_image_count = class_images
    cfg.instance_images[0].data = _png()
    return resolve(cfg, base_model={"native_resolution": 64}, limits=Limits()).config


def _png() -> bytes:
    import io

    from research.embedded_model.scenes import subject_images

    buf = io.BytesIO()
    subject_images(1)[0][0].save(buf, format="PNG")
    return buf.getvalue()


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------- children


def child_lightning(model: str, tmp: Path, steps: int, warm: int) -> dict:
    """The service's path: run_job with class images already cached; time steps warm..steps."""
    import lightning as L

    from boothstudio.services.trainer.train import JobSpec, Reporter, run_job

    marks: dict[int, float] = {}
    rss: list[int] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:  # type: ignore[no-untyped-def]
            marks.setdefault(trainer.global_step, time.perf_counter())
            if trainer.global_step == steps:
                rss.append(_peak_rss())

    job = _job_dir(tmp, f"lightning-{time.time_ns()}")
    cfg = _config(steps, prior=True)
    cfg.sample_every_steps = 0
    spec = JobSpec("bench", job, cfg, {"id": "bench", "source_path": model, "format": "diffusers"},
                   tmp / "cache", tmp / "memo.json", sample_steps=1, extra_callbacks=[Clock()])
    run_job(spec, Reporter())
    return {"step_s": (marks[steps] - marks[warm]) / (steps - warm), "peak_rss": rss[0]}


def child_plain(model: str, tmp: Path, steps: int, warm: int) -> dict:
    """A hand-written PyTorch loop: same model, batches, loss, AdamW, clipping, LR scheduler."""
    import torch
    import torch.nn.functional as F
    from diffusers.optimization import get_scheduler
    from PIL import Image

    from boothstudio.services.trainer.module import DataSpec, StepBatches, image_tensor
    from boothstudio.services.trainer.train import load_base, tokenize

    cfg = _config(steps, prior=True)
    job = _job_dir(tmp, f"plain-{time.time_ns()}")
    pipe = load_base({"source_path": model, "format": "diffusers"})
    unet, te, vae = pipe.unet, pipe.text_encoder, pipe.vae
    vae.requires_grad_(False)
    vae.eval()
    unet.train()
    te.train()
    res = cfg.resolution
    inst = [image_tensor(Image.open(p), res) for p in sorted((job / "instance").iterdir())]
    class_dir = next((tmp / "cache").iterdir())
    cls = [image_tensor(Image.open(p), res) for p in sorted(class_dir.glob("*.png"))]
    data = StepBatches(DataSpec(cfg.seed, cfg.batch_size, res, False, False), inst,
                       tokenize(pipe.tokenizer, [cfg.instance_prompt] * len(inst)), cls,
                       tokenize(pipe.tokenizer, [cfg.class_prompt] * len(cls)), total=steps)
    params = [*unet.parameters(), *te.parameters()]
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "lr": cfg.learning_rate},
                             {"params": list(te.parameters()), "lr": cfg.learning_rate}],
                            weight_decay=cfg.weight_decay)
    sched = get_scheduler("constant", opt, num_warmup_steps=0, num_training_steps=steps)
    alphas = pipe.scheduler.alphas_cumprod.float()
    n_t = pipe.scheduler.config.num_train_timesteps
    marks: dict[int, float] = {}
    for step in range(1, steps + 1):
        batch = data[step - 1]
        gen = torch.Generator().manual_seed(int(batch["noise_seed"]))
        with torch.no_grad():
            dist = vae.encode(batch["pixels"]).latent_dist
            lat = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen))
            lat = lat * vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, n_t, (lat.shape[0],), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
        pred = unet(noisy, t, te(batch["input_ids"])[0]).sample
        n = batch["n_instance"]
        loss = F.mse_loss(pred[:n], noise[:n]) + F.mse_loss(pred[n:], noise[n:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        marks[step] = time.perf_counter()
    return {"step_s": (marks[steps] - marks[warm]) / (steps - warm), "peak_rss": _peak_rss()}


def child_jobs(model: str, tmp: Path, class_images: int) -> dict:
    """Two jobs with the same class settings: the second finds its class images cached."""
    from boothstudio.services.trainer.train import JobSpec, Reporter, run_job

    out = {}
    for name in ("first", "second"):
        cfg = _config(3, prior=True, class_images=class_images)
        spec = JobSpec(name, _job_dir(tmp, name), cfg,
                       {"id": "bench", "source_path": model, "format": "diffusers"},
                       tmp / "jobs-cache", tmp / "memo.json", sample_steps=1)
        t0 = time.perf_counter()
        r = run_job(spec, Reporter())
        out[name] = {"wall_s": time.perf_counter() - t0, "generated": r.class_images_generated,
                     "cached": r.class_images_cached,
                     "class_images_s": r.seconds.get("class_images", 0.0)}
    return out


# ----------------------------------------------------------------------------- driver


def run_child(kind: str, args: argparse.Namespace, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--model", args.model, "--tmp", str(tmp),
           "--steps", str(args.steps), "--warm", str(args.warm), "--threads", str(args.threads),
           "--class-images", str(args.class_images)]
    return child_result(kind, cmd)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warm", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--class-images", type=int, default=16)
    p.add_argument("--child", default="")
    p.add_argument("--tmp", default="")
    args = p.parse_args()
    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        fn = {"lightning": lambda: child_lightning(args.model, Path(args.tmp), args.steps,
                                                   args.warm),
              "plain": lambda: child_plain(args.model, Path(args.tmp), args.steps, args.warm),
              "jobs": lambda: child_jobs(args.model, Path(args.tmp), args.class_images)}
        print(json.dumps(fn[args.child]()))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp_s:
        tmp = Path(tmp_s)
        if not args.model:
            from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR

            if (EMBEDDED_MODEL_DIR / "model_index.json").exists():
                args.model = str(EMBEDDED_MODEL_DIR)
            else:
                from research.embedded_model.architecture import build_untrained_pipeline

                args.model = str(tmp / "untrained")
                build_untrained_pipeline(Path(args.model))
        print(f"model: {args.model}; steps {args.warm}..{args.steps}, batch 1 instance + 1 class "
              f"image at 64 px, UNet + text encoder, AdamW; {args.repeats} interleaved repeats, "
              f"threads={args.threads or 'default'}")
        jobs = run_child("jobs", args, tmp)  # also fills the class-image cache for step runs
        (tmp / "cache").symlink_to(tmp / "jobs-cache")
        light, plain = [], []
        for _ in range(args.repeats):
            plain.append(run_child("plain", args, tmp))
            light.append(run_child("lightning", args, tmp))
        ps = statistics.median(r["step_s"] for r in plain)
        ls = statistics.median(r["step_s"] for r in light)
        pr = statistics.median(r["peak_rss"] for r in plain)
        lr = statistics.median(r["peak_rss"] for r in light)
        print(f"step time   plain {ps * 1000:8.1f} ms   lightning {ls * 1000:8.1f} ms   "
              f"ratio {ls / ps:.3f}  (goal <= 1.02)   samples plain "
              f"{[round(r['step_s'] * 1000) for r in plain]} lightning "
              f"{[round(r['step_s'] * 1000) for r in light]}")
        print(f"peak RSS    plain {pr / 2**20:8.1f} MiB  lightning {lr / 2**20:8.1f} MiB  "
              f"ratio {lr / pr:.3f}  (goal <= 1.1)")
        f, s = jobs["first"], jobs["second"]
        print(f"jobs        first {f['wall_s']:.1f} s ({f['generated']} class images generated "
              f"in {f['class_images_s']:.1f} s)   second {s['wall_s']:.1f} s ({s['cached']} "
              f"cached, {s['generated']} generated, {s['class_images_s']:.2f} s)   ratio "
              f"{s['wall_s'] / f['wall_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
