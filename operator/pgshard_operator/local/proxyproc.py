"""The local cluster's proxy: ``pgshard-proxy`` as a child process of the supervisor.

Started by supervisor.py once every shard is ready (`up` returns once it listens),
restarted if it dies, stopped (SIGTERM, then SIGKILL) with the cluster. It runs
``python -m pgshard_proxy.main`` following ``DIR/topology.json`` — the operator
never imports the proxy beyond its contract — and lets clients log in with the
cluster's generated application credentials (passed in the environment, never
on the command line). Output goes to ``DIR/logs/proxy.log``; its pid to
``DIR/proxy.pid`` so nothing is left behind if the supervisor dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from .. import atomicfile
from ..instance.credentials import Credentials
from .layout import ClusterConfig, ClusterDir

log = logging.getLogger(__name__)


def proxy_dsn(cfg: ClusterConfig, creds: Credentials) -> str:
    """The URI applications use: the proxy's address with the application credentials."""
    return creds.app_dsn(cfg.proxy_address)


class ProxyProcess:
    def __init__(self, cdir: ClusterDir, cfg: ClusterConfig, creds: Credentials) -> None:
        self.cdir = cdir
        self.cfg = cfg
        self.creds = creds
        self.proc: asyncio.subprocess.Process | None = None

    def argv(self) -> list[str]:
        optional = [
            f"--{flag}={value}"
            for flag, value in (
                ("buffer-window-ms", self.cfg.proxy_buffer_window_ms),
                ("buffer-max-requests", self.cfg.proxy_buffer_max_requests),
                ("zone", self.cfg.proxy_zone),
                ("pool-mode", self.cfg.proxy_pool_mode),
                ("pool-size", self.cfg.proxy_pool_size),
                ("pool-timeout-ms", self.cfg.proxy_pool_timeout_ms),
            )
            if value is not None
        ]
        return [
            sys.executable,
            "-m",
            "pgshard_proxy.main",
            f"--host={self.cfg.proxy_host}",
            f"--port={self.cfg.proxy_port}",
            f"--metrics-port={self.cfg.proxy_port + 1}",
            f"--topology-file={self.cdir.topology}",
            "--exit-with-parent",
            "-v",
            *optional,
            *self._tls_args(),
        ]

    def _tls_args(self) -> list[str]:
        if not self.cfg.tls:
            return []
        tls = self.cdir.tls
        return [f"--tls-cert={tls.server_cert}", f"--tls-key={tls.server_key}", "--tls-required"]

    async def start(self) -> None:
        env = dict(os.environ)
        env["PGSHARD_PROXY_USERS"] = f"{self.creds.app_user}:{self.creds.app_password}"
        out = os.open(self.cdir.logs / "proxy.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(out, 0o600)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        finally:
            os.close(out)
        atomicfile.atomic_write(self.cdir.proxy_pid, f"{self.proc.pid}\n")
        log.info("proxy started on %s (pid %d)", self.cfg.proxy_address, self.proc.pid)

    async def listening(self, timeout: float = 30.0) -> None:
        """Return once the proxy accepts connections, so that ``up`` returning means
        clients can connect; raise RuntimeError if it exits or does not listen in time."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.returncode is not None:
                raise RuntimeError(
                    f"the proxy exited with status {self.proc.returncode} before listening on "
                    f"{self.cfg.proxy_address}; see {self.cdir.logs / 'proxy.log'}"
                )
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.cfg.proxy_host, self.cfg.proxy_port), 1.0
                )
            except (OSError, TimeoutError):
                if loop.time() >= deadline:
                    raise RuntimeError(
                        f"the proxy does not listen on {self.cfg.proxy_address} after "
                        f"{timeout:.0f}s; see {self.cdir.logs / 'proxy.log'}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        self.cdir.proxy_pid.unlink(missing_ok=True)
        return code

    async def stop(self, timeout: float = 20.0) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("proxy did not stop in %.0fs; killing it", timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self.cdir.proxy_pid.unlink(missing_ok=True)
