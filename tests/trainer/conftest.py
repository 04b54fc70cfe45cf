"""Trainer test fixtures: a tiny untrained model (same architecture as the embedded one) and
instance images of the DreamBooth subject. Settings stay tiny: 64 px, batch 1, a few steps."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.helpers import png_bytes

# One thread: the CI box has 2 cores shared with other work; oversubscribed OpenMP threads make
# small CPU models an order of magnitude slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def subject_cutouts() -> list[bytes]:
    """The same pictures as RGBA PNGs whose alpha marks the subject (masked training)."""
    from research.embedded_model.scenes import subject_images

    return [png_bytes(img) for img, _ in subject_images(4, alpha=True)]
