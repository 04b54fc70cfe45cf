"""`boothstudio jobs get` lists the job's checkpoints with their validation scores (read from
the job's CheckpointSaved events): blank where a checkpoint was not scored, the best marked."""

from __future__ import annotations

import json

import pytest

from boothstudio.clients.sdk.cli.jobs import checkpoint_rows
from boothstudio.clients.sdk.types import Checkpoint, CheckpointKind
from tests.trainer.helpers import Stack, job_config, run_to_success, start_stack
from tests.trainer.test_training_options import DECREASING


@pytest.fixture(scope="module")
def stack(module_services, untrained_model) -> Stack:
    return start_stack(module_services, untrained_model)


def table(text: str) -> list[list[str]]:
    """The checkpoint table of `jobs get`: its rows split on runs of two spaces or more."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("CHECKPOINT"))
    return [[c.strip() for c in line.split("  ") if c.strip()] for line in lines[start:]]


def test_jobs_get_shows_each_checkpoints_score_and_marks_the_best(stack, subject_pngs):
    from tests.sdk.test_cli import run_here

    # the scorer scores each call lower: the first checkpoint is the best
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=3, checkpoint_every_steps=1,
                     validation_scorer=DECREASING,
                     validation_prompts=["a {identifier} {class_noun}", "a {class_noun}"])
    job, _ = run_to_success(stack, cfg)
    address = ["--catalog", stack.catalog.address, "--trainer", stack.trainer.address]
    res = run_here(*address, "jobs", "get", job.job_id)
    assert res.returncode == 0, res.stderr
    rows = table(res.stdout)
    assert rows[0] == ["CHECKPOINT", "STEP", "KIND", "SIZE", "SCORE"]
    by_id = {r[0]: r for r in rows[1:]}
    assert list(by_id) == ["step-000001", "step-000002", "step-000003"]
    scores = {cid: r[4] for cid, r in by_id.items()}
    assert scores["step-000001"].endswith("(best)")
    assert all(not s.endswith("(best)") for cid, s in scores.items() if cid != "step-000001")
    values = [float(s.split()[0]) for s in scores.values()]
    assert values == sorted(values, reverse=True) and len(set(values)) == 3
    assert by_id["step-000003"][2] == "state+export"  # older full states are not kept
    assert by_id["step-000001"][2] == "export"

    # --json: the job's checkpoints carry their scores
    res = run_here(*address, "--json", "jobs", "get", job.job_id)
    listed = json.loads(res.stdout)["checkpoints"]
    assert all(c["validation_score"] is not None for c in listed)
    assert {p for c in listed for p in c["validation_scores"]} == {"a zwx circle", "a circle"}


def test_unscored_checkpoints_leave_the_score_blank():
    rows = checkpoint_rows([
        Checkpoint("step-000002", 2, CheckpointKind.EXPORT, size_bytes=2048),
        Checkpoint("step-000001", 1, CheckpointKind.FULL_STATE, size_bytes=1000),
        Checkpoint("step-000001", 1, CheckpointKind.EXPORT, size_bytes=24),
    ])
    assert [(r[0], r[2], r[4]) for r in rows] == [
        ("step-000001", "state+export", ""), ("step-000002", "export", "")]
    rows = checkpoint_rows([Checkpoint("a", 1, validation_score=0.25),
                            Checkpoint("b", 2), Checkpoint("c", 3, validation_score=0.5)])
    assert [r[4] for r in rows] == ["0.25", "", "0.5 (best)"]
