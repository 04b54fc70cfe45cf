"""Shared fixtures. See tests/helpers.py for start_service and ServiceProcess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.helpers import ServiceProcess

QUALITY_ENV = "BOOTHSTUDIO_QUALITY_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Quality tests train for tens of minutes: they run under `make test-quality` only."""
    import os

    if os.environ.get(QUALITY_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"quality test: `make test-quality` ({QUALITY_ENV}=1)")
    for item in items:
        if item.get_closest_marker("quality"):
            item.add_marker(skip)


@pytest.fixture
def start_service() -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start_service(name, extra_args=(), env=None, **kw) -> ServiceProcess.

    Every process started through it is stopped (SIGTERM) at teardown.
    """
    started: list[ServiceProcess] = []

    def factory(name: str, extra_args: Any = (), env: Any = None, **kw: Any) -> ServiceProcess:
        svc = helpers.start_service(name, extra_args, env, **kw)
        started.append(svc)
        return svc

    yield factory
    for svc in reversed(started):
        svc.stop()


@pytest.fixture(scope="module")
def module_services() -> Iterator[Callable[..., ServiceProcess]]:
    """Like start_service, but processes live for the whole test module."""
    started: list[ServiceProcess] = []

    def factory(name: str, extra_args: Any = (), env: Any = None, **kw: Any) -> ServiceProcess:
        svc = helpers.start_service(name, extra_args, env, **kw)
        started.append(svc)
        return svc

    yield factory
    for svc in reversed(started):
        svc.stop()


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained model (the embedded one's architecture), for training jobs."""
    from research.embedded_model.architecture import build_untrained_pipeline

    out = tmp_path_factory.mktemp("untrained") / "model"
    build_untrained_pipeline(out)
    return out


@pytest.fixture(scope="session")
def subject_pngs() -> list[bytes]:
    """Instance images of the DreamBooth subject (PNG bytes)."""
    from research.embedded_model.scenes import subject_images
    from tests.trainer.helpers import png_bytes

    return [png_bytes(img) for img, _ in subject_images(4)]
