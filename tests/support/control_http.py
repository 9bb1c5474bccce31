"""Plain HTTP calls to a local cluster's control endpoints (agents, supervisor), as any
local process could make them: with or without the control token."""

from __future__ import annotations

from typing import Any

import aiohttp

from pgshard_operator import control_token


async def call(url: str, body: dict[str, Any] | None, token: str | None = None) -> tuple[int, Any]:
    """GET ``url`` (``body`` None) or POST ``body`` as JSON; the status and the JSON answer."""
    headers = control_token.headers(token) if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.request("POST" if body is not None else "GET", url, json=body, headers=headers) as r,
    ):
        return r.status, await r.json()
