"""Memory under hostile input: a Generator (with its Catalog) and a Trainer are sent the fuzz
suite's hostile requests (image bombs, huge sizes and counts, huge strings and ids, forged page
tokens; tests/fuzz/hostile.py) for --rounds rounds, while the RSS of each service process is
sampled every 20 ms. Prints each service's idle baseline, peak and the ratio, and exits 1 when a
peak exceeds its bound:

    generator peak <= baseline + --gen-bound-mb (default 150 MB)
    trainer   peak <= baseline + --trainer-bound-mb (default 250 MB)

Why these bounds: every hostile request here is refused (no image is generated, no job runs),
and the largest is 14 MB on the wire; refusing it may cost a few times that while it is
handled, but a stream of them must not accumulate. 150 MB is ten times the largest request
(the generator measured +26 MB once refused requests stopped living in reference cycles, from
+714 MB before); 250 MB bounds the trainer, which holds an upload stream in memory until its
pictures are checked (at most max_upload_bytes, 64 MB) and measured +129 MB.

    .venv/bin/python bench/bench_hostile_memory.py [--rounds 40] [--model DIR]

The baseline is taken after one cheap accepted request of each kind (model loaded, code paths
warm), so the growth measured is what hostile input costs. RSS comes from psutil when it is
installed, else /proc/<pid>/status (VmRSS).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import grpc  # noqa: E402

from bench.common import free_port, model_dir, parser, spawn, wait_serving  # noqa: E402
from boothstudio.v1 import generator_pb2 as G  # noqa: E402
from boothstudio.v1 import generator_pb2_grpc, trainer_pb2_grpc  # noqa: E402
from boothstudio.v1 import trainer_pb2 as T  # noqa: E402
from tests.fuzz import hostile  # noqa: E402

MB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Peak RSS of some processes, sampled in a thread while a block runs."""

    def __init__(self, pids: dict[str, int], every: float = 0.02) -> None:
        self.pids, self.every = pids, every
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                with contextlib.suppress(Exception):
                    self.peak[name] = max(self.peak[name], rss_bytes(pid))
            time.sleep(self.every)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        try:
            yield
        finally:
            self._stop.set()
            t.join()


def quietly(fn: Callable[[], Any], verbose: bool = False) -> str:
    """Run one call; the status code name (hostile requests are expected to be refused)."""
    try:
        result = fn()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            for _ in result:  # drain a server stream
                pass
        return "OK"
    except grpc.RpcError as exc:
        return f"{exc.code().name}" if not verbose else f"{exc.code().name}: {exc.details()}"


def generator_attacks(stub: generator_pb2_grpc.GeneratorServiceStub) -> list[Callable[[], Any]]:
    im = hostile.images()
    cheap = {"prompt": "a red square", "steps": 2, "width": 64, "height": 64, "seed": 1}
    reqs = [G.GenerateRequest(**cheap, init_image=im[k])  # type: ignore[arg-type]
            for k in ("bomb_12000_full", "bomb_8192_full", "bomb_65535_header",
                      "bomb_12000_header", "truncated_png")]
    reqs += [
        G.GenerateRequest(**cheap, init_image=im["png64"], mask_image=im["bomb_12000_full"]),  # type: ignore[arg-type]
        G.GenerateRequest(prompt="x", width=2**31 - 8, height=2**31 - 8, count=2**31 - 1),
        G.GenerateRequest(prompt="y" * 1_000_000, negative_prompt="z" * 1_000_000),
        G.GenerateRequest(prompt="x", model_id="m" * 100_000),
        G.GenerateRequest(prompt="x", sampler_options={f"k{i}": hostile_option() for i in
                                                      range(10_000)}),
    ]
    calls: list[Callable[[], Any]] = [
        (lambda r=r: stub.Generate(r, timeout=120)) for r in reqs
    ]
    calls += [(lambda t=t: stub.ListImages(G.ListImagesRequest(page_token=t), timeout=30))
              for t in hostile.FORGED_TOKENS]
    calls += [lambda: stub.GetImage(G.GetImageRequest(image_id="i" * 1_000_000), timeout=30),
              lambda: stub.DeleteImages(G.DeleteImagesRequest(
                  image_ids=[f"img-{i}" for i in range(100_000)]), timeout=30)]
    return calls


def hostile_option() -> Any:
    from boothstudio.v1 import common_pb2

    return common_pb2.OptionValue(string_value="v" * 100)


def trainer_attacks(stub: trainer_pb2_grpc.TrainerServiceStub) -> list[Callable[[], Any]]:
    im = hostile.images()
    bombs = [im[k] for k in ("bomb_12000_full", "bomb_8192_full", "bomb_65535_header")]

    def config(images: list[bytes]) -> T.DreamBoothConfig:
        cfg = T.DreamBoothConfig(base_model_id=hostile.KNOWN_MODEL, class_noun="dog",
                                 max_train_steps=2, resolution=64)
        for i, data in enumerate(images):
            cfg.instance_images.add(data=data, filename=f"b{i}.png")
        return cfg

    def upload(data: bytes, n: int) -> Callable[[], Any]:
        def run() -> Any:
            msgs = [T.UploadImagesRequest(metadata=T.UploadImagesMetadata(name="bomb"))]
            msgs += [T.UploadImagesRequest(chunk=T.ImageChunk(filename=f"b{i}.png", data=data))
                     for i in range(n)]
            return stub.UploadImages(iter(msgs), timeout=120)
        return run

    calls: list[Callable[[], Any]] = [
        (lambda b=b: stub.CreateTrainingJob(T.CreateTrainingJobRequest(
            config=config([b] * 32), validate_only=True), timeout=120)) for b in bombs
    ]
    calls += [upload(b, 8) for b in bombs]
    calls += [(lambda t=t: stub.ListTrainingJobs(T.ListTrainingJobsRequest(page_token=t),
                                                 timeout=30)) for t in hostile.FORGED_TOKENS]
    calls += [
        lambda: stub.GetTrainingJob(T.GetTrainingJobRequest(job_id="j" * 1_000_000), timeout=30),
        lambda: stub.CreateTrainingJob(T.CreateTrainingJobRequest(config=T.DreamBoothConfig(
            base_model_id=hostile.KNOWN_MODEL, class_noun="dog", max_train_steps=2**31 - 1,
            resolution=2**31 - 1, validation_prompts=["p" * 10_000] * 1000),
            validate_only=True), timeout=60),
    ]
    return calls


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--gen-bound-mb", type=float, default=150.0)
    p.add_argument("--trainer-bound-mb", type=float, default=250.0)
    args = p.parse_args()
    model = model_dir(args.model)
    threads = {"OMP_NUM_THREADS": "1"}
    cport, gport, tport = free_port(), free_port(), free_port()
    cat = spawn("catalog", cport, env={**threads, "BOOTHSTUDIO_EMBEDDED_MODEL": str(model)})
    env = {**threads, "BOOTHSTUDIO_CATALOG_ADDRESS": cat.address}
    gen = spawn("generator", gport, ["torch_threads=1"], env=env)
    tra = spawn("trainer", tport, env={**env, "BOOTHSTUDIO_GENERATOR_ADDRESS": gen.address})
    procs = [tra, gen, cat]
    try:
        wait_serving(cat, "boothstudio.v1.CatalogService")
        wait_serving(gen, "boothstudio.v1.GeneratorService")
        wait_serving(tra, "boothstudio.v1.TrainerService")
        gch, tch = grpc.insecure_channel(gen.address, options=[
            ("grpc.max_send_message_length", 64 * MB)]), grpc.insecure_channel(
            tra.address, options=[("grpc.max_send_message_length", 64 * MB)])
        g, t = generator_pb2_grpc.GeneratorServiceStub(gch), trainer_pb2_grpc.TrainerServiceStub(
            tch)
        # warm: one accepted request of each kind (model loaded, paths imported)
        im = hostile.images()
        warm = [
            lambda: g.Generate(G.GenerateRequest(prompt="warm", steps=2, width=64, height=64,
                                                 init_image=im["png64"]), timeout=300),
            lambda: t.CreateTrainingJob(T.CreateTrainingJobRequest(
                config=T.DreamBoothConfig(base_model_id=hostile.KNOWN_MODEL, class_noun="dog",
                                          max_train_steps=2, resolution=64,
                                          instance_images=[T.InstanceImage(
                                              data=im["png64"], filename=f"w{i}.png")
                                              for i in range(3)]),
                validate_only=True), timeout=120),
        ]
        for fn in warm:
            print(f"warm-up: {quietly(fn, verbose=True)}")
        time.sleep(1.0)
        pids = {"generator": gen.proc.pid, "trainer": tra.proc.pid}
        base = {n: rss_bytes(pid) for n, pid in pids.items()}
        attacks = {"generator": generator_attacks(g), "trainer": trainer_attacks(t)}
        codes: dict[str, dict[str, int]] = {n: {} for n in attacks}
        sampler = Sampler(pids)
        started = time.monotonic()
        trace: dict[str, list[int]] = {n: [] for n in pids}  # RSS after each round: a leak grows
        with sampler.sampling():
            for _ in range(args.rounds):
                for name, calls in attacks.items():
                    for fn in calls:
                        code = quietly(fn)
                        codes[name][code] = codes[name].get(code, 0) + 1
                for n, pid in pids.items():
                    trace[n].append(round(rss_bytes(pid) / MB))
        elapsed = time.monotonic() - started
        after = {n: rss_bytes(pid) for n, pid in pids.items()}
        alive = {n: (gen if n == "generator" else tra).proc.poll() is None for n in pids}
        gch.close()
        tch.close()
    finally:
        for pr in procs:
            pr.stop()

    bounds = {"generator": args.gen_bound_mb, "trainer": args.trainer_bound_mb}
    print(f"{args.rounds} rounds in {elapsed:.0f} s; status codes: {codes}")
    for n, mbs in trace.items():
        print(f"{n} RSS after each round (MB): {mbs}")
    print("| service | idle baseline | peak | after | peak / baseline | peak - baseline | bound |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for n in pids:
        grow = (sampler.peak[n] - base[n]) / MB
        ok = grow <= bounds[n] and alive[n]
        failed |= not ok
        print(f"| {n} | {base[n] / MB:.0f} MB | {sampler.peak[n] / MB:.0f} MB | "
              f"{after[n] / MB:.0f} MB | {sampler.peak[n] / max(1, base[n]):.2f} | "
              f"{grow:+.0f} MB | <= +{bounds[n]:.0f} MB {'ok' if ok else 'EXCEEDED'}"
              f"{'' if alive[n] else ' (process died)'} |")
    bad = {n: {c: k for c, k in cs.items() if c in ("INTERNAL", "UNKNOWN", "UNAVAILABLE")}
           for n, cs in codes.items()}
    if any(bad.values()):
        print(f"unexpected status codes: {bad}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
