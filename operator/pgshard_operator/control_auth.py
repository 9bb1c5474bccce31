"""The check of the control token at the control endpoints (aiohttp middleware).

Used by the instance agent's endpoint (``instance/health.py``) and the local
supervisor's (``local/control.py``); the token itself is ``control_token.py``.
"""

from __future__ import annotations

from aiohttp import typedefs, web

from . import control_token

UNAUTHORIZED = (
    "missing or wrong control token (send 'Authorization: Bearer <token>' with the "
    "cluster's control token)"
)


def middleware(token: str) -> typedefs.Middleware:
    """Answers 401 to any request but GET/HEAD that does not carry ``token``."""

    @web.middleware
    async def check(request: web.Request, handler: typedefs.Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD") and not control_token.authorized(
            request.headers.get("Authorization"), token
        ):
            return web.json_response({"error": UNAUTHORIZED}, status=401)
        return await handler(request)

    return check
