"""Validation scorers: how a job's checkpoints are judged on its validation prompts.

A scorer is a callable ::

    @validation_scorer
    def my_scorer(images: Sequence[Sequence[PIL.Image.Image]],
                  prompts: Sequence[str]) -> Sequence[float]: ...

`images[i]` are the pictures generated for `prompts[i]` (one per validation seed, the same
seeds at every checkpoint); it returns one finite float per prompt, higher is better. A job
names it in `DreamBoothConfig.validation_scorer` by its Python path, "package.module:name",
and the training worker imports it (it must be installed, or on the path, of the trainer
hosts). Only callables marked with `validation_scorer` are accepted, so a job cannot make the
worker call an arbitrary function. The project's detectors for the embedded model plug in as
`research.dreambench.scorer:subject_scorer`.

No torch here: the service checks the path's form when a job is created.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

Scorer = Callable[[Sequence[Sequence[Image.Image]], Sequence[str]], Sequence[float]]

SCORER_FIELD = "config.validation_scorer"
MAX_SCORER_PATH_CHARS = 200
SCORER_PATH_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_MARK = "__boothstudio_validation_scorer__"


def scorer_path_problem(path: str) -> str:
    """What is wrong with a scorer path as the service can tell ("" when nothing): its form,
    and whether its top-level package is installed (found without importing anything; the
    worker imports the rest)."""
    if len(path) > MAX_SCORER_PATH_CHARS:
        return f"at most {MAX_SCORER_PATH_CHARS} characters"
    if not SCORER_PATH_RE.fullmatch(path):
        return f"{path!r} is not a Python path 'package.module:name'"
    top = path.split(".")[0].split(":")[0]
    if importlib.util.find_spec(top) is None:
        return f"no package {top!r} on this trainer host"
    return ""


def validation_scorer(fn: Scorer) -> Scorer:
    """Mark `fn` as a validation scorer (the worker calls only marked callables)."""
    setattr(fn, _MARK, True)
    return fn


def load_scorer(path: str) -> Scorer:
    """The scorer at "package.module:name"; ValueError naming the field when there is none."""
    problem = scorer_path_problem(path)
    if problem:
        raise ValueError(f"{SCORER_FIELD}: {problem}")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{SCORER_FIELD}: cannot import {module_name!r} on this trainer "
                         f"host ({exc})") from exc
    fn: Any = getattr(module, attr, None)
    if not callable(fn) or not getattr(fn, _MARK, False):
        raise ValueError(f"{SCORER_FIELD}: {path!r} is not a callable marked with "
                         "boothstudio.services.trainer.scoring.validation_scorer")
    return fn  # type: ignore[no-any-return]


def score(scorer: Scorer, images: Sequence[Sequence[Image.Image]],
          prompts: Sequence[str]) -> list[float]:
    """The scorer's values, checked: one finite float per prompt."""
    values = [float(v) for v in scorer(images, prompts)]
    if len(values) != len(prompts) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{SCORER_FIELD}: the scorer returned {values!r} for "
                         f"{len(prompts)} prompts (one finite number per prompt expected)")
    return values


def best_step(scores: dict[int, float]) -> int | None:
    """The step with the highest mean score (the later one of a tie: it trained longer)."""
    if not scores:
        return None
    return max(scores, key=lambda step: (scores[step], step))
