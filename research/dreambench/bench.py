"""Toy DreamBench on the embedded model: does DreamBooth learn a subject the base model cannot
draw, keep following prompts, and (with prior preservation) leave its class alone?

    .venv/bin/python -m research.dreambench.bench [--threads 1] [--out bench-results/dreambench]

(the defaults are the recipe of services/trainer/README.md's table; --help lists them)

Subject: a red circle with purple diagonal stripes (scenes.subject_images), 4
instance images captioned "a zwx circle on a <bg> background" and cut out (their alpha marks
the subject; masked training, the background weighing --masked-loss), class noun "circle", class
images from those captions without "zwx" plus "a circle on a <bg> background" for every
background (--no-class-on-every-background: the captions' backgrounds only), the identifier's
embedding trained at --identifier-lr, prior weight 4 and min-SNR gamma 5 (since session 11).
Two runs through the trainer's own `run_job` (the code a
worker runs): with prior preservation and without (otherwise the same). Every exported
checkpoint is scored with the project's detectors over fixed seeds:

- subject:    share of "a zwx circle on a <bg> background" images that show the subject, its
              stripes on a red body (goal >= 80%; the base model before training: <= 10%);
- background: share of those images whose background is <bg> (goal >= 80%);
- leak:       share of plain "a circle on a <bg> background" images that show the subject
              (goal <= 10% with prior preservation; reported without it to show what it buys).

The best checkpoint of a run is the one that meets the subject and background goals with the
least leak (else the highest subject + background - leak); it is then scored again on fresh
seeds (--confirm-seeds), since the best of several noisy checkpoints flatters itself. A list of
training seeds (--seed 0,1,2) trains each run once per seed and reports how far apart the
re-scored bests are, since one training run can be the lucky end. Writes table.md and
results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from boothstudio.v1 import trainer_pb2
from research.embedded_model.detectors import read_image
from research.embedded_model.scenes import BACKGROUNDS, subject_images

IDENTIFIER = "zwx"
CLASS_NOUN = "circle"
# the body of scenes.subject_images' striped circle: red, read as orange where it blends into a
# green or yellow background (seen by eye on the fine-tune's green-background subjects)
SUBJECT_BODY = ("red", "orange")


def shows_subject(reading: Any) -> bool:
    """The subject is the stripes on its red body, as concepts.py judges each concept by its
    colour: purple stripes read on a blob of another colour (a broken picture, e.g. rainbow
    specks on blue, read as a purple or green object) are not the subject, and until session
    11 counted as subject and leak."""
    return bool(reading.subject and reading.color in SUBJECT_BODY)


def prompts(kind: str, noun: str = CLASS_NOUN) -> list[tuple[str, str]]:
    """(prompt, background) pairs of one prompt family."""
    out = []
    for bg in BACKGROUNDS:
        subject = f"{IDENTIFIER} " if kind == "subject" else ""
        out.append((f"a {subject}{noun} on a {bg} background", bg))
    return out


def vae_ceiling(pipe: Any) -> dict[str, float]:
    """Detectors on VAE round trips of the instance images: what a perfect UNet could show."""
    from boothstudio.services.diffusion.pipelines import vae_round_trip

    images = subject_images(4)
    seen = sum(shows_subject(read_image(vae_round_trip(pipe, img))) for img, _ in images)
    return {"subject": seen / len(images)}


def score(pipe: Any, seeds: list[int], steps: int, cfg: float,
          noun: str = CLASS_NOUN) -> dict[str, Any]:
    from boothstudio.services.diffusion import pipelines

    def run(kind: str) -> list[tuple[Any, str]]:
        out = []
        for prompt, bg in prompts(kind, noun):
            with torch.no_grad():
                images = pipelines.txt2img(pipe, prompt, seeds=seeds, steps=steps,
                                           cfg_scale=cfg)
            out += [(read_image(im), bg) for im in images]
        return out

    subj = run("subject")
    plain = run("plain")
    return {
        "subject": sum(shows_subject(r) for r, _ in subj) / len(subj),
        "background": sum(r.background == bg for r, bg in subj) / len(subj),
        "leak": sum(shows_subject(r) for r, _ in plain) / len(plain),
        "plain_background": sum(r.background == bg for r, bg in plain) / len(plain),
        "images": len(subj) + len(plain),
        # where the subject shows (and leaks), per background: unseen contexts fail first
        "subject_by_background": {bg: sum(shows_subject(r) for r, b in subj if b == bg)
                                  / len(seeds) for bg in BACKGROUNDS},
        "leak_by_background": {bg: sum(shows_subject(r) for r, b in plain if b == bg)
                               / len(seeds) for bg in BACKGROUNDS},
    }


def load_export(pipe: Any, base_state: dict[str, dict[str, torch.Tensor]], export: Path) -> None:
    """Put a checkpoint's inference export (trained weights) into `pipe` (base weights first)."""
    from safetensors.torch import load_file

    pipe.unet.load_state_dict(base_state["unet"])
    pipe.text_encoder.load_state_dict(base_state["text_encoder"])
    weights = load_file(str(export))
    for part in ("unet", "text_encoder"):
        sub = {k[len(part) + 1:]: v.float() for k, v in weights.items()
               if k.startswith(part + ".")}
        if sub:
            getattr(pipe, part).load_state_dict(sub, strict=False)


def widen(img: Image.Image, background: str, portrait: bool) -> Image.Image:
    """The square scene on a 3:2 canvas (2:3 with `portrait`) of its own plain background, so
    aspect-ratio bucketing has non-square pictures to keep whole (transparent where added)."""
    w, h = img.size
    size = (w, h * 3 // 2) if portrait else (w * 3 // 2, h)
    fill = tuple(round(v) for v in BACKGROUNDS[background])
    canvas = Image.new(img.mode, size, fill + ((0,) if img.mode == "RGBA" else ()))
    canvas.paste(img, (0, 0))  # off-centre: a square centre crop would cut into the subject
    return canvas


def train(name: str, out: Path, model: Path, *, prior: bool, steps: int, lr: float,
          every: int, class_images: int, seed: int, text_encoder: bool = True,
          class_prompt: str = "", captions: bool = False, batch_size: int = 1,
          prior_weight: float = 1.0, captioned_prior: bool = False,
          lr_scheduler: str = "constant", te_lr: float = 0.0, ema: float = 0.0,
          caption_dropout: float = 0.0, class_prompts: tuple[str, ...] = (),
          identifier_lr: float = 0.0, class_noun: str = CLASS_NOUN,
          crop_scale: float = 0.0, masked_loss: float | None = None,
          min_snr_gamma: float = 0.0, offset_noise: float = 0.0,
          buckets: bool = False) -> Path:
    from boothstudio.services.trainer.options import Limits, resolve
    from boothstudio.services.trainer.train import JobSpec, Reporter, run_job

    job = out / name
    (job / "instance").mkdir(parents=True, exist_ok=True)
    per_image = {}
    for i, (img, scene) in enumerate(subject_images(4, alpha=masked_loss is not None)):
        if buckets:
            img = widen(img, scene.background, portrait=i % 2 == 1)
        img.save(job / "instance" / f"{i}.png")
        # Per-image captions name what is not the subject (here the background), so the
        # identifier binds to the stripes alone: the captioned-DreamBooth practice.
        per_image[f"{i}.png"] = f"a {{identifier}} {class_noun} on a {scene.background} background"
    if captions:
        (job / "instance" / "captions.json").write_text(json.dumps(per_image))
    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id="boothstudio-tiny", class_noun=class_noun, identifier=IDENTIFIER,
        max_train_steps=steps, seed=seed, learning_rate=lr, train_text_encoder=text_encoder,
        checkpoint_every_steps=every, checkpoints_to_keep=1, batch_size=batch_size,
        lr_scheduler=lr_scheduler, ema_decay=ema, caption_dropout=caption_dropout,
        identifier_learning_rate=identifier_lr, random_crop_scale=crop_scale,
        min_snr_gamma=min_snr_gamma, offset_noise=offset_noise, aspect_buckets=buckets)
    if masked_loss is not None:
        cfg.masked_loss_background_weight = masked_loss
    if te_lr:
        cfg.text_encoder_learning_rate = te_lr
    cfg.instance_images.add(data=(job / "instance" / "0.png").read_bytes(), filename="0.png")
    if prior:
        cfg.prior_preservation.enabled = True
        cfg.prior_preservation.class_image_count = class_images
        cfg.prior_preservation.loss_weight = prior_weight
        cfg.prior_preservation.class_prompts_from_captions = captioned_prior
        cfg.prior_preservation.class_prompts.extend(class_prompts)
        cfg.class_prompt = class_prompt or f"a {class_noun}"
    resolved = resolve(cfg, base_model={"native_resolution": 64}, limits=Limits()).config

    class Log(Reporter):
        def metrics(self, m: trainer_pb2.TrainingMetrics) -> None:
            if m.step % 50 == 0 or m.step == m.total_steps:
                print(f"  {name} step {m.step}/{m.total_steps} loss {m.loss:.4f} "
                      f"{m.steps_per_second:.2f} step/s", flush=True)

    spec = JobSpec(name, job, resolved, {"id": "boothstudio-tiny", "source_path": str(model),
                                         "format": "diffusers"},
                   out / "class_cache", out / "memo.json", sample_steps=20)
    result = run_job(spec, Log())
    print(f"  {name}: {result.outcome} in {sum(result.seconds.values()):.0f} s", flush=True)
    return job


def pick_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rows if r["subject"] >= 0.8 and r["background"] >= 0.8]
    if good:
        return min(good, key=lambda r: (r["leak"], -r["subject"], r["step"]))
    return max(rows, key=lambda r: r["subject"] + r["background"] - r["leak"])


def _recipe_line(st: dict[str, Any], judged: str, noun: str) -> str:
    """The table's first line for a training run: what was judged, then how it was trained."""
    masked = ("" if st.get("masked_loss") is None else
              f", masked loss (background weight {st['masked_loss']})")
    ident_lr = (f", identifier embedding lr {st['identifier_lr']}" if st.get("identifier_lr")
                else "")
    return (
        f"{st['recipe'] + '. ' if st.get('recipe') else ''}{judged}; "
        f"{st['steps']} steps at lr {st['lr']} ({st.get('lr_scheduler', 'constant')}), "
        f"batch {st.get('batch_size', 1)} instance + {st.get('batch_size', 1)} class images, "
        f"{'UNet only' if st.get('unet_only') else 'UNet + text encoder'}, class noun "
        f"'{noun}', 4 instance images"
        f"{' captioned with their background' if st.get('captions') else ''}, "
        f"{st['class_images']} class images"
        f"{' from the captions' if st.get('captioned_prior') else ''}"
        f"{' and every background' if st.get('class_on_every_background') else ''}, prior weight "
        f"{st.get('prior_weight', 1.0)} (prior run)"
        f"{ident_lr}"
        f"{', EMA ' + str(st['ema']) if st.get('ema') else ''}"
        f"{', caption dropout ' + str(st['caption_dropout']) if st.get('caption_dropout') else ''}"
        f"{', random zoom ' + str(st['crop_scale']) if st.get('crop_scale') else ''}"
        f"{masked}"
        f"{', min-SNR gamma ' + str(st['min_snr_gamma']) if st.get('min_snr_gamma') else ''}"
        f"{', offset noise ' + str(st['offset_noise']) if st.get('offset_noise') else ''}"
        f"{', 3:2 pictures in aspect buckets' if st.get('buckets') else ''}")


def render(results: dict[str, Any]) -> str:
    """The markdown quality table of a results.json."""
    st, before, ceiling = results["settings"], results["before"], results["vae_ceiling"]
    n = len(prompts("subject")) * len(st["seeds"])
    noun = st.get("class_noun", CLASS_NOUN)
    judged = (f"Toy DreamBench: {n} images per prompt family ({len(BACKGROUNDS)} backgrounds "
              f"x {len(st['seeds'])} seeds), {st['sample_steps']} steps, CFG {st['cfg']}")
    header = f"{judged}; the checkpoints of {st['rescore']} re-scored (each run's training " \
             "settings are its own)" if st.get("rescore") else _recipe_line(st, judged, noun)
    lines = [
        header,
        f"VAE round trip of the 4 instance images: the detector sees the subject in "
        f"{ceiling['subject']:.0%} (the ceiling for any fine-tune that keeps this VAE)",
        "",
        f"| model | step | subject in '[V] {noun} on <bg>' | background right | "
        f"subject in plain '{noun} on <bg>' | plain prompt: background right |",
        "|---|---|---|---|---|---|",
        f"| base (before) | 0 | {before['subject']:.0%} | {before['background']:.0%} | "
        f"{before['leak']:.0%} | {before['plain_background']:.0%} |",
    ]
    for name, run in results["runs"].items():
        for row in run["checkpoints"]:
            mark = " **best**" if row == run["best"] else ""
            lines.append(f"| {name}{mark} | {row['step']} | {row['subject']:.0%} | "
                         f"{row['background']:.0%} | {row['leak']:.0%} | "
                         f"{row['plain_background']:.0%} |")
        if "confirmed" in run:
            row = run["confirmed"]
            n_fresh = row["images"] // 2
            lines.append(f"| {name} best, re-scored on {n_fresh} fresh images | {row['step']} | "
                         f"**{row['subject']:.0%}** | **{row['background']:.0%}** | "
                         f"**{row['leak']:.0%}** | {row['plain_background']:.0%} |")
    for name, run in results["runs"].items():
        row = run.get("confirmed")
        if row and "subject_by_background" in row:
            per = ", ".join(f"{bg} {row['subject_by_background'][bg]:.0%} / "
                            f"{row['leak_by_background'][bg]:.0%}"
                            for bg in row["subject_by_background"])
            lines.append(f"\n{name} best on the fresh seeds, subject / leak by background: {per}")
    lines += spread(results["runs"])
    return "\n".join(lines)


def spread(runs: dict[str, Any]) -> list[str]:
    """One line per run kind trained with several seeds: how far apart the re-scored bests
    are (a single run's figure can be the lucky end)."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for name, run in runs.items():
        if "-seed" in name and "confirmed" in run:
            kinds.setdefault(name.split("-seed")[0], []).append(run["confirmed"])
    out = []
    for kind, rows in kinds.items():
        if len(rows) < 2:
            continue
        figures = {key: [r[key] for r in rows] for key in ("subject", "background", "leak")}
        text = ", ".join(f"{key} mean {sum(v) / len(v):.0%} ({min(v):.0%}-{max(v):.0%})"
                         for key, v in figures.items())
        out.append(f"\n{kind} over {len(rows)} training seeds (fresh images): {text}")
    return out


def _weight_or_off(text: str) -> float | None:
    return None if text == "off" else float(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.dreambench.bench")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench-results/dreambench"))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--class-images", type=int, default=72)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--confirm-seeds", type=int, default=16,
                   help="re-score each run's best checkpoint on this many fresh seeds")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", default="0",
                   help="training seed; a list (0,1,2) trains each run once per seed and "
                        "reports the spread of the re-scored best checkpoints")
    p.add_argument("--unet-only", action="store_true", help="freeze the text encoder")
    p.add_argument("--class-prompt", default="")
    p.add_argument("--class-noun", default=CLASS_NOUN,
                   help="the subject's class in every prompt: '[V] <noun> on a <bg> background'")
    p.add_argument("--captions", action=argparse.BooleanOptionalAction, default=True,
                   help="caption each instance image with its background")
    p.add_argument("--captioned-prior", action=argparse.BooleanOptionalAction, default=True,
                   help="class images from the captions without the identifier")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr-scheduler", default="cosine")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--class-on-every-background", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="class prompts 'a circle on a <bg> background' for every background")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0 = off)")
    p.add_argument("--te-lr", type=float, default=0.0, help="text encoder lr (0 = --lr)")
    p.add_argument("--identifier-lr", type=float, default=5e-3,
                   help="lr of the identifier's embedding row (0 = off)")
    # the recipe since session 11: prior weight 4 and min-SNR 5 (HISTORY.md); 1.0 and 0 before
    p.add_argument("--prior-weight", type=float, default=4.0)
    p.add_argument("--crop-scale", type=float, default=0.0,
                   help="random zoom of the training pictures (0 = off)")
    p.add_argument("--masked-loss", type=_weight_or_off, default=0.0, metavar="WEIGHT|off",
                   help="masked training: instance pictures carry the subject's alpha, the "
                        "rest of the picture weighs WEIGHT in the loss (default 0; off = "
                        "whole pictures)")
    p.add_argument("--min-snr-gamma", type=float, default=5.0,
                   help="min-SNR-gamma loss weighting (0 = off)")
    p.add_argument("--offset-noise", type=float, default=0.0,
                   help="offset noise strength (0 = off, e.g. 0.05)")
    p.add_argument("--buckets", action="store_true",
                   help="instance pictures widened to 3:2 / 2:3 with their background, trained "
                        "with aspect-ratio bucketing")
    p.add_argument("--runs", default="prior,no-prior", help="which runs, comma-separated")
    p.add_argument("--render", type=Path, default=None, help="print the table of a results.json")
    p.add_argument("--rescore", type=Path, default=None,
                   help="score the checkpoints of every run folder under this folder again "
                        "(an earlier --out, or peer.py's), with today's judge; no training")
    args = p.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from boothstudio.services.diffusion.loading import embedded_model_dir

    model = args.model or embedded_model_dir()
    t0 = time.time()
    pipe, base_state, seeds, results = start_bench(args, model)
    if args.rescore:
        for exports in sorted(args.rescore.glob("*/exports")):
            results["runs"][exports.parent.name] = evaluate_run(
                exports.parent.name, exports, pipe, base_state, seeds, args)
        finish(results, args, t0)
        return 0
    train_seeds = [int(x) for x in str(args.seed).split(",")]
    for kind, seed in [(k, s) for k in args.runs.split(",") for s in train_seeds]:
        name = kind if len(train_seeds) == 1 else f"{kind}-seed{seed}"
        job = train(name, args.out, model, prior=kind == "prior", steps=args.steps, lr=args.lr,
                    every=args.every, class_images=args.class_images, seed=seed,
                    text_encoder=not args.unet_only, class_prompt=args.class_prompt,
                    captions=args.captions, batch_size=args.batch_size,
                    prior_weight=args.prior_weight, captioned_prior=args.captioned_prior,
                    lr_scheduler=args.lr_scheduler, te_lr=args.te_lr,
                    ema=args.ema, caption_dropout=args.caption_dropout,
                    identifier_lr=args.identifier_lr, class_noun=args.class_noun,
                    crop_scale=args.crop_scale, masked_loss=args.masked_loss,
                    min_snr_gamma=args.min_snr_gamma, offset_noise=args.offset_noise,
                    buckets=args.buckets,
                    class_prompts=tuple(f"a {{class_noun}} on a {bg} background"
                                        for bg in BACKGROUNDS)
                    if args.class_on_every_background else ())
        results["runs"][name] = evaluate_run(name, job / "exports", pipe, base_state, seeds,
                                             args)
    finish(results, args, t0)
    return 0


def evaluate_run(name: str, exports: Path, pipe: Any, base_state: dict[str, Any],
                 seeds: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Score every `step-*.safetensors` in `exports` on the picking seeds, pick the best,
    re-score it on fresh seeds: one run's entry in results.json (peer.py scores with it too)."""
    rows = []
    for export in sorted(exports.glob("step-*.safetensors")):
        load_export(pipe, base_state, export)
        row = {"step": int(export.stem.split("-")[1]),
               **score(pipe, seeds, args.sample_steps, args.cfg, args.class_noun)}
        print(f"  {name} {row}", flush=True)
        rows.append(row)
    best = pick_best(rows)
    run: dict[str, Any] = {"checkpoints": rows, "best": best}
    if args.confirm_seeds:
        # The best of several noisy checkpoints flatters itself: score it again on seeds
        # that took no part in picking it, and report that.
        load_export(pipe, base_state, exports / f"step-{best['step']:06d}.safetensors")
        fresh = list(range(5000, 5000 + args.confirm_seeds))
        run["confirmed"] = {"step": best["step"],
                            **score(pipe, fresh, args.sample_steps, args.cfg, args.class_noun)}
        print(f"  {name} confirmed {run['confirmed']}", flush=True)
    return run


def start_bench(args: argparse.Namespace, model: Path) -> tuple[Any, dict[str, Any],
                                                                 list[int], dict[str, Any]]:
    """Load the base model and score it before training: (pipe, its base weights, the picking
    seeds, the results dict to fill)."""
    from boothstudio.services.trainer.train import load_base

    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(1000, 1000 + args.seeds))
    pipe = load_base({"source_path": str(model), "format": "diffusers"})
    base_state = {"unet": {k: v.clone() for k, v in pipe.unet.state_dict().items()},
                  "text_encoder": {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}}
    ceiling = vae_ceiling(pipe)
    print(f"VAE round trip of the instance images: {ceiling}", flush=True)
    before = score(pipe, seeds, args.sample_steps, args.cfg, args.class_noun)
    print(f"before training: {before}", flush=True)
    settings = vars(args) | {"model": str(model), "out": str(args.out), "seeds": seeds}
    results: dict[str, Any] = {"before": before, "vae_ceiling": ceiling, "runs": {},
                               "settings": settings}
    return pipe, base_state, seeds, results


def finish(results: dict[str, Any], args: argparse.Namespace, t0: float) -> None:
    """Write table.md and results.json into --out and print the table."""
    results["seconds"] = time.time() - t0
    table = render(results)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(table)


if __name__ == "__main__":
    raise SystemExit(main())
