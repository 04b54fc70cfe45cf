"""Two subjects in one job, judged with the project's detectors, beside each subject's
one-subject job (the trainer's own `run_job`, as bench.py does):

    .venv/bin/python -m research.dreambench.concepts --steps 300 --lr 5e-4 [--runs two,zwx,qlo]

Subjects (research.embedded_model.scenes.subject_images): "zwx circle", a red circle, and "qlo
square", a yellow square, both with the subject's purple diagonal stripes. The detectors read
stripes (the subject), the object's colour and its background, so a picture shows subject A when
it has stripes on red, subject B with stripes on yellow. Every job is sampled on the same
prompts (PROMPTS, words written out) on the backgrounds of BACKGROUNDS:

- subject:      share of "a zwx circle on a <bg> background" showing A (B likewise);
- cross leak:   share of the other subject's prompts showing this one ("a qlo square ..."
                pictures with red stripes);
- class leak:   share of plain "a circle on a <bg> background" pictures with stripes (A's
                class; "a square" for B).

A one-subject job's figures for the same prompts are the baseline: a two-subject job should
draw both subjects and leak no more than each subject's own one-subject job does.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from research.embedded_model.detectors import Reading, read_image


@dataclass(frozen=True)
class Subject:
    identifier: str
    class_noun: str
    color: str  # the object's colour (scenes.OBJECT_COLORS)
    shape: str
    seed: int  # of its instance pictures (scenes.subject_images)

    def shows(self, reading: Reading) -> bool:
        return reading.subject and reading.color == self.color


A = Subject("zwx", "circle", "red", "circle", 7)
B = Subject("qlo", "square", "yellow", "square", 8)
BACKGROUNDS = ("white", "black", "gray")


def subject_prompt(s: Subject, background: str) -> str:
    return f"a {s.identifier} {s.class_noun} on a {background} background"


def class_prompt(s: Subject, background: str) -> str:
    return f"a {s.class_noun} on a {background} background"


PROMPTS = ([subject_prompt(s, bg) for s in (A, B) for bg in BACKGROUNDS]
           + [class_prompt(s, bg) for s in (A, B) for bg in BACKGROUNDS])


def judge(samples: Iterable[tuple[str, Image.Image]]) -> dict[str, float]:
    """The figures of one job from its (prompt, picture) samples."""
    readings: dict[str, list[Reading]] = {}
    for prompt, picture in samples:
        readings.setdefault(prompt, []).append(read_image(picture))

    def rate(prompts: list[str], shows) -> float:
        rs = [r for p in prompts for r in readings.get(p, [])]
        assert rs, f"no samples of {prompts}"
        return sum(bool(shows(r)) for r in rs) / len(rs)

    out: dict[str, float] = {}
    for s, other in ((A, B), (B, A)):
        mine = [subject_prompt(s, bg) for bg in BACKGROUNDS]
        theirs = [subject_prompt(other, bg) for bg in BACKGROUNDS]
        plain = [class_prompt(s, bg) for bg in BACKGROUNDS]
        out[f"{s.identifier} subject"] = rate(mine, s.shows)
        out[f"{s.identifier} into {other.identifier} prompts"] = rate(theirs, s.shows)
        out[f"{s.identifier} class leak"] = rate(plain, lambda r: r.subject)
    return out


def table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table of several jobs' figures."""
    keys = list(next(iter(rows.values())))
    lines = ["| job | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, figures in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * figures[k]:.0f}%" for k in keys)
                     + " |")
    return "\n".join(lines)


def job_config(subjects: list[Subject], steps: int, lr: float, seed: int):
    """The job of one run: cut-out pictures captioned with their background (masked training),
    prior preservation from the captions, the identifiers' embeddings at their own rate; a
    batch holds one picture per subject, so each subject is shown as often as alone."""
    from boothstudio.v1 import trainer_pb2
    from research.embedded_model.scenes import subject_images

    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id="boothstudio-tiny", max_train_steps=steps, seed=seed, learning_rate=lr,
        train_text_encoder=True, identifier_learning_rate=5e-3, caption_dropout=0.1,
        batch_size=len(subjects), checkpoints_to_keep=1, validation_prompts=PROMPTS,
        validation_seeds=[0, 1, 2, 3], masked_loss_background_weight=0.0)
    for s in subjects:
        msg = cfg if len(subjects) == 1 else cfg.concepts.add()
        msg.identifier, msg.class_noun = s.identifier, s.class_noun
        for i, (img, scene) in enumerate(subject_images(4, seed=s.seed, shape=s.shape,
                                                        color=s.color, alpha=True)):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            msg.instance_images.add(data=buf.getvalue(), filename=f"{i}.png", caption=(
                f"a {{identifier}} {s.class_noun} on a {scene.background} background"))
        prior = msg.prior_preservation
        prior.enabled, prior.class_image_count, prior.class_prompts_from_captions = True, 8, True
    return cfg


def run(name: str, subjects: list[Subject], out: Path, steps: int, lr: float,
        seed: int) -> dict[str, float]:
    """Train one job in this process and judge its final samples."""
    from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR
    from boothstudio.services.trainer.concepts import resolve_job
    from boothstudio.services.trainer.options import Limits
    from boothstudio.services.trainer.train import JobSpec, Reporter, run_job

    resolved = resolve_job(job_config(subjects, steps, lr, seed),
                           base_model={"native_resolution": 64}, limits=Limits())
    folder = out / name / "instance"
    folder.mkdir(parents=True, exist_ok=True)
    for data, stored, _ in resolved.images:
        (folder / stored).write_bytes(data)
    (folder / "captions.json").write_text(json.dumps({n: c for _, n, c in resolved.images}))
    samples: list[tuple[str, Image.Image]] = []

    class Samples(Reporter):
        def sample(self, s) -> None:  # type: ignore[no-untyped-def]
            samples.append((s.prompt, Image.open(io.BytesIO(s.png))))

    spec = JobSpec(name, out / name, resolved.config,
                   {"id": "boothstudio-tiny", "source_path": str(EMBEDDED_MODEL_DIR),
                    "format": "diffusers"}, out / "class_cache", out / "memo.json",
                   sample_steps=20)
    started = time.monotonic()
    result = run_job(spec, Samples())
    print(f"  {name}: {result.outcome} in {time.monotonic() - started:.0f} s", flush=True)
    return judge(samples)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(prog="python -m research.dreambench.concepts")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="two,zwx,qlo", help="two (both subjects), zwx, qlo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-results/concepts"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    jobs = {"two": [A, B], "zwx": [A], "qlo": [B]}
    rows = {name: run(name, jobs[name], args.out, args.steps, args.lr, args.seed)
            for name in args.runs.split(",")}
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
