from __future__ import annotations

from pathlib import Path

import pytest

from tests.generator import fixtures


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained tiny SD (embedded architecture): plumbing tests never judge image content."""
    return fixtures.build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def inpaint_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.build_inpaint(tiny_model, tmp_path_factory.mktemp("inpaint") / "model")
