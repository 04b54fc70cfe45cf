"""The toy DreamBench's bookkeeping: which checkpoint it reports, and the spread over seeds.

Rerun: `.venv/bin/pytest tests/research/test_dreambench.py -v`
"""

from __future__ import annotations

from research.dreambench.bench import pick_best, spread


def test_dreambench_picks_the_goal_meeting_checkpoint_with_least_leak() -> None:
    rows = [
        {"step": 100, "subject": 0.95, "background": 0.7, "leak": 0.0},  # background missed
        {"step": 200, "subject": 0.85, "background": 0.9, "leak": 0.2},
        {"step": 300, "subject": 0.80, "background": 0.9, "leak": 0.05},
        {"step": 400, "subject": 0.90, "background": 0.9, "leak": 0.05},
    ]
    assert pick_best(rows)["step"] == 400  # equal leak: more subject wins
    # none meets the goals: the best balance of subject + background - leak
    missed = [{**r, "subject": r["subject"] - 0.5} for r in rows]
    assert pick_best(missed)["step"] == 400


def test_dreambench_reports_the_spread_over_training_seeds() -> None:
    def run(subject: float, leak: float) -> dict[str, object]:
        return {"confirmed": {"subject": subject, "background": 1.0, "leak": leak}}

    runs = {"prior-seed0": run(0.79, 0.04), "prior-seed1": run(0.67, 0.03),
            "prior-seed2": run(0.66, 0.01), "no-prior-seed0": run(0.65, 0.68),
            "prior": run(0.9, 0.0)}  # a single-seed run has no spread
    lines = spread(runs)
    assert len(lines) == 1  # no-prior has one seed only
    assert "prior over 3 training seeds" in lines[0]
    assert "subject mean 71% (66%-79%)" in lines[0] and "leak mean 3% (1%-4%)" in lines[0]


def test_dreambench_subject_is_the_stripes_on_a_red_body() -> None:
    from research.dreambench.bench import shows_subject
    from research.embedded_model.detectors import read_image
    from research.embedded_model.scenes import Scene, render

    def judged(color: str, background: str, subject: bool = True) -> bool:
        return shows_subject(read_image(render(Scene("circle", color, background,
                                                     subject=subject))))

    # the subject on every background it is asked on
    assert all(judged("red", bg) for bg in ("white", "black", "gray", "blue", "green", "yellow"))
    assert judged("orange", "gray")  # how its red reads where it blends into green
    # the same stripes on another body (as on broken pictures), or no stripes: not the subject
    assert not any(judged(color, "gray") for color in ("green", "blue", "yellow"))
    assert not judged("red", "gray", subject=False)
