"""The server log a member writes to: owner-only when it is a file, left alone when not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pgshard_operator.instance import postgres


def test_a_log_file_becomes_owner_only(tmp_path: Path) -> None:
    log = tmp_path / "pg.log"
    log.write_text("")
    log.chmod(0o644)
    os.close(postgres.open_log(log))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_a_device_such_as_dev_null_keeps_its_mode(tmp_path: Path) -> None:
    """The agent's default --pg-log is /dev/null: making it 0600 breaks every other user
    of the machine (the postgres user could no longer open it)."""
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a second /dev/null node
    null.chmod(0o666)
    os.close(postgres.open_log(null))
    assert stat.S_IMODE(null.stat().st_mode) == 0o666
