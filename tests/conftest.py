"""Suite-wide fixtures: temporary directories PostgreSQL (as its own user) can use."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import pgserver


@pytest.fixture
def pg_tmp() -> Iterator[Path]:
    """A temporary directory readable by the unprivileged PostgreSQL user.

    pytest's tmp_path lives under /tmp/pytest-of-root with mode 0700, which the
    ``postgres`` user cannot enter; this one is world-traversable.
    """
    with tempfile.TemporaryDirectory(prefix="pgshard-test-") as d:
        path = Path(d)
        path.chmod(0o755)
        yield path


@pytest.fixture
def pg_server(pg_tmp: Path) -> Iterator[pgserver.PgServer]:
    """One plain PostgreSQL 15 server on a random loopback address."""
    server = pgserver.make_server(pg_tmp)
    try:
        yield server
    finally:
        server.stop()
