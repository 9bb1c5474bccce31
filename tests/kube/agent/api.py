"""A small asynchronous Kubernetes REST client for the node agent (aiohttp, JSON dicts).

The agent speaks the API's own JSON field names (``status.podIP``...) throughout, so it
uses plain dicts instead of a generated client's models. ``Informer`` keeps a local cache
of one resource kind (list, then watch from the list's resourceVersion, re-list when the
watch expires) and calls back on every change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


def key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class Api:
    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server: str = cluster["server"]
        self.ca_file = Path(cluster["certificate-authority"])
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        self._ssl.load_cert_chain(user["client-certificate"], user["client-key"])
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        data = json.dumps(body) if body is not None else None
        async with self.session.request(
            method,
            self.server + path,
            data=data,
            params=params,
            headers={"Content-Type": content_type},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise ApiError(resp.status, method, path, text)
            result: Obj = json.loads(text) if text else {}
            return result

    async def get(self, path: str) -> Obj:
        return await self.request("GET", path)

    async def create(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def delete(self, path: str, body: Obj | None = None) -> Obj:
        return await self.request("DELETE", path, body)

    async def ensure(self, path: str, body: Obj) -> None:
        """Create ``body`` in collection ``path`` unless it already exists."""
        try:
            await self.create(path, body)
        except ApiError as e:
            if e.status != 409:
                raise


Callback = Callable[[str, Obj], Awaitable[None] | None]


class Informer:
    """A watched cache of the objects at ``path`` (a collection URL)."""

    def __init__(self, api: Api, path: str, params: dict[str, str] | None = None) -> None:
        self.api = api
        self.path = path
        self.params = params or {}
        self.items: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self._callbacks: list[Callback] = []

    def on_change(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    async def _emit(self, kind: str, obj: Obj) -> None:
        for cb in self._callbacks:
            result = cb(kind, obj)
            if result is not None:
                await result

    async def run(self) -> None:
        while True:
            try:
                version = await self._list()
                await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the API server restarting, a timeout: list again
                log.warning("informer %s: %s; listing again", self.path, e)
                await asyncio.sleep(1)

    async def _list(self) -> str:
        listing = await self.api.request("GET", self.path, params=self.params)
        fresh = {key(o): o for o in listing.get("items", [])}
        for k, old in list(self.items.items()):
            if k not in fresh:
                del self.items[k]
                await self._emit("DELETED", old)
        for k, obj in fresh.items():
            self.items[k] = obj
            await self._emit("MODIFIED", obj)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> None:
        params = {
            **self.params,
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "240",
        }
        async with self.api.session.get(
            self.api.server + self.path,
            params=params,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
        ) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, "WATCH", self.path, await resp.text())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    raise ApiError(obj.get("code", 0), "WATCH", self.path, json.dumps(obj))
                if kind == "BOOKMARK":
                    continue
                k = key(obj)
                if kind == "DELETED":
                    self.items.pop(k, None)
                else:
                    self.items[k] = obj
                await self._emit(kind, obj)
