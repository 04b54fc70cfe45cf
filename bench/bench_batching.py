"""Benchmark 2: images per second with 8 concurrent clients, micro-batching on / off.

Each client sends the same kind of request (same model, size, sampler, steps; its own prompt and
seed) back to back. Goal: ratio >= 1.5.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("",)]

import grpc  # noqa: E402

from bench.common import model_dir, parser, stack  # noqa: E402
from boothstudio.v1 import generator_pb2 as G  # noqa: E402
from boothstudio.v1 import generator_pb2_grpc  # noqa: E402


def measure(model: Path, args, batching: bool) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    sets = [f"batching={str(batching).lower()}", "queue_size=64", "max_batch_images=8"]
    if args.threads:
        sets.append(f"torch_threads={args.threads}")
    with stack(model, sets) as address:
        stub = generator_pb2_grpc.GeneratorServiceStub(grpc.insecure_channel(address))

        def one(client: int, k: int) -> tuple[int, int]:
            req = G.GenerateRequest(prompt=f"a shape number {client}", seed=client * 1000 + k,
                                    steps=args.steps, width=args.size, height=args.size,
                                    skip_gallery=True)  # fmt: skip
            images, batch = 0, 0
            for ev in stub.Generate(req):
                if ev.HasField("image"):
                    images += 1
                elif ev.HasField("started"):
                    batch = ev.started.batch_size
            return images, batch

        one(0, 0)  # warm-up (model load)
        counts = [0] * args.clients
        batches: list[int] = []

        def client(i: int) -> None:
            for k in range(args.requests):
                n, b = one(i, k + 1)
                counts[i] += n
                batches.append(b)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t
    return sum(counts) / elapsed, sum(batches) / max(len(batches), 1)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    args = p.parse_args()
    model = model_dir(args.model)
    off, off_b = measure(model, args, batching=False)
    on, on_b = measure(model, args, batching=True)
    print(f"model {model}, {args.size} px, {args.steps} steps, {args.clients} clients x "
          f"{args.requests} requests")  # fmt: skip
    print(f"batching off: {off:6.2f} images/s (mean batch {off_b:.1f})")
    print(f"batching on:  {on:6.2f} images/s (mean batch {on_b:.1f})   ratio {on / off:.2f}")
    print("goal: ratio >= 1.5")


if __name__ == "__main__":
    main()
