"""Benchmark 1: one Generate through gRPC (Catalog + Generator processes on loopback, full
stream: queued/started/progress/image/finished, PNG with parameters, gallery write) divided by
the same pipeline called in-process (services.diffusion.pipelines.txt2img). Goal: <= 1.05.

Runs alternate (gRPC, in-process, gRPC, ...) so both see the same machine load; medians.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("",)]

import grpc  # noqa: E402

from bench.common import model_dir, parser, stack  # noqa: E402
from boothstudio.v1 import generator_pb2 as G  # noqa: E402
from boothstudio.v1 import generator_pb2_grpc  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    import torch

    from boothstudio.services.diffusion import pipelines
    from boothstudio.services.diffusion.loading import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_dir(args.model)
    pipe, _ = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)

    def in_process(seed: int) -> float:
        t = time.perf_counter()
        pipelines.txt2img(pipe, "a red circle on a blue background", seeds=[seed],
                          steps=args.steps, width=args.size, height=args.size)  # fmt: skip
        return time.perf_counter() - t

    sets = [f"torch_threads={args.threads}"] if args.threads else []
    with stack(model, sets) as address:
        stub = generator_pb2_grpc.GeneratorServiceStub(grpc.insecure_channel(address))

        def through_grpc(seed: int, preview: int | None) -> float:
            req = G.GenerateRequest(
                prompt="a red circle on a blue background",
                seed=seed,
                steps=args.steps,
                width=args.size,
                height=args.size,
            )
            if preview is not None:
                req.preview_interval = preview
            t = time.perf_counter()
            for ev in stub.Generate(req):
                if ev.HasField("finished"):
                    assert ev.finished.status == G.GENERATION_STATUS_SUCCEEDED
            return time.perf_counter() - t

        for seed in range(2):  # warm-up: model load, first-call costs on both sides
            through_grpc(seed, None)
            in_process(seed)
        grpc_default, grpc_nopreview, local = [], [], []
        for r in range(args.runs):
            grpc_default.append(through_grpc(100 + r, None))
            local.append(in_process(100 + r))
            grpc_nopreview.append(through_grpc(100 + r, 0))
            local.append(in_process(100 + r))
    print(f"model {model}, {args.size} px, {args.steps} steps, {args.runs} runs each")
    print("                                    median ms  ratio    min ms  ratio")
    for label, xs in (("in-process pipeline", local), ("gRPC Generate (previews every 5)",
                      grpc_default), ("gRPC Generate (previews off)", grpc_nopreview)):  # fmt: skip
        med, low = statistics.median(xs), min(xs)
        print(f"{label:36s}{med * 1000:9.1f} {med / statistics.median(local):6.3f} "
              f"{low * 1000:9.1f} {low / min(local):6.3f}")  # fmt: skip
    print("goal: ratio <= 1.05")


if __name__ == "__main__":
    main()
