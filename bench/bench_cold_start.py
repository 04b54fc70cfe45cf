"""Benchmark 3: cold start to first image: start Catalog + Generator processes, wait until they
serve, send one Generate, stop the clock at the first image event. Goal: <= 10 s."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("",)]

import grpc  # noqa: E402

from bench.common import free_port, model_dir, parser, spawn, wait_serving  # noqa: E402
from boothstudio.v1 import generator_pb2 as G  # noqa: E402
from boothstudio.v1 import generator_pb2_grpc  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    model = model_dir(args.model)
    results = []
    for _ in range(args.runs):
        cport, gport = free_port(), free_port()
        sets = [f"torch_threads={args.threads}"] if args.threads else []
        t0 = time.perf_counter()
        cat = spawn("catalog", cport, env={"BOOTHSTUDIO_EMBEDDED_MODEL": str(model)})
        gen = spawn("generator", gport, sets, env={"BOOTHSTUDIO_CATALOG_ADDRESS": cat.address})
        try:
            wait_serving(cat, "boothstudio.v1.CatalogService")
            wait_serving(gen, "boothstudio.v1.GeneratorService")
            serving = time.perf_counter() - t0
            stub = generator_pb2_grpc.GeneratorServiceStub(grpc.insecure_channel(gen.address))
            req = G.GenerateRequest(prompt="a red circle", steps=args.steps, width=args.size,
                                    height=args.size, seed=1)  # fmt: skip
            first = None
            for ev in stub.Generate(req, wait_for_ready=True):
                if ev.HasField("image") and first is None:
                    first = time.perf_counter() - t0
            assert first is not None
            results.append((serving, first))
        finally:
            gen.stop()
            cat.stop()
    print(f"model {model}, {args.size} px, {args.steps} steps")
    for i, (serving, first) in enumerate(results):
        print(f"run {i}: both serving after {serving:5.2f} s, first image after {first:5.2f} s")
    best = min(f for _, f in results)
    print(
        f"cold start to first image: best {best:.2f} s, "
        f"median {sorted(f for _, f in results)[len(results) // 2]:.2f} s   goal: <= 10 s"
    )


if __name__ == "__main__":
    main()
