"""Ray as the training engine vs the local worker process, measured in one run.

1. Step time of a 2-worker DDP job on a local Ray cluster (2 CPUs, `ray start --head` on
   loopback) ÷ the same job as 2 local DDP processes (the default engine). Both through a real
   Trainer; the step time is (time of the last step's metrics event - time of the first one at
   or past --warm) / the steps between them, from the events' own timestamps (written by rank 0).
   The jobs alternate, local first, --runs times each; medians compared. Goal <= 1.10.
2. Job overhead: CreateTrainingJob -> the first step's metrics event, on Ray vs locally
   (reported; Ray starts a driver actor and two Train workers that import torch and Lightning).

    .venv/bin/python bench/bench_ray.py [--runs 2] [--train-steps 40] [--warm 5]

One torch thread per rank in both engines (worker_threads=1), no periodic checkpoints
(one at the end), no validation prompts: the step itself is compared.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import grpc  # noqa: E402

from bench.common import Proc, free_port, model_dir, parser, spawn, wait_serving  # noqa: E402
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, trainer_pb2, trainer_pb2_grpc  # noqa: E402
from tests.ray.cluster import ray_cluster  # noqa: E402

TRAINER = "boothstudio.v1.TrainerService"


def job_config(model_id: str, steps: int) -> trainer_pb2.DreamBoothConfig:
    from research.embedded_model.scenes import subject_images
    from tests.trainer.helpers import png_bytes

    cfg = trainer_pb2.DreamBoothConfig(
        base_model_id=model_id, class_noun="circle", max_train_steps=steps, seed=11,
        learning_rate=1e-4, checkpoint_every_steps=100_000, strategy=trainer_pb2.STRATEGY_DDP,
        devices=2, accelerator="cpu")
    for i, (img, _) in enumerate(subject_images(2)):
        cfg.instance_images.add(data=png_bytes(img), filename=f"s{i}.png")
    return cfg


def run_job(trainer: Proc, cfg: trainer_pb2.DreamBoothConfig, warm: int) -> tuple[float, float]:
    """(seconds per step past `warm`, seconds from CreateTrainingJob to the first step)."""
    with grpc.insecure_channel(trainer.address) as ch:
        stub = trainer_pb2_grpc.TrainerServiceStub(ch)
        created = time.time()
        job = stub.CreateTrainingJob(trainer_pb2.CreateTrainingJobRequest(config=cfg),
                                     timeout=300).job
        metrics: list[tuple[int, float]] = []
        for event in stub.WatchTrainingJob(
                trainer_pb2.WatchTrainingJobRequest(job_id=job.job_id), timeout=1800):
            if event.WhichOneof("event") == "metrics":
                metrics.append((event.metrics.step, event.time.ToNanoseconds() / 1e9))
        final = stub.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job.job_id)).job
        assert final.state == trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED, final
    (s0, t0) = next((s, t) for s, t in metrics if s >= warm)
    (s1, t1) = metrics[-1]
    return (t1 - t0) / (s1 - s0), metrics[0][1] - created


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--warm", type=int, default=5)
    args = p.parse_args()
    model = model_dir(args.model)
    procs: list[Proc] = []
    with ray_cluster(num_cpus=2) as cluster:
        try:
            cport = free_port()
            catalog = spawn("catalog", cport)
            procs.append(catalog)
            wait_serving(catalog, "boothstudio.v1.CatalogService")
            with grpc.insecure_channel(catalog.address) as ch:
                catalog_pb2_grpc.CatalogServiceStub(ch).ImportModel(
                    catalog_pb2.ImportModelRequest(diffusers_path=str(model),
                                                   model_id="bench-base"), timeout=300)
            env = {"BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address}
            sets = ["worker_threads=1", "sample_steps=2"]
            engines = {"local": spawn("trainer", free_port(), sets, env=env),
                       "ray": spawn("trainer", free_port(), [*sets, "max_attempts=1"],
                                    env={**env, "BOOTHSTUDIO_RAY_ADDRESS": cluster.address})}
            procs += engines.values()
            for proc in engines.values():
                wait_serving(proc, TRAINER)
            cfg = job_config("bench-base", args.train_steps)
            step: dict[str, list[float]] = {"local": [], "ray": []}
            first: dict[str, list[float]] = {"local": [], "ray": []}
            for run in range(args.runs):
                for name, proc in engines.items():
                    per_step, to_first = run_job(proc, cfg, args.warm)
                    step[name].append(per_step)
                    first[name].append(to_first)
                    print(f"run {run + 1} {name:5}: {per_step * 1000:6.0f} ms/step, "
                          f"first step after {to_first:5.1f} s", flush=True)
        finally:
            for proc in reversed(procs):
                proc.stop()
    local, ray = statistics.median(step["local"]), statistics.median(step["ray"])
    print(f"\n2-worker DDP step, {args.train_steps} steps (past step {args.warm}), medians of "
          f"{args.runs}:")
    print(f"  local processes {local * 1000:.0f} ms, Ray {ray * 1000:.0f} ms, "
          f"ratio Ray/local {ray / local:.3f} (goal <= 1.10)")
    print(f"CreateTrainingJob -> first step: local {statistics.median(first['local']):.1f} s, "
          f"Ray {statistics.median(first['ray']):.1f} s")


if __name__ == "__main__":
    main()
