"""The scaled-out product end to end: Catalog + 2 Generators + 2 Trainers, each process with its
own empty data dir, sharing nothing but a real PostgreSQL database and a real S3 endpoint (moto's
server through s3fs, as a MinIO or AWS bucket would be reached).

A DreamBooth job starts on trainer A, which is killed with SIGKILL after a checkpoint reached the
store; trainer B takes the job over when A's lease expires and finishes it from that checkpoint;
generator B, which never shared a disk with any trainer, generates with the fine-tuned model
(pulled from the store, the download reported in the stream); the image is listed and fetched
through generator A; deleting the model removes its objects from the store.

Rerun: `.venv/bin/pytest tests/stores/test_scale_out.py -v`
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from boothstudio.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    generator_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from boothstudio.v1 import generator_pb2 as gen_pb
from tests.stores.helpers import isolated_env
from tests.stores.s3 import S3Target
from tests.trainer.helpers import TRAINER_ARGS, JobState, job_config

LEASE_S = 4
STEPS = 24


def _job(trainer: Any, job_id: str) -> trainer_pb2.TrainingJob:
    stub = trainer_pb2_grpc.TrainerServiceStub(trainer.channel())
    return stub.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job_id), timeout=30).job


def _wait(trainer: Any, job_id: str, pred: Any, timeout: float = 600) -> trainer_pb2.TrainingJob:
    deadline = time.monotonic() + timeout
    while True:
        job = _job(trainer, job_id)
        if pred(job):
            return job
        assert time.monotonic() < deadline, f"job never got there: {job}"
        time.sleep(0.3)


def test_two_of_each_service_on_postgres_and_s3_survive_a_trainer_killed_mid_job(
    start_service: Any, database_url: str, s3_bucket: S3Target, untrained_model: Path,
    subject_pngs: list[bytes], tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    pool = ThreadPoolExecutor(max_workers=4)
    request.addfinalizer(lambda: pool.shutdown(wait=True))

    def start_service_soon(*args: Any, **kw: Any) -> Future[Any]:
        return pool.submit(start_service, *args, **kw)

    shared = {**s3_bucket.env}
    catalog = start_service("catalog", env=isolated_env(database_url, **shared))
    to_catalog = {**shared, "BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address}
    trainer_args = [*TRAINER_ARGS, "--set", f"lease_seconds={LEASE_S}"]
    gen_args = ["--set", "preload=false", "--set", "torch_threads=1"]
    # the four replicas start side by side (each start is mostly imports and waiting)
    starting = [start_service_soon("trainer", [*trainer_args, "--set", f"replica_id=trainer-{x}"],
                                   env=isolated_env(database_url, **to_catalog)) for x in "ab"]
    starting += [start_service_soon("generator", gen_args,
                                    env=isolated_env(database_url, **to_catalog))
                 for _ in range(2)]
    trainer_a, trainer_b, gen_a, gen_b = (f.result() for f in starting)
    data_dirs = [s.data_dir for s in (catalog, trainer_a, trainer_b, gen_a, gen_b)]
    assert len(set(data_dirs)) == 5

    # the base model goes into the store (copy_files): no trainer can read the catalog's disk
    cat = catalog_pb2_grpc.CatalogServiceStub(catalog.channel())
    base = cat.ImportModel(catalog_pb2.ImportModelRequest(
        diffusers_path=str(untrained_model), model_id="base-tiny", copy_files=True),
        timeout=120).model
    assert base.source_path.startswith(s3_bucket.url + "/catalog/models/base-tiny")

    # 1. the job starts on trainer A; A dies hard once a checkpoint is in the store
    cfg = job_config(base.id, subject_pngs[:2], steps=STEPS, checkpoint_every_steps=3)
    stub_a = trainer_pb2_grpc.TrainerServiceStub(trainer_a.channel())
    job = stub_a.CreateTrainingJob(trainer_pb2.CreateTrainingJobRequest(config=cfg),
                                   timeout=120).job

    def checkpoint_in_store(j: trainer_pb2.TrainingJob) -> bool:
        # committed: the .sha256 marker follows the uploaded object
        return j.step >= 4 and any(k.endswith(".ckpt.sha256") for k in s3_bucket.keys(
            f"trainer/jobs/{j.job_id}/checkpoints"))

    # B may claim the queued job first: then the roles swap (the one running it is killed)
    job = _wait(trainer_a, job.job_id, checkpoint_in_store)
    runner, survivor = (trainer_a, trainer_b) if any(
        (trainer_a.data_dir / "trainer" / "jobs" / job.job_id).glob("*")) else (
        trainer_b, trainer_a)
    runner.proc.send_signal(signal.SIGKILL)
    runner.proc.wait(timeout=30)
    # the second Catalog replica of step 5 starts while the survivor trains
    catalog_2_starting = start_service_soon("catalog", env=isolated_env(
        database_url, **shared, BOOTHSTUDIO_TRAINER_ADDRESS=survivor.address))

    # 2. the survivor takes the job over after the lease and finishes it from the checkpoint
    done = _wait(survivor, job.job_id, lambda j: j.state in (
        JobState.TRAINING_JOB_STATE_SUCCEEDED, JobState.TRAINING_JOB_STATE_FAILED), timeout=900)
    assert done.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, done
    assert done.step == STEPS and done.output_model_id
    events = list(trainer_pb2_grpc.TrainerServiceStub(survivor.channel()).WatchTrainingJob(
        trainer_pb2.WatchTrainingJobRequest(job_id=job.job_id, include_history=True),
        timeout=120))
    metric_steps = [e.metrics.step for e in events if e.WhichOneof("event") == "metrics"]
    reasons = [e.state_changed.reason for e in events if e.WhichOneof("event") == "state_changed"]
    assert reasons.count("TAKEN_OVER") == 1 and reasons.count("SUCCEEDED") <= 1, reasons
    # the second run went on from a checkpoint in the store (not from step 1) and from there
    # trained each step once (metrics come every few steps)
    restart = next(i for i in range(1, len(metric_steps))
                   if metric_steps[i] <= metric_steps[i - 1])
    assert 1 < metric_steps[restart] <= max(metric_steps[:restart]) + 1, metric_steps
    after = metric_steps[restart:]
    assert after == sorted(set(after)) and after[-1] == STEPS, metric_steps
    assert (survivor.data_dir / "trainer" / "jobs" / job.job_id).exists()

    # 3. generator B generates with the fine-tuned model, pulled from the store
    model = cat.GetModel(catalog_pb2.GetModelRequest(model_id=done.output_model_id)).model
    assert model.source_path.startswith(s3_bucket.url + "/")
    stub_b = generator_pb2_grpc.GeneratorServiceStub(gen_b.channel())
    request = gen_pb.GenerateRequest(prompt=f"a photo of {done.trigger_phrase}", steps=2,
                                     width=64, height=64, seed=3, model_id=model.id)
    try:
        stream = list(stub_b.Generate(request, timeout=600))
    except grpc.RpcError as err:  # the replica's own account of what went wrong
        raise AssertionError(f"{err}\n{gen_b.logs()[-6000:]}") from err
    finished = [e.finished for e in stream if e.HasField("finished")]
    assert finished and finished[0].status == gen_pb.GENERATION_STATUS_SUCCEEDED, stream[-3:]
    downloads = [e.model_download for e in stream if e.HasField("model_download")]
    assert downloads and downloads[-1].bytes_done == downloads[-1].bytes_total > 0
    (image_id,) = finished[0].image_ids

    # 4. the image is listed and fetched through generator A
    stub_ga = generator_pb2_grpc.GeneratorServiceStub(gen_a.channel())
    assert image_id in [i.image_id for i in stub_ga.ListImages(
        gen_pb.ListImagesRequest(page_size=100)).images]
    image = stub_ga.GetImage(gen_pb.GetImageRequest(image_id=image_id)).image
    assert image.png.startswith(b"\x89PNG") and image.model_id == model.id

    # 5. deleting the model removes its objects from the store. Through a second Catalog replica
    # that asks the surviving Trainer whether a job still uses the model (scaled out, a Catalog
    # that cannot ask refuses the delete)
    catalog_2 = catalog_2_starting.result()
    cat_2 = catalog_pb2_grpc.CatalogServiceStub(catalog_2.channel())
    prefix = f"catalog/models/{model.id}"
    assert s3_bucket.keys(prefix)
    cat_2.DeleteModel(catalog_pb2.DeleteModelRequest(model_id=model.id, delete_files=True),
                    timeout=120)
    assert s3_bucket.keys(prefix) == []
    assert cat.GetModel(catalog_pb2.GetModelRequest(model_id=base.id)).model.id == base.id
