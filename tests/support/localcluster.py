"""A real ``pgshard local up`` cluster for tests, always torn down.

Runs this checkout's CLI (``tests.support.procs``) on a random loopback address
with free ports, so parallel runs and other engineers' clusters never collide.
Teardown runs ``local down`` and then kills, by pid, anything of the cluster
still alive (agents, servers), so a failing test leaves no orphans. A cluster whose
DIR is a small private tmpfs (``tests.support.mountns``) runs every command inside
that mount namespace and reads DIR's files through ``files``.

    with localcluster.running(pg_tmp, shards=1, replicas=2) as c:
        c.status()["shards"][0]["primary"]["dsn"]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgshard_operator import agent_tls
from pgshard_operator.instance import postgres
from pgshard_operator.local import layout

from . import mountns, net, procs, terminal

FAST = ("--lease-ttl=2.5", "--detection-seconds=1", "--cooldown-seconds=2")
"""``up`` flags for failover tests: a dead primary is replaced within seconds, and a
healthy one is not fenced on a busy machine (the lease outlives a slow renewal)."""


def free_base_port(host: str, count: int) -> int:
    """A port p such that p .. p+count-1 are all free on ``host`` now."""
    for _ in range(100):
        base = random.randint(20000, 60000 - count)
        try:
            for p in range(base, base + count):
                with socket.socket() as s:
                    s.bind((host, p))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


@dataclasses.dataclass
class LocalCluster:
    dir: Path
    host: str
    base_port: int
    disk: mountns.PrivateTmpfs | None = None
    """DIR's private tmpfs, when the test gave it one."""

    @property
    def files(self) -> Path:
        """DIR as this process can read it (inside the tmpfs's namespace, if any)."""
        return self.disk.view(self.dir) if self.disk is not None else self.dir

    def reachable(self, dsn: str) -> str:
        """A DSN of ``status --json`` as this process can use it: its CA
        (``sslrootcert``, in DIR/tls) read through :attr:`files`."""
        return dsn.replace(
            urllib.parse.quote(str(self.dir / "tls"), safe="/"),
            urllib.parse.quote(str(self.files / "tls"), safe="/"),
        )

    def create_args(self, shards: int, replicas: int) -> list[str]:
        """``local up`` flags creating a cluster on this address with free ports."""
        return [
            f"--shards={shards}",
            f"--replicas={replicas}",
            f"--host={self.host}",
            f"--base-port={self.base_port}",
            f"--proxy-host={self.host}",
            f"--proxy-port={net.free_port(self.host)}",
            "--pg-option=fsync=off",
        ]

    def cli(
        self, *args: str, check: bool = True, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        argv = procs.pgshard_argv(*args)
        proc = subprocess.run(
            self.disk.argv(argv) if self.disk is not None else argv,
            env=procs.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"pgshard {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def cli_in_terminal(self, *args: str, timeout: float = 300) -> str:
        """Run ``pgshard ARGS`` under a pseudo-terminal; what it showed there (it must
        succeed)."""
        argv = procs.pgshard_argv(*args)
        code, out = terminal.run(
            self.disk.argv(argv) if self.disk is not None else argv, procs.env(), timeout
        )
        if code != 0:
            raise AssertionError(f"pgshard {' '.join(args)} failed (exit {code}):\n{out}")
        return out

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cli("local", "up", f"--dir={self.dir}", *extra)

    def down(self) -> None:
        self.cli("local", "down", f"--dir={self.dir}", check=False)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(
            self.cli("local", "status", f"--dir={self.dir}", "--json").stdout
        )
        return doc

    def shard(self, index: int = 0) -> dict[str, Any]:
        shard: dict[str, Any] = self.status()["shards"][index]
        return shard

    def agent_url(self, member: str) -> str:
        """The member's instance agent's base URL (``https://`` in a TLS cluster)."""
        return layout.ClusterDir(self.dir).load_config().member(member).status_url

    def agent_context(self) -> ssl.SSLContext | None:
        """What verifies the agents' HTTPS (the cluster's CA); None without TLS."""
        cdir = layout.ClusterDir(self.dir)
        ca = cdir.agent_ca(cdir.load_config())
        return agent_tls.client_context(ca) if ca is not None else None

    def open_url(self, url: str, timeout: float = 5) -> Any:
        """``urlopen`` of an agent's or the cluster's own endpoints (HTTPS verified)."""
        context = self.agent_context() if url.startswith("https:") else None
        return urllib.request.urlopen(url, timeout=timeout, context=context)

    def agent_status(self, member: str) -> dict[str, Any]:
        """The member's instance agent's ``GET /status`` document."""
        with self.open_url(self.agent_url(member) + "/status", timeout=3) as r:
            doc: dict[str, Any] = json.load(r)
            return doc

    def kill(self, shard: int, member: str, sig: str = "KILL") -> None:
        self.cli(
            "local", "kill", f"--dir={self.dir}", f"--shard={shard}", f"--member={member}",
            f"--signal={sig}",
        )  # fmt: skip

    def print_logs(self, lines: int = 40) -> None:
        """The tail of every log in DIR/logs (the supervisor's decisions, each agent)."""
        logs = self.files / "logs"
        for path in sorted(logs.glob("*.log")) if logs.is_dir() else ():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            print(f"----- {path.name} -----", *tail, sep="\n")

    def _ours(self, pid: int) -> bool:
        """Whether ``pid`` is a process of this cluster (pids can be reused)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.dir).encode() in cmdline

    def kill_leftovers(self) -> None:
        """Kill by pid whatever ``down`` did not stop (a failed test must leave nothing)."""
        pids: list[int] = []
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            pids.append(int(json.loads((self.files / "supervisor.json").read_text())["pid"]))
        with contextlib.suppress(OSError, ValueError):
            pids.append(int((self.files / "proxy.pid").read_text()))
        members = self.files / "members"
        for m in members.iterdir() if members.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((m / "agent.pid").read_text()))
            if (pid := postgres.postmaster_pid(m / "data")) is not None:
                pids.append(pid)
        for pid in pids:
            if self._ours(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)


def new(
    base: Path, shards: int, replicas: int, disk: mountns.PrivateTmpfs | None = None
) -> LocalCluster:
    """A cluster (not started) in ``base/cluster`` on a random loopback address."""
    host = net.random_loopback()
    count = 2 * shards * (replicas + 1) + 1
    return LocalCluster(
        dir=base / "cluster", host=host, base_port=free_base_port(host, count), disk=disk
    )


@contextlib.contextmanager
def running(
    base: Path, *up_args: str, shards: int = 1, replicas: int = 2
) -> Iterator[LocalCluster]:
    with cleaned_up(new(base, shards, replicas)) as cluster:
        cluster.up(*cluster.create_args(shards, replicas), *up_args)
        yield cluster


@contextlib.contextmanager
def cleaned_up(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """``cluster``, stopped and with no process left afterwards; its logs are printed
    when the block fails."""
    try:
        yield cluster
    except BaseException:
        cluster.print_logs()  # pytest shows it with the failure
        raise
    finally:
        cluster.down()
        cluster.kill_leftovers()


async def rejoined(c: LocalCluster, epoch: int, timeout: float = 120) -> dict[str, Any]:
    """Shard 0 at ``epoch`` with every follower streaming and the old primary's rejoin
    recorded (``lastFailover.discardedBytes``); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        shard = await asyncio.to_thread(c.shard, 0)
        last = shard.get("lastFailover") or {}
        if (
            shard["epoch"] == epoch
            and last.get("discardedBytes") is not None
            and all(f["state"] == "streaming" for f in shard["followers"])
        ):
            return shard
        if time.monotonic() > deadline:
            raise TimeoutError(f"shard 0 not settled at epoch {epoch}: {shard}")
        await asyncio.sleep(0.3)
