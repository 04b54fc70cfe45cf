"""Validation scorers for trainer tests (plugged in by DreamBoothConfig.validation_scorer)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from PIL import Image

from boothstudio.services.trainer.scoring import validation_scorer

_calls = itertools.count(1)


@validation_scorer
def decreasing(images: Sequence[Sequence[Image.Image]], prompts: Sequence[str]) -> list[float]:
    """Every call in a process scores lower than the one before (so a job's first scored
    checkpoint is its best), a little lower for each later prompt."""
    n = next(_calls)
    return [1.0 / n - 0.01 * i for i in range(len(prompts))]


def not_marked(images: Sequence[Sequence[Image.Image]], prompts: Sequence[str]) -> list[float]:
    return [0.0] * len(prompts)
