"""Score a model on the scene world with the project's detectors.

    python -m research.embedded_model.evaluate [--model DIR] [--seeds 3]

Prints the markdown table that the model card carries: over every (shape, colour, background)
caption with ``--seeds`` seeds each, 20 steps, the model's default sampler.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from boothstudio.services.diffusion.loading import embedded_model_dir, load_pipeline
from research.embedded_model.detectors import score_pipeline
from research.embedded_model.scenes import evaluation_set


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per caption (90 captions)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    args = ap.parse_args(argv)
    pipe, info = load_pipeline(args.model or embedded_model_dir())
    pipe.set_progress_bar_config(disable=True)
    items = evaluation_set(seeds_per_combo=args.seeds)
    started = time.perf_counter()
    score = score_pipeline(pipe, items, steps=args.steps, guidance=args.guidance)
    took = time.perf_counter() - started
    print(f"model {info.path}: {len(items)} images, {args.steps} steps, "
          f"guidance {args.guidance}, scheduler {pipe.scheduler.__class__.__name__}, "
          f"{took / len(items):.3f} s/image batched")
    print(score.table())


if __name__ == "__main__":
    main()
