"""The toy DreamBench's detectors as a trainer validation scorer.

    DreamBoothConfig(validation_scorer="research.dreambench.scorer:subject_scorer", ...)

(the trainer hosts need this repository on their Python path). A prompt with the identifier
("a zwx circle on a blue background") scores the share of its images that show the subject
and, where the prompt names one, its background; a prompt without it ("a circle on a blue
background") scores the share that do not show the subject (1 = no leak).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from boothstudio.services.trainer.scoring import validation_scorer
from research.dreambench.bench import IDENTIFIER
from research.embedded_model.detectors import read_image
from research.embedded_model.scenes import BACKGROUNDS


def _named_background(prompt: str) -> str | None:
    words = prompt.lower().split()
    return next((bg for bg in BACKGROUNDS if f"{bg} background" in " ".join(words)), None)


@validation_scorer
def subject_scorer(images: Sequence[Sequence[Image.Image]],
                   prompts: Sequence[str]) -> list[float]:
    scores = []
    for pictures, prompt in zip(images, prompts, strict=True):
        wants_subject = IDENTIFIER in prompt.lower().split()
        background = _named_background(prompt)
        right = 0
        for picture in pictures:
            reading = read_image(picture)
            ok = reading.subject == wants_subject
            if wants_subject and background is not None:
                ok = ok and reading.background == background
            right += ok
        scores.append(right / max(1, len(pictures)))
    return scores
