"""Scaled-out stores vs the single-host default, measured in one run (ratios, not absolute times).

1. Generate with a cached model: Catalog + Generator on PostgreSQL + S3 (moto's server) ÷ the
   same on SQLite + the local data folder. The model is imported with copy_files in both (so it
   is in each store); the first request of the S3 generator pulls it into its model cache, the
   timed ones run from the cache. Goal <= 1.05.
2. First use of a model on a fresh replica: time from the first to the last ModelDownload event
   of that first request, and its bytes (reported).
3. A training step while checkpoints go to S3 ÷ to the local folder: a DreamBooth job with a
   full-state checkpoint every 2 steps (`--checkpoint-every`); the step time is the time
   between the first and the last metrics event over the steps between them (so a
   checkpoint that stalls a step shows). Goal <= 1.05.

Needs PostgreSQL's binaries (Debian's `postgresql`) and moto (`make setup` installs it).

    .venv/bin/python bench/bench_scale_out.py [--runs 8] [--steps 24]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import grpc  # noqa: E402

from bench.common import Proc, free_port, model_dir, parser, spawn, wait_serving  # noqa: E402
from boothstudio.v1 import (  # noqa: E402
    catalog_pb2,
    catalog_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.stores.postgres import PostgresServer, find_bindir  # noqa: E402
from tests.stores.s3 import MotoServer  # noqa: E402

CATALOG = "boothstudio.v1.CatalogService"
GENERATOR = "boothstudio.v1.GeneratorService"
TRAINER = "boothstudio.v1.TrainerService"


@contextlib.contextmanager
def services(env: dict[str, str], trainer: bool = False) -> Iterator[dict[str, Proc]]:
    """Catalog + Generator (+ Trainer), each with its own data folder, sharing `env`."""
    ports = {name: free_port() for name in ("catalog", "generator", "trainer")}
    addresses = {f"BOOTHSTUDIO_{n.upper()}_ADDRESS": f"127.0.0.1:{p}" for n, p in ports.items()}
    procs: dict[str, Proc] = {}
    try:
        procs["catalog"] = spawn("catalog", ports["catalog"], env={**env, **addresses})
        wait_serving(procs["catalog"], CATALOG)
        procs["generator"] = spawn("generator", ports["generator"],
                                   ["preload=false", "torch_threads=1"], env={**env, **addresses})
        wait_serving(procs["generator"], GENERATOR)
        if trainer:
            procs["trainer"] = spawn("trainer", ports["trainer"],
                                     ["worker_threads=1", "sample_steps=2"],
                                     env={**env, **addresses})
            wait_serving(procs["trainer"], TRAINER)
        yield procs
    finally:
        for p in reversed(list(procs.values())):
            p.stop()


def import_model(catalog: Proc, model: Path, model_id: str) -> None:
    with grpc.insecure_channel(catalog.address) as ch:
        catalog_pb2_grpc.CatalogServiceStub(ch).ImportModel(catalog_pb2.ImportModelRequest(
            diffusers_path=str(model), model_id=model_id, copy_files=True), timeout=300)


def generate(gen: Proc, model_id: str, steps: int, size: int, seed: int) -> tuple[float, list]:
    """Seconds for one whole Generate stream, and its ModelDownload events (with arrival time)."""
    request = generator_pb2.GenerateRequest(prompt="a red circle", model_id=model_id,
                                            steps=steps, width=size, height=size, seed=seed)
    downloads = []
    with grpc.insecure_channel(gen.address) as ch:
        start = time.perf_counter()
        for event in generator_pb2_grpc.GeneratorServiceStub(ch).Generate(request, timeout=600):
            if event.HasField("model_download"):
                downloads.append((time.perf_counter(), event.model_download))
            if event.HasField("finished"):
                assert event.finished.status == generator_pb2.GENERATION_STATUS_SUCCEEDED, event
        return time.perf_counter() - start, downloads


def train(procs: dict[str, Proc], model_id: str, steps: int, every: int) -> float:
    """Mean seconds per step of a job checkpointing every `every` steps."""
    from research.embedded_model.scenes import subject_images
    from tests.trainer.helpers import png_bytes

    cfg = trainer_pb2.DreamBoothConfig(base_model_id=model_id, class_noun="circle",
                                       max_train_steps=steps, seed=11, learning_rate=1e-4,
                                       checkpoint_every_steps=every)
    for i, (img, _) in enumerate(subject_images(2)):
        cfg.instance_images.add(data=png_bytes(img), filename=f"s{i}.png")
    with grpc.insecure_channel(procs["trainer"].address) as ch:
        stub = trainer_pb2_grpc.TrainerServiceStub(ch)
        job = stub.CreateTrainingJob(trainer_pb2.CreateTrainingJobRequest(config=cfg),
                                     timeout=300).job
        points = []  # (step, time): metrics events come every step or few
        for event in stub.WatchTrainingJob(
                trainer_pb2.WatchTrainingJobRequest(job_id=job.job_id), timeout=1800):
            if event.WhichOneof("event") == "metrics":
                points.append((event.metrics.step, event.time.ToNanoseconds() / 1e9))
        final = stub.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job.job_id)).job
        assert final.state == trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED, final
    (first_step, first_time), (last_step, last_time) = points[0], points[-1]
    return (last_time - first_time) / (last_step - first_step)  # past the first (warm-up) step


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=24)
    p.add_argument("--checkpoint-every", type=int, default=2,
                   help="steps between full-state checkpoints in part 3")
    p.add_argument("--store-niceness", type=int, default=0,
                   help="run the S3 server at this nice value (a stand-in for a store on "
                        "another host: it then takes no CPU the services want)")
    args = p.parse_args()
    model = model_dir(args.model)
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    pg, s3 = PostgresServer.start(bindir), MotoServer.start(niceness=args.store_niceness)
    try:
        bucket = s3.new_bucket("bench")
        scaled = {**bucket.env, "BOOTHSTUDIO_DATABASE_URL": pg.create_database("bench")}
        with services({}) as local, services(scaled) as remote:
            import_model(local["catalog"], model, "bench-model")
            import_model(remote["catalog"], model, "bench-model")
            first, downloads = generate(remote["generator"], "bench-model", args.steps,
                                        args.size, 0)
            generate(local["generator"], "bench-model", args.steps, args.size, 0)
            pulled = downloads[-1][1].bytes_total if downloads else 0
            pull_s = downloads[-1][0] - downloads[0][0] if len(downloads) > 1 else 0.0
            t_local, t_remote = [], []
            for run in range(args.runs):  # alternate, so machine noise hits both alike
                t_local.append(generate(local["generator"], "bench-model", args.steps,
                                        args.size, run + 1)[0])
                t_remote.append(generate(remote["generator"], "bench-model", args.steps,
                                         args.size, run + 1)[0])
        gen_local, gen_remote = statistics.median(t_local), statistics.median(t_remote)
        with services({}, trainer=True) as local:
            import_model(local["catalog"], model, "bench-model")
            step_local = train(local, "bench-model", args.train_steps, args.checkpoint_every)
        with services({**scaled, "BOOTHSTUDIO_DATABASE_URL": pg.create_database("bench2")},
                      trainer=True) as remote:
            import_model(remote["catalog"], model, "bench-model")
            step_remote = train(remote, "bench-model", args.train_steps, args.checkpoint_every)
    finally:
        s3.stop()
        pg.destroy()

    print(f"1. Generate, cached model ({args.runs} runs, {args.steps} steps, {args.size} px): "
          f"SQLite+local {gen_local * 1000:.0f} ms median, PostgreSQL+S3 "
          f"{gen_remote * 1000:.0f} ms median: ratio {gen_remote / gen_local:.3f} (goal <= 1.05)")
    print(f"2. First use on a fresh replica: pulled {pulled / 1e6:.1f} MB in {pull_s:.2f} s "
          f"(whole first request {first:.2f} s)")
    print(f"3. Training step, checkpoint every {args.checkpoint_every} steps: "
          f"local {step_local * 1000:.0f} ms, "
          f"S3 {step_remote * 1000:.0f} ms: ratio {step_remote / step_local:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
