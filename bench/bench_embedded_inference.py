"""Embedded model inference: seconds per 64 px, 20-step image on this CPU.

Baseline measured in the same run: the bare UNet cost floor (20 batched cond+uncond forward
passes, no text encoder, scheduler or VAE).  Prints the pipeline's time, its ratio to that floor
(overhead of everything around the UNet) and its ratio to the 1 s/image goal.

    .venv/bin/python bench/bench_embedded_inference.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from boothstudio.services.diffusion.loading import embedded_model_dir, load_pipeline

GOAL_SECONDS = 1.0


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    pipe, _ = load_pipeline(embedded_model_dir())
    pipe.set_progress_bar_config(disable=True)
    prompt = "a large red circle on a white background"

    def one_image() -> None:
        pipe(
            prompt,
            num_inference_steps=args.steps,
            guidance_scale=5.0,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(0),
        )

    def batch_of_8() -> None:
        pipe(
            [prompt] * 8,
            num_inference_steps=args.steps,
            guidance_scale=5.0,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(0),
        )

    latents = torch.randn(2, 4, 16, 16)
    cond = torch.randn(2, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)

    @torch.no_grad()
    def unet_floor() -> None:
        for t in range(args.steps):
            pipe.unet(latents, 999 - t * 50, encoder_hidden_states=cond)

    floor = timed(unet_floor, args.repeats)
    single = timed(one_image, args.repeats)
    batched = timed(batch_of_8, max(2, args.repeats // 2)) / 8
    print(f"threads={torch.get_num_threads()} steps={args.steps} 64x64")
    print(f"baseline  bare UNet floor        {floor:.3f} s/image")
    print(
        f"pipeline  one image              {single:.3f} s/image  "
        f"ratio to floor {single / floor:.2f}  ratio to goal {single / GOAL_SECONDS:.2f}"
    )
    print(
        f"pipeline  batch of 8             {batched:.3f} s/image  "
        f"ratio to floor {batched / floor:.2f}  ratio to goal {batched / GOAL_SECONDS:.2f}"
    )


if __name__ == "__main__":
    main()
