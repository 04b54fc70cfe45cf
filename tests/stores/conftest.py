"""Fixtures of the store tests: a real PostgreSQL server for the session (see postgres.py) and
a real S3 endpoint (moto's server, see s3.py).

Skipped when PostgreSQL is not installed, unless BOOTHSTUDIO_REQUIRE_POSTGRES=1 (CI sets it,
after `apt-get install postgresql`), where a missing server fails instead.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest

from tests.stores.postgres import PostgresServer, find_bindir
from tests.stores.s3 import MotoServer, S3Target

_names = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)"
        if os.environ.get("BOOTHSTUDIO_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{message}, and BOOTHSTUDIO_REQUIRE_POSTGRES=1")
        pytest.skip(message)
    server = PostgresServer.start(bindir)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.create_database(f"t{os.getpid()}_{next(_names)}")


@pytest.fixture
def new_database(postgres: PostgresServer) -> Callable[[], str]:
    """Factory of fresh, empty databases."""
    return lambda: postgres.create_database(f"t{os.getpid()}_{next(_names)}")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """moto's S3 server on loopback for the session (see s3.py)."""
    server = MotoServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> S3Target:
    """A fresh, empty bucket: url s3://<bucket>/boothstudio, env for service processes."""
    return s3_server.new_bucket(f"b{os.getpid()}-{next(_names)}")
