from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD of the embedded architecture with random weights (plumbing tests only)."""
    from research.embedded_model.architecture import build_untrained_pipeline

    path = tmp_path_factory.mktemp("untrained-model")
    build_untrained_pipeline(path, seed=0)
    return path
