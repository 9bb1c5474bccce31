"""The control endpoints answer a change only with the cluster's control token.

The instance agent's endpoint (``instance/health.py``) and the local supervisor's
(``local/control.py``) are served here by their real aiohttp apps on loopback, with
stand-ins behind them that record what reached them; a real local cluster's agents
and supervisor are checked in ``tests/integration/test_control_api.py``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils, web

from pgshard_operator import control_token
from pgshard_operator.instance import health
from pgshard_operator.local import control

TOKEN = "s3cret-token"
AGENT_ROUTES = {
    "/promote": {"epoch": 2},
    "/repoint": {"host": "127.0.0.9", "port": 5432},
    "/rejoin": {"host": "127.0.0.9", "port": 5432},
    "/fence": {},
    "/parameter": {"name": "synchronous_standby_names", "value": "ANY 1 (s0m1)"},
}


class StandInAgent:
    """Records the calls the endpoint passes on (the real Agent acts on PostgreSQL)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any) -> dict[str, Any]:
            self.calls.append((name, args))
            return {"role": "follower"} if name == "status" else {}

        return call


async def _client(app: web.Application) -> AsyncIterator[test_utils.TestClient[Any, Any]]:
    async with test_utils.TestClient(test_utils.TestServer(app, host="127.0.0.1")) as client:
        yield client


@pytest.fixture
async def agent() -> AsyncIterator[tuple[StandInAgent, test_utils.TestClient[Any, Any]]]:
    stand_in = StandInAgent()
    async for client in _client(health.build_app(stand_in, TOKEN)):  # type: ignore[arg-type]
        yield stand_in, client


@pytest.mark.parametrize("path", sorted(AGENT_ROUTES))
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer ", TOKEN, f"Basic {TOKEN}"])
async def test_agent_refuses_changes_without_the_token(
    agent: tuple[StandInAgent, test_utils.TestClient[Any, Any]], path: str, auth: str | None
) -> None:
    stand_in, client = agent
    headers = {"Authorization": auth} if auth is not None else {}
    r = await client.post(path, json=AGENT_ROUTES[path], headers=headers)
    assert r.status == 401, await r.text()
    assert "control token" in (await r.json())["error"]
    assert stand_in.calls == []


@pytest.mark.parametrize("path", sorted(AGENT_ROUTES))
async def test_agent_acts_with_the_token(
    agent: tuple[StandInAgent, test_utils.TestClient[Any, Any]], path: str
) -> None:
    stand_in, client = agent
    r = await client.post(path, json=AGENT_ROUTES[path], headers=control_token.headers(TOKEN))
    assert r.status == 200, await r.text()
    assert [name for name, _ in stand_in.calls] == [
        {"/parameter": "set_parameter"}.get(path, path[1:])
    ]


async def test_agent_status_needs_no_token(
    agent: tuple[StandInAgent, test_utils.TestClient[Any, Any]],
) -> None:
    _, client = agent
    r = await client.get("/status")
    assert (r.status, await r.json()) == (200, {"role": "follower"})


@pytest.mark.parametrize(
    "body",
    [
        {"name": "shared_preload_libraries", "value": "evil"},
        {"name": "SYNCHRONOUS_STANDBY_NAMES", "value": "*"},
        {"name": "synchronous_standby_names\" = '*'\narchive_command", "value": "x"},
        {"name": "synchronous_standby_names", "value": "*'\narchive_command = 'rm -rf /"},
        {"name": "synchronous_standby_names", "value": "a\rb"},
        {"name": "synchronous_standby_names", "value": 3},
        {"name": "synchronous_standby_names"},
    ],
)
async def test_parameter_is_allow_listed_and_one_line(
    agent: tuple[StandInAgent, test_utils.TestClient[Any, Any]], body: dict[str, Any]
) -> None:
    stand_in, client = agent
    r = await client.post("/parameter", json=body, headers=control_token.headers(TOKEN))
    assert r.status == 400, await r.text()
    assert (await r.json())["error"]
    assert stand_in.calls == []


class StandInManager:
    def status(self) -> Any:
        raise AssertionError("not asked in these tests")

    async def request_switchover(self, target: str | None) -> Any:
        raise AssertionError("reached the manager without the token")


async def test_supervisor_refuses_changes_without_the_token() -> None:
    scaled: list[int] = []

    async def scale(replicas: int, timeout: float) -> dict[str, Any]:
        scaled.append(replicas)
        return {"replicas": replicas, "added": [], "removed": []}

    async def upgrade(bindir: str, timeout: float) -> dict[str, Any]:
        raise AssertionError("upgraded without the token")

    app = control.build_app(
        {0: StandInManager()},  # type: ignore[dict-item]
        TOKEN,
        scale=scale,
        upgrade=upgrade,
    )
    async for client in _client(app):
        for path, body in (
            ("/scale", {"replicas": 3}),
            ("/switchover", {"shard": 0}),
            ("/upgrade", {"bindir": "/x"}),
        ):
            for headers in ({}, {"Authorization": "Bearer nope"}):
                r = await client.post(path, json=body, headers=headers)
                assert r.status == 401, (path, await r.text())
        assert scaled == []
        r = await client.post("/scale", json={"replicas": 3}, headers=control_token.headers(TOKEN))
        assert r.status == 200
        r = await client.post(
            "/switchover", json={"shard": 7}, headers=control_token.headers(TOKEN)
        )
        assert r.status == 404  # past the check: no shard 7
        assert scaled == [3]


async def test_the_cli_client_sends_the_token() -> None:
    async def scale(replicas: int, timeout: float) -> dict[str, Any]:
        return {"replicas": replicas, "added": [], "removed": []}

    app = control.build_app({}, TOKEN, scale=scale)
    async for client in _client(app):
        url = str(client.make_url("/scale"))
        assert (await control.request(url, "POST", {"replicas": 1}, 5.0))[0] == 401
        assert (await control.request(url, "POST", {"replicas": 1}, 5.0, TOKEN))[0] == 200
        code, doc = await control.request(str(client.make_url("/managers")), "GET", None, 5.0)
        assert (code, doc) == (200, {"shards": []})


def test_token_file_is_owner_only_from_the_start_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.token"
    token = control_token.ensure(path)
    assert len(token) >= 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert control_token.ensure(path) == token  # kept across runs
    with pytest.raises(FileExistsError):
        control_token.write_new(path, "other")
    assert control_token.load(path) == token
    assert sorted(p.name for p in tmp_path.iterdir()) == ["control.token"]  # no temp left
    path.write_text("\n")
    with pytest.raises(control_token.TokenMissing, match="is empty"):
        control_token.load(path)
    with pytest.raises(control_token.TokenMissing, match="is missing"):
        control_token.load(tmp_path / "absent")


async def test_agent_client_requests_without_a_token_are_refused() -> None:
    # Sanity for the header format both clients use.
    assert control_token.authorized(control_token.headers(TOKEN)["Authorization"], TOKEN)
    assert not control_token.authorized(None, TOKEN)
    assert aiohttp.hdrs.AUTHORIZATION in control_token.headers(TOKEN)
