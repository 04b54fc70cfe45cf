"""A real local Ray cluster for the Ray engine tests (tests/ray/cluster.py), one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ray.cluster import RayCluster
from tests.ray.cluster import ray_cluster as start_ray_cluster


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    with start_ray_cluster(num_cpus=2) as cluster:
        yield cluster
