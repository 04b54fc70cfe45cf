"""Cancel, resume and delete: a job's state changed on request.

Every change is a compare-and-set in the job store (`expect=`), so the service and a worker
moving the same job at the same moment never overwrite each other's change.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

from boothstudio.services.trainer.job_files import delete_job_files
from boothstudio.services.trainer.mapping import state_name
from boothstudio.services.trainer.options import MAX_STEPS
from boothstudio.services.trainer.store import TERMINAL, JobRow, JobStore
from boothstudio.services.trainer.supervision import Supervisor
from boothstudio.shared.artifact_store import ArtifactStore
from boothstudio.shared.errors import FailedPrecondition, InvalidArgument
from boothstudio.shared.storage import folder_size
from boothstudio.v1 import trainer_pb2

JobState = trainer_pb2.TrainingJobState


class JobControl:
    def __init__(self, store: JobStore, supervisor: Supervisor,
                 artifacts: ArtifactStore) -> None:
        self.store = store
        self.supervisor = supervisor
        self.artifacts = artifacts

    async def cancel(self, job: JobRow) -> None:
        """Stop a job; an acknowledged cancel is always honoured.

        Queued: CANCELLED at once. Preparing, running or exporting: CANCELLING, and the worker
        stops at the next step (or before registering its export) and ends CANCELLED with a
        checkpoint, resumable; wherever it runs: the replica holding the job's lease sees the
        CANCELLING in the database. Active but held by no live lease (its replica died):
        CANCELLED at once. Every change is a compare-and-set against the state the decision
        was made on, so a worker moving on at the same moment (RUNNING -> EXPORTING ->
        SUCCEEDED) cannot silently undo it: the decision is made again on the new state.
        """
        for _ in range(5):
            if job.state in (JobState.TRAINING_JOB_STATE_CANCELLING,
                             JobState.TRAINING_JOB_STATE_CANCELLED):
                break  # already being cancelled or cancelled: nothing more to do
            if job.state in (JobState.TRAINING_JOB_STATE_SUCCEEDED,
                             JobState.TRAINING_JOB_STATE_FAILED):
                raise FailedPrecondition(f"job already {state_name(job.state)}",
                                         reason="JOB_FINISHED")
            if job.state == JobState.TRAINING_JOB_STATE_QUEUED:
                done = self.store.set_state(job.id, JobState.TRAINING_JOB_STATE_CANCELLED,
                                            "CANCELLED", "cancelled while queued",
                                            expect={job.state})
            elif self.supervisor.has_worker(job.id) or await asyncio.to_thread(
                    self.store.lease_is_live, job.id):
                if self.supervisor.has_worker(job.id):
                    # the STOP file reaches our worker at its next check
                    await asyncio.to_thread(self.supervisor.request_stop, job.id, "cancel")
                # else another replica runs it (or is starting it): its supervisor sees
                # CANCELLING within a second and passes the STOP to its worker
                done = self.store.set_state(
                    job.id, JobState.TRAINING_JOB_STATE_CANCELLING, "CANCEL_REQUESTED",
                    "stopping after the current step with a checkpoint", expect={job.state})
            else:  # nobody holds it (its replica died, or it is between two claims)
                done = self.store.set_state(job.id, JobState.TRAINING_JOB_STATE_CANCELLED,
                                            "CANCELLED", "", expect={job.state})
            if done is not None:
                break
            fresh = self.store.get(job.id)
            if fresh is None:
                break
            job = fresh

    async def resume(self, job: JobRow, new_total: int) -> None:
        """Queue a cancelled, failed or succeeded job again, from its last checkpoint
        (`new_total` steps in all when given: a succeeded job trains further)."""
        if new_total and not (job.step < new_total <= MAX_STEPS):
            raise InvalidArgument.for_field(
                "max_train_steps", f"must be more than the steps done ({job.step}) and at most "
                f"{MAX_STEPS}")
        if job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED and not new_total:
            raise FailedPrecondition("job succeeded; give max_train_steps to train further",
                                     reason="JOB_FINISHED")
        if job.state not in (JobState.TRAINING_JOB_STATE_CANCELLED,
                             JobState.TRAINING_JOB_STATE_FAILED,
                             JobState.TRAINING_JOB_STATE_SUCCEEDED):
            raise FailedPrecondition(f"job is {state_name(job.state)}; only cancelled, "
                                     "failed or succeeded jobs resume",
                                     reason="JOB_NOT_RESUMABLE")
        # a resumed job gets `max_attempts` worker starts again
        fields: dict[str, Any] = {"queued_at": time.time(), "end_time": None, "crashes": 0,
                                  "failure_reason": "", "failure_message": ""}
        if new_total:
            cfg = trainer_pb2.DreamBoothConfig()
            cfg.CopyFrom(job.config)
            cfg.max_train_steps = new_total
            fields.update(config=cfg, total_steps=new_total)
        if job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED:
            fields["output_model_id"] = ""
        ckpt = self.store.latest_full_checkpoint(job.id)
        if self.store.set_state(job.id, JobState.TRAINING_JOB_STATE_QUEUED, "RESUMED",
                                f"from step {ckpt.step}" if ckpt else "from the start",
                                expect={job.state}, **fields) is None:
            raise FailedPrecondition("the job changed state while resuming; try again",
                                     reason="JOB_STATE_CHANGED")
        self.supervisor.wake()

    async def delete(self, job: JobRow, force: bool) -> int:
        """Remove a job, its folder and rows (an active one only with `force`); bytes freed.
        A worker on another replica is stopped by its supervisor, which finds the job gone."""
        if job.state not in TERMINAL:
            if not force:
                raise FailedPrecondition(f"job is {state_name(job.state)}; cancel it first or "
                                         "delete with force", reason="JOB_ACTIVE")
            self.store.set_state(job.id, JobState.TRAINING_JOB_STATE_CANCELLED, "DELETED", "")
            await self.supervisor.kill(job.id)
        freed = await asyncio.to_thread(folder_size, job.job_dir)
        await asyncio.to_thread(shutil.rmtree, job.job_dir, True)
        # the row goes last: a delete cut short is retried and finds what is left
        await asyncio.to_thread(delete_job_files, self.artifacts, job.id)
        self.store.delete_job(job.id)
        return freed
