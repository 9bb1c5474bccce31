"""The instance agent's wall clock, which a test may set off from the machine's.

Lease expiries are wall-clock times that the shard manager, maybe on another machine,
compares with its own clock; the agent itself fences on its monotonic clock. To check
that the margins keep one primary whatever the skew they allow, a test runs the agents
with their wall clock ``PGSHARD_TEST_AGENT_CLOCK_OFFSET`` seconds off (negative: behind).
Test-only: never set it in production.
"""

from __future__ import annotations

import functools
import math
import os
import time

OFFSET_ENV = "PGSHARD_TEST_AGENT_CLOCK_OFFSET"


@functools.cache
def offset() -> float:
    raw = os.environ.get(OFFSET_ENV, "").strip()
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{OFFSET_ENV}={raw!r}: expected a number of seconds (test-only)")
    return value


def now() -> float:
    """``time.time()``, off by the test offset if one is set."""
    return time.time() + offset()
