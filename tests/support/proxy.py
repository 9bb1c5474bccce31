"""Run this checkout's ``pgshard-proxy`` as a process in front of test servers."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pgshard_proxy.contract import topology

from . import net, procs


@dataclasses.dataclass
class ProxyProc:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    user: str
    password: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/postgres"

    def libpq_env(self) -> dict[str, str]:
        """Environment for psql/pgbench: password via PGPASSWORD, never on the command line."""
        return procs.env(PGPASSWORD=self.password, PGCONNECT_TIMEOUT="10")

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def pool_mode() -> str:
    """The pool mode this run's test proxies use unless a test names one: the proxy's
    default (``transaction``), or ``PGSHARD_PROXY_POOL_MODE`` from the environment, which
    every proxy reads (``scripts/test`` runs the proxy modules again with ``session``)."""
    return os.environ.get("PGSHARD_PROXY_POOL_MODE") or "transaction"


def rewrite_unnoticed(path: Path, text: str) -> None:
    """Replace a topology file's content in place, padded to its old size, and put its old
    mtime back: a change whose notification is lost (coarse timestamps, an in-place
    edit, a copy keeping the mtime). ``text`` must not be longer than the file."""
    st = os.stat(path)
    data = text.encode()
    assert len(data) <= st.st_size, "pad the first version (JSON allows trailing spaces)"
    with open(path, "r+b") as f:
        f.write(data.ljust(st.st_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def single_primary_topology(name: str, host: str, port: int, dsn: str) -> topology.Topology:
    member = topology.Member(name=name, address=f"{host}:{port}", dsn=dsn)
    return topology.Topology(shards=(topology.Shard(index=0, epoch=1, primary=member),))


def start_proxy(
    workdir: Path,
    topo: topology.Topology | None = None,
    *args: str,
    topology_file: Path | None = None,
    user: str = "app",
    password: str = "app-secret",
    timeout: float = 30,
    host: str | None = None,
) -> ProxyProc:
    """Start the proxy on ``host`` (default: a random loopback address); returns once it
    accepts connections."""
    if topology_file is None:
        assert topo is not None
        topology_file = workdir / "topology.json"
        topology_file.write_text(topology.to_json(topo))
    host = host or net.random_loopback()
    port = net.free_port(host)
    log = workdir / f"proxy-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgshard_proxy.main",
                "--host",
                host,
                "--port",
                str(port),
                "--topology-file",
                str(topology_file),
                "-v",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=procs.env(PGSHARD_PROXY_USERS=f"{user}:{password}"),
        )
    p = ProxyProc(host, port, proc, log, user, password)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgshard-proxy exited with {proc.returncode}:\n{p.log_text()}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.05)
    p.stop()
    raise TimeoutError(f"pgshard-proxy not listening after {timeout}s:\n{p.log_text()}")
