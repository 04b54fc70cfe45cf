"""Generator replicas and the artifact store, in real processes: a real PostgreSQL server and a
real S3 endpoint (moto), each Generator with its own empty data dir.

- a long generation started on replica A is cancelled through replica B (B finds A in the
  database and forwards the call): A's stream ends CANCELLED; once A has stopped, the job is
  answered FAILED_PRECONDITION (JOB_REPLICA_GONE) and an id nobody knows is still just not
  cancelled;
- an S3 store that goes away: GetImage answers UNAVAILABLE (STORAGE_UNAVAILABLE), a generation
  fails with that reason without claiming an image id or leaving a row, and the Generator
  recovers by itself when the store is back.

Rerun: `.venv/bin/pytest tests/stores/test_generator_replicas.py -v`
"""

from __future__ import annotations

import os
import threading
from typing import Any

import grpc

from boothstudio.v1 import generator_pb2 as pb
from tests.stores.helpers import isolated_env, rpc_error
from tests.stores.s3 import MotoServer, S3Target
from tests.stores.test_gallery_store import EMBEDDED, NO_PRELOAD, generate, listed, pngs, stub


def test_a_generation_on_one_replica_is_cancelled_through_another(
    start_service: Any, database_url: str, s3_bucket: S3Target
) -> None:
    catalog = start_service("catalog", env=isolated_env())
    env = isolated_env(database_url, BOOTHSTUDIO_CATALOG_ADDRESS=catalog.address, **s3_bucket.env)
    a_svc = start_service("generator", NO_PRELOAD, env=env, timeout=180)
    b_svc = start_service("generator", NO_PRELOAD, env=env, timeout=180)
    a, b = stub(a_svc), stub(b_svc)

    events: list[pb.GenerateResponse] = []
    progressing = threading.Event()

    def run_long_job_on_a() -> None:
        request = pb.GenerateRequest(
            prompt="a long one", steps=150, width=128, height=128, count=4, model_id=EMBEDDED
        )
        for event in a.Generate(request, timeout=600):
            events.append(event)
            if event.HasField("progress"):
                progressing.set()

    consumer = threading.Thread(target=run_long_job_on_a, daemon=True)
    consumer.start()
    assert progressing.wait(300), "the long job never progressed"
    job_id = events[0].job_id  # made by A

    assert b.CancelGeneration(pb.CancelGenerationRequest(job_id=job_id)).cancelled
    consumer.join(120)
    assert not consumer.is_alive()
    finished = events[-1].finished
    assert finished.status == pb.GENERATION_STATUS_CANCELLED, events[-1]
    assert finished.error_reason == "CANCELLED_BY_USER"
    assert listed(b, job_id=job_id) == []
    # the job is over: A says so, through B too
    assert not b.CancelGeneration(pb.CancelGenerationRequest(job_id=job_id)).cancelled
    assert not b.CancelGeneration(pb.CancelGenerationRequest(job_id="nobody-knows")).cancelled

    a_svc.stop()
    err = rpc_error(lambda: b.CancelGeneration(pb.CancelGenerationRequest(job_id=job_id)))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION, err
    assert err.reason == "JOB_REPLICA_GONE" and job_id in err.message, err


def test_a_store_that_goes_away_answers_unavailable_and_the_generator_recovers(
    start_service: Any, s3_server: MotoServer
) -> None:
    name = f"outage-{os.getpid()}"
    bucket = s3_server.new_bucket(name)
    catalog = start_service("catalog", env=isolated_env())
    svc = start_service(
        "generator",
        NO_PRELOAD,
        env=isolated_env(BOOTHSTUDIO_CATALOG_ADDRESS=catalog.address, **bucket.env),
        timeout=180,
    )
    s = stub(svc)
    made = list(generate(s, job_id="before").image_ids)
    assert bucket.keys("generator/images") == [f"generator/images/{made[0]}.png"]
    s3_server.stop()
    try:
        err = rpc_error(lambda: s.GetImage(pb.GetImageRequest(image_id=made[0])))
        assert err.code == grpc.StatusCode.UNAVAILABLE, err
        assert err.reason == "STORAGE_UNAVAILABLE"
        assert err.retry_after and err.retry_after > 0
        # the row is in the database, which is up
        assert s.GetImage(pb.GetImageRequest(image_id=made[0], metadata_only=True)).image.seed
        # an image that cannot be stored is not claimed: no image id, no row, no local file
        request = pb.GenerateRequest(
            prompt="a red circle", steps=2, width=64, height=64, seed=7, model_id=EMBEDDED,
            job_id="while-down",
        )  # fmt: skip
        events = list(s.Generate(request, timeout=300))
        assert [e for e in events if e.HasField("image")] == []
        failed = events[-1].finished
        assert failed.status == pb.GENERATION_STATUS_FAILED
        assert failed.error_reason == "STORAGE_UNAVAILABLE", failed
        assert list(failed.image_ids) == []
        assert listed(s) == made and pngs(svc) == []
    finally:
        s3_server.restart()
    s3_server.new_bucket(name)  # moto forgets its buckets when it stops
    # no restart of the service: the next call reaches the store again
    after = list(generate(s, job_id="after").image_ids)
    assert set(listed(s)) == {*made, *after}
    assert s.GetImage(pb.GetImageRequest(image_id=after[0])).image.png.startswith(b"\x89PNG")
