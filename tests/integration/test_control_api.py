"""A real local cluster's control endpoints: no change without the control token, and
no credentials for a host outside the shard.

Before this, any local user could POST /promote to a follower's agent, /switchover to
the supervisor, or /repoint a follower at a listener of their own and receive the
replication password in the startup packet.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
from pathlib import Path

import pytest

from tests.support import control_http, localcluster, net

pytestmark = pytest.mark.integration


async def test_control_endpoints_need_the_token_and_credentials_stay_in_the_shard(
    pg_tmp: Path,
) -> None:
    with localcluster.running(pg_tmp, shards=1, replicas=1) as c:
        token_file = c.dir / "control.token"
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        token = token_file.read_text().strip()
        follower = c.agent_url("s0m1")  # https: TLS is the default
        call = functools.partial(control_http.call, context=c.agent_context())
        supervisor = f"http://{c.host}:{c.base_port + 4}"

        for url, body in (
            (follower + "/promote", {"epoch": 9}),
            (follower + "/parameter", {"name": "synchronous_standby_names", "value": "*"}),
            (follower + "/fence", {}),
            (supervisor + "/switchover", {"shard": 0, "to": "s0m1"}),
            (supervisor + "/scale", {"replicas": 0}),
            (supervisor + "/upgrade", {"bindir": "/usr/lib/postgresql/15/bin"}),
        ):
            for wrong in (None, "not-the-token"):
                code, doc = await call(url, body, wrong)
                assert code == 401, (url, doc)
        code, doc = await call(follower + "/status", None, None)
        assert (code, doc["role"]) == (200, "follower")
        assert c.shard()["primary"]["name"] == "s0m0"

        code, doc = await call(
            follower + "/parameter", {"name": "archive_command", "value": "sh -c x"}, token
        )
        assert code == 400 and "not managed" in doc["error"]

        # A listener outside the shard: /repoint and /rejoin must not connect to it.
        host = net.random_loopback()
        connected: list[bytes] = []

        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.append(await reader.read(1024))
            writer.close()

        server = await asyncio.start_server(record, host, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for path in ("/repoint", "/rejoin"):
                code, doc = await call(follower + path, {"host": host, "port": port}, token)
                assert code == 403, doc
                assert "not a member of this shard" in doc["error"]
        finally:
            server.close()
            await server.wait_closed()
        assert connected == []
        status = (await call(follower + "/status", None, None))[1]
        assert (status["role"], status["walReceiver"]) == ("follower", "streaming")

        # The commands carry the token: a switchover through the CLI goes through.
        c.cli("switchover", f"--dir={c.dir}", "--shard=0", "--to=s0m1", "--timeout=120")
        assert c.shard()["primary"]["name"] == "s0m1"
