"""HTTP(S) calls to a local cluster's control endpoints (agents, supervisor), as any
local process could make them: with or without the control token."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp

from pgshard_operator import control_token


async def call(
    url: str,
    body: dict[str, Any] | None,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """GET ``url`` (``body`` None) or POST ``body`` as JSON; the status and the JSON answer.
    ``context``: what verifies an ``https://`` endpoint (a TLS cluster's agents)."""
    headers = control_token.headers(token) if token else {}
    method = "POST" if body is not None else "GET"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.request(method, url, json=body, headers=headers, ssl=context or True) as r,
    ):
        return r.status, await r.json()
