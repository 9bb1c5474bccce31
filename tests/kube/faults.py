"""Failure injection for e2e tests: a client of the node agent's control socket.

See tests/kube/agent/control.py for the endpoints. Synchronous (http.client over a unix
socket), so both sync and async tests can call it.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("agent", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(self._path))


class Faults:
    def __init__(self, control_socket: Path) -> None:
        self.socket = control_socket

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.socket)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None)
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
        finally:
            conn.close()
        if resp.status >= 400:
            raise RuntimeError(f"agent {method} {path}: {resp.status} {data}")
        return data

    def kill(self, namespace: str, pod: str, container: str, signal: str = "SIGKILL") -> int:
        """Signal a container's main process; returns its pid."""
        body = {"namespace": namespace, "pod": pod, "container": container, "signal": signal}
        return int(self._call("POST", "/kill", body)["pid"])

    def freeze(self, namespace: str, pod: str) -> None:
        self._call("POST", "/freeze", {"namespace": namespace, "pod": pod})

    def thaw(self, namespace: str, pod: str) -> None:
        self._call("POST", "/thaw", {"namespace": namespace, "pod": pod})

    def heartbeat(self, enabled: bool) -> None:
        """Cut the node off (False: no Lease, node or pod status updates; it goes NotReady
        and the node controller marks its pods not ready) or reconnect it (True)."""
        self._call("POST", "/heartbeat", {"enabled": enabled})

    def pods(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/pods"))
