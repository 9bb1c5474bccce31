"""Run this checkout's console scripts from tests.

Tests call ``python -m <module>`` with ``PYTHONPATH`` set to this checkout's
source roots, so they exercise the code under test even when another checkout
is the one installed (editable) on the machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = (ROOT / "operator", ROOT / "proxy")


def env(**extra: str) -> dict[str, str]:
    """The current environment with this checkout's sources first on ``PYTHONPATH``."""
    e = dict(os.environ)
    paths = [str(p) for p in SOURCE_ROOTS]
    if e.get("PYTHONPATH"):
        paths.append(e["PYTHONPATH"])
    e["PYTHONPATH"] = os.pathsep.join(paths)
    e.update(extra)
    return e


def pgshard_argv(*args: str) -> list[str]:
    """argv for the ``pgshard`` command of this checkout."""
    return [sys.executable, "-m", "pgshard_operator.cli", *args]
