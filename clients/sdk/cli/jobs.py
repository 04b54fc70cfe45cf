"""`boothstudio jobs`: list, show, cancel, resume, delete and watch training jobs; also how a
job and its events are shown (shared with `train`)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from boothstudio.clients.sdk.cli.arguments import Commands, add_limit, paged
from boothstudio.clients.sdk.cli.exits import EXIT_ERROR, EXIT_OK
from boothstudio.clients.sdk.cli.output import Output, bar, cell, fmt_seconds
from boothstudio.clients.sdk.client import BoothStudio
from boothstudio.clients.sdk.text import human_bytes
from boothstudio.clients.sdk.types import (
    Checkpoint,
    CheckpointKind,
    CheckpointSaved,
    ClassImagesProgress,
    LogMessage,
    SampleReady,
    StateChanged,
    TrainingEvent,
    TrainingJob,
    TrainingProgress,
    TrainingState,
    TrainingWarning,
)


def register(commands: Commands) -> None:
    jobs = commands.group("jobs", "list and manage training jobs")
    j = jobs.add("list", "list jobs")
    j.add_argument("--state", action="append", default=[], help="only jobs in this state")
    j.add_argument("--base-model", default="", help="only jobs fine-tuning this model")
    add_limit(j)
    j.set_defaults(func=list_jobs)
    j = jobs.add("get", "show a job")
    j.add_argument("job_id")
    j.set_defaults(func=get_job)
    j = jobs.add("cancel", "cancel a job")
    j.add_argument("job_id")
    j.set_defaults(func=cancel_job)
    j = jobs.add("resume", "resume a cancelled or failed job")
    j.add_argument("job_id")
    j.add_argument("--steps", type=int, default=0, help="new total steps")
    j.set_defaults(func=resume_job)
    j = jobs.add("delete", "delete a finished job")
    j.add_argument("job_id")
    j.add_argument("--force", action="store_true", help="cancel it first if running")
    j.set_defaults(func=delete_job)
    j = jobs.add("watch", "follow a job's progress until it ends")
    j.add_argument("job_id")
    j.add_argument("--logs", action="store_true", help="also print log lines")
    j.set_defaults(func=watch_job)


def list_jobs(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    jobs = paged(
        lambda t, n: client.list_training_jobs(
            page_size=n, page_token=t, states=args.state, base_model_id=args.base_model
        ),
        args.limit,
    )
    if out.json:
        out.emit(jobs)
    else:
        out.table(
            [
                (
                    j.job_id,
                    j.state,
                    f"{j.step}/{j.total_steps}",
                    j.display_name,
                    j.output_model_id or "-",
                    j.created_at or "-",
                )
                for j in jobs
            ],
            ["JOB", "STATE", "STEP", "NAME", "MODEL", "CREATED"],
        )
    return EXIT_OK


def get_job(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    print_job(with_scores(client, client.get_training_job(args.job_id)), out)
    return EXIT_OK


def with_scores(client: BoothStudio, job: TrainingJob) -> TrainingJob:
    """`job` with its checkpoints' validation scores, which only the job's CheckpointSaved
    events carry: read from its event history. A finished job's history ends by itself; a
    running one's is read until every listed checkpoint's event is in, or events newer than
    this call arrive (its history is then all read)."""
    wanted = {c.checkpoint_id for c in job.checkpoints}
    if not wanted:
        return job
    asked = datetime.now(UTC)
    saved: dict[str, Checkpoint] = {}
    with client.watch_training_job(job.job_id, include_history=True) as events:
        for event in events:
            if isinstance(event, CheckpointSaved):
                saved[event.checkpoint.checkpoint_id] = event.checkpoint
            if wanted <= saved.keys() or (event.time is not None and event.time > asked):
                break
    for c in job.checkpoints:
        if c.checkpoint_id in saved:
            c.validation_score = saved[c.checkpoint_id].validation_score
            c.validation_scores = dict(saved[c.checkpoint_id].validation_scores)
    return job


def cancel_job(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    print_job(client.cancel_training_job(args.job_id), out)
    return EXIT_OK


def resume_job(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    print_job(client.resume_training_job(args.job_id, max_train_steps=args.steps), out)
    return EXIT_OK


def delete_job(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    freed = client.delete_training_job(args.job_id, force=args.force)
    if out.json:
        out.emit({"job_id": args.job_id, "freed_bytes": freed})
    else:
        out.print(f"deleted {args.job_id} ({human_bytes(freed)} freed)")
    return EXIT_OK


def watch_job(args: argparse.Namespace, out: Output, client: BoothStudio) -> int:
    return finish_training(follow(client, args.job_id, out, logs=args.logs), out)


def show_training_event(event: TrainingEvent, out: Output, logs: bool = True) -> None:
    if isinstance(event, StateChanged):
        if event.message:
            detail = (
                f" ({event.reason}: {event.message})" if event.reason else f" ({event.message})"
            )
        else:
            detail = f" ({event.reason})" if event.reason not in ("", "CURRENT") else ""
        out.note(f"state: {event.state.value}{detail}")
    elif isinstance(event, TrainingProgress):
        m = event.metrics
        prior = f" prior {m.prior_loss:.4f}" if m.prior_loss is not None else ""
        frac = m.step / m.total_steps if m.total_steps else 0.0
        out.status(
            f"{bar(frac)} step {m.step}/{m.total_steps} loss {m.loss:.4f}{prior} "
            f"lr {m.learning_rate:.2g} ETA {fmt_seconds(m.eta)}"
        )
    elif isinstance(event, ClassImagesProgress):
        out.status(f"class images {event.ready}/{event.total} ({event.cached} cached)")
    elif isinstance(event, SampleReady):
        out.note(f"sample at step {event.step}: {event.prompt!r} (seed {event.seed})")
    elif isinstance(event, CheckpointSaved):
        c = event.checkpoint
        scored = ("" if c.validation_score is None
                  else f", validation score {c.validation_score:.3g}")
        out.note(f"checkpoint {c.checkpoint_id} at step {c.step} ({human_bytes(c.size_bytes)}"
                 f"{scored})")
    elif isinstance(event, TrainingWarning):
        out.note(f"warning: {event.warning.message} [{event.warning.reason}]")
    elif isinstance(event, LogMessage) and logs:
        out.note(f"{event.level.value}: {event.message}")


def print_job(job: TrainingJob, out: Output) -> None:
    if out.json:
        out.emit(job)
        return
    rows = [
        ("job", job.job_id),
        ("name", job.display_name),
        ("state", job.state.value),
        ("step", f"{job.step}/{job.total_steps}"),
        ("model", job.output_model_id or "-"),
        ("trigger", job.trigger_phrase or "-"),
        ("created", cell(job.created_at or "-")),
        ("resumable", cell(job.resumable)),
        ("images", job.instance_image_count),
    ]
    if job.last_metrics is not None:
        rows.append(("loss", f"{job.last_metrics.loss:.4f}"))
    if job.failure_reason or job.failure_message:
        rows.append(("failure", f"{job.failure_reason}: {job.failure_message}"))
    for w in job.warnings:
        rows.append(("warning", f"{w.message} [{w.reason}]"))
    for k, v in rows:
        out.print(f"{k + ':':<11}{v}")
    if job.checkpoints:
        out.print()
        out.table(checkpoint_rows(job.checkpoints), ["CHECKPOINT", "STEP", "KIND", "SIZE",
                                                     "SCORE"])


def best_checkpoint(checkpoints: list[Checkpoint]) -> str:
    """The id of the checkpoint with the highest validation score ("" when none is scored)."""
    scored = [c for c in checkpoints if c.validation_score is not None]
    return max(scored, key=lambda c: c.validation_score or 0.0).checkpoint_id if scored else ""


def checkpoint_rows(checkpoints: list[Checkpoint]) -> list[tuple[str, ...]]:
    """One row per checkpoint (its full state and its export together): id, step, kinds,
    size, validation score (blank where unscored; the best marked "best")."""
    best = best_checkpoint(checkpoints)
    by_id: dict[str, list[Checkpoint]] = {}
    for c in checkpoints:
        by_id.setdefault(c.checkpoint_id, []).append(c)
    rows: list[tuple[str, ...]] = []
    for cid, parts in sorted(by_id.items(), key=lambda kv: kv[1][0].step):
        score = next((c.validation_score for c in parts if c.validation_score is not None), None)
        text = "" if score is None else f"{score:.4g}" + (" (best)" if cid == best else "")
        kinds = "+".join(KIND_NAMES.get(c.kind, c.kind.value) for c in parts)
        rows.append((cid, str(parts[0].step), kinds,
                     human_bytes(sum(c.size_bytes for c in parts)), text))
    return rows


KIND_NAMES = {CheckpointKind.FULL_STATE: "state", CheckpointKind.EXPORT: "export"}


def finish_training(job: TrainingJob, out: Output) -> int:
    if out.json:
        out.emit(job)
    elif job.state is TrainingState.SUCCEEDED:
        out.print(job.output_model_id)
        if job.trigger_phrase:
            out.note(f"trigger phrase: {job.trigger_phrase!r}")
    else:
        out.note(
            f"job {job.job_id} ended {job.state.value}"
            + (f": {job.failure_reason} {job.failure_message}" if job.failure_reason else "")
        )
    return EXIT_OK if job.state is TrainingState.SUCCEEDED else EXIT_ERROR


def follow(client: BoothStudio, job_id: str, out: Output, logs: bool) -> TrainingJob:
    return client.wait_for_training_job(
        job_id, raise_on_failure=False, on_event=lambda e: show_training_event(e, out, logs)
    )
