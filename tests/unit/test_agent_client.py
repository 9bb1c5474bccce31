"""The agent client's request bodies and its mapping of answers to Platform errors.

A stand-in agent endpoint on a random loopback address answers as
``instance/health.py`` does (JSON, 409 with ``{"error": …}`` for a request that
does not fit the role, 500 for a failure), in clear text or, as a member with TLS
serves it, over HTTPS with a shard certificate (``agent_tls.py``); the real agents
behind both platforms are exercised by the integration (local) and e2e (Kubernetes)
failover tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pgshard_operator import agent_tls, certs
from pgshard_operator.platform import base
from pgshard_operator.platform import kubernetes as kube_platform
from pgshard_operator.platform.agent_client import AgentClient, AgentRef
from pgshard_operator.shard import state
from pgshard_proxy.contract import positions
from tests.support import net


class StandIn:
    """Records each request's body; answers what the test set for its path."""

    def __init__(self) -> None:
        self.bodies: dict[str, Any] = {}
        self.auth: dict[str, str | None] = {}
        self.answers: dict[str, tuple[int, Any]] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            self.bodies[request.path] = await request.json()
            self.auth[request.path] = request.headers.get("Authorization")
        status, doc = self.answers.get(request.path, (200, {}))
        if isinstance(doc, str):
            return web.Response(status=status, text=doc)
        return web.json_response(doc, status=status)


async def _serve(stand_in: StandIn, tls: certs.TlsFiles | None) -> tuple[web.AppRunner, str]:
    """The stand-in on a random loopback address; its ``host:port``."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", stand_in.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host = net.random_loopback()
    context = agent_tls.server_context(tls) if tls is not None else None
    await web.TCPSite(runner, host, 0, ssl_context=context).start()  # port 0: any free one
    return runner, f"{host}:{runner.addresses[0][1]}"


@pytest.fixture
async def agent() -> AsyncIterator[tuple[StandIn, AgentRef]]:
    stand_in = StandIn()
    runner, address = await _serve(stand_in, None)
    try:
        yield stand_in, AgentRef("m_1", f"http://{address}")
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[AgentClient]:
    async with aiohttp.ClientSession() as http:
        yield AgentClient(http, "tok")


async def test_requests_carry_the_agents_bodies(
    agent: tuple[StandIn, AgentRef], client: AgentClient
) -> None:
    stand_in, ref = agent
    await client.promote(ref, 7)
    await client.repoint(ref, "127.1.2.3:5433")
    await client.set_parameter(ref, "synchronous_standby_names", "ANY 1 (a)")
    assert stand_in.bodies == {
        "/promote": {"epoch": 7},
        "/repoint": {"host": "127.1.2.3", "port": 5433},
        "/parameter": {"name": "synchronous_standby_names", "value": "ANY 1 (a)"},
    }
    assert set(stand_in.auth.values()) == {"Bearer tok"}  # the cluster's control token


async def test_answers_are_parsed(agent: tuple[StandIn, AgentRef], client: AgentClient) -> None:
    stand_in, ref = agent
    stand_in.answers["/status"] = (200, {"role": "follower"})
    stand_in.answers["/fence"] = (200, {"lsn": "0/3000060"})
    stand_in.answers["/rejoin"] = (
        200,
        {"method": "rewind", "forkLsn": "0/3000000", "discardedBytes": 96},
    )
    assert await client.status(ref) == {"role": "follower"}
    assert await client.fence(ref) == positions.parse_lsn("0/3000060")
    assert await client.rejoin(ref, "127.1.2.3:5433") == state.RejoinResult(
        state.RejoinMethod.REWIND, positions.parse_lsn("0/3000000"), 96
    )
    assert stand_in.bodies["/rejoin"] == {"host": "127.1.2.3", "port": 5433}
    stand_in.answers["/fence"] = (200, {"lsn": None})
    assert await client.fence(ref) is None


async def test_error_answers_become_platform_errors(
    agent: tuple[StandIn, AgentRef], client: AgentClient
) -> None:
    stand_in, ref = agent
    stand_in.answers["/promote"] = (409, {"error": "m_1 is not a follower"})
    with pytest.raises(base.PlatformConflict, match=r"^m_1: m_1 is not a follower$"):
        await client.promote(ref, 3)
    stand_in.answers["/fence"] = (500, {"error": "RuntimeError: boom"})
    with pytest.raises(base.PlatformError, match=r"^m_1/fence: RuntimeError: boom$") as e:
        await client.fence(ref)
    assert not isinstance(e.value, base.PlatformConflict)
    stand_in.answers["/repoint"] = (400, 'expected {"host": "…", "port": N}')
    with pytest.raises(base.PlatformError, match=r"^m_1/repoint: agent did not answer"):
        await client.repoint(ref, "127.1.2.3:5433")
    stand_in.answers["/promote"] = (401, {"error": "missing or wrong control token"})
    with pytest.raises(base.PlatformError, match=r"^m_1/promote: missing or wrong control token"):
        await client.promote(ref, 3)
    stand_in.answers["/status"] = (200, "not json")
    assert await client.status(ref) is None


async def test_an_agent_that_is_not_there(client: AgentClient) -> None:
    host = net.random_loopback()
    ref = AgentRef("m_2", f"http://{host}:{net.free_port(host)}")
    assert await client.status(ref) is None
    with pytest.raises(base.PlatformError, match=r"^m_2/rejoin: agent did not answer"):
        await client.rejoin(ref, "127.1.2.3:5433")


SHARD_NAME = "tl-shard-0.ns.svc"


def _tls_files(directory: Path, ca: certs.Pem) -> certs.TlsFiles:
    """A shard's certificate as on Kubernetes: it names the shard, not the pod's IP."""
    directory.mkdir()
    server = certs.issue(ca, [SHARD_NAME, f"*.{SHARD_NAME}"])
    files = certs.TlsFiles(directory)
    for path, text in ((files.ca_cert, ca.cert), (files.server_cert, server.cert),
                       (files.server_key, server.key)):  # fmt: skip
        path.write_text(text)
    return files


async def test_agents_with_tls_are_verified_for_the_shards_name(tmp_path: Path) -> None:
    files = _tls_files(tmp_path / "tls", certs.new_ca("tl"))
    other = _tls_files(tmp_path / "other", certs.new_ca("other"))
    stand_in = StandIn()
    stand_in.answers["/status"] = (200, {"role": "primary"})
    runner, address = await _serve(stand_in, files)
    ip = address.rpartition(":")[0]
    try:
        async with aiohttp.ClientSession() as http:
            trusting = AgentClient(http, "tok", files.ca_cert)
            ref = kube_platform.agent_ref("m_1", ip, SHARD_NAME)
            assert ref.url == f"https://{ip}:8008"
            ref = AgentRef(ref.member, f"https://{address}", ref.server_name)
            assert await trusting.status(ref) == {"role": "primary"}
            await trusting.promote(ref, 2)
            assert stand_in.auth == {"/promote": "Bearer tok"}
            # Another shard's name, another CA, or clear text: no answer.
            wrong_name = AgentRef("m_1", ref.url, "tl-shard-1.ns.svc")
            assert await trusting.status(wrong_name) is None
            assert await AgentClient(http, "tok", other.ca_cert).status(ref) is None
            with pytest.raises(base.PlatformError, match=r"^m_1/fence: agent did not answer"):
                await AgentClient(http, "tok", other.ca_cert).fence(ref)
            assert await trusting.status(AgentRef("m_1", f"http://{address}")) is None
            assert set(stand_in.bodies) == {"/promote"}
    finally:
        await runner.cleanup()
