"""A rejoin that reaches a follower already streaming from the primary it names leaves
it running.

The manager decides a rejoin on what it saw (the member gone, say); when the member is
back and streaming from the new primary by the time the request arrives, stopping and
restarting it would only take a healthy follower away (before: a restart each time).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tests.support import control_http, localcluster

pytestmark = pytest.mark.integration


async def test_rejoin_of_a_streaming_follower_keeps_it_running(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, shards=1, replicas=1) as c:
        token = (c.dir / "control.token").read_text().strip()
        primary, follower = c.agent_url("s0m0"), c.agent_url("s0m1")
        call = functools.partial(control_http.call, context=c.agent_context())
        _, up = await call(primary + "/status", None)
        _, before = await call(follower + "/status", None)
        assert (before["role"], before["walReceiver"]) == ("follower", "streaming")
        host, _, port = up["address"].rpartition(":")

        code, doc = await call(follower + "/rejoin", {"host": host, "port": int(port)}, token)
        assert (code, doc["method"]) == (200, "restart"), doc
        _, after = await call(follower + "/status", None)
        assert after["pgPid"] == before["pgPid"], "the follower was restarted"
        assert (after["restarts"], after["walReceiver"]) == (before["restarts"], "streaming")
