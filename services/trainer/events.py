"""WatchTrainingJob's stream: a job's stored events as they come, until it ends.

Events are read from the database only (no in-process notification), so a watcher on any
replica sees the events of a job another replica runs as soon as they are written. The store is
polled (an indexed read, well under 1 ms) every POLL_SECONDS; a quiet stream gets
an empty event every KEEPALIVE_SECONDS so proxies keep it open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from boothstudio.services.trainer.store import TERMINAL, JobRow, JobStore, timestamp
from boothstudio.v1 import trainer_pb2

POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 10.0


async def watch(store: JobStore, job: JobRow, *, include_history: bool, include_logs: bool
                ) -> AsyncIterator[trainer_pb2.WatchTrainingJobResponse]:
    seq = 0
    done = False
    if include_history:
        # Every stored event, metrics included: a watcher joining late (the studio's
        # loss curve) sees the whole curve, not just the latest point.
        history = store.events_after(job.id, 0, 1_000_000)
        for ev in history:
            seq = ev.sequence
            if ev.WhichOneof("event") != "log" or include_logs:
                yield ev
        if history and history[-1].WhichOneof("event") == "state_changed" and (
                history[-1].state_changed.state in TERMINAL):
            return
    else:
        seq = store.last_event_seq(job.id)
        yield trainer_pb2.WatchTrainingJobResponse(
            job_id=job.id, time=timestamp(time.time()), sequence=seq,
            state_changed=trainer_pb2.TrainingStateChanged(
                previous_state=job.state, state=job.state, reason="CURRENT"))  # type: ignore[arg-type]
        if job.state in TERMINAL:
            return
    last_sent = time.monotonic()
    while not done:
        events = store.events_after(job.id, seq)
        for ev in events:
            seq = ev.sequence
            if ev.WhichOneof("event") == "log" and not include_logs:
                continue
            yield ev
            last_sent = time.monotonic()
            if ev.WhichOneof("event") == "state_changed" and ev.state_changed.state in TERMINAL:
                done = True
                break
        if done:
            break
        if not events:
            now_job = store.get(job.id)
            if now_job is None or (now_job.state in TERMINAL and
                                   store.last_event_seq(job.id) <= seq):
                return  # deleted, or finished with nothing left to send
            if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
                yield trainer_pb2.WatchTrainingJobResponse(
                    job_id=job.id, time=timestamp(time.time()), sequence=seq)
                last_sent = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)
