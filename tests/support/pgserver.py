"""A throwaway PostgreSQL server for tests that need one plain server.

Replicated shards come from the local platform; this is for tests of pieces that
only need *a* real server (the rewriter's differential harness, protocol tests).
Started as the unprivileged user when running as root, stopped by pid.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

from pgshard_operator.instance import postgres

from . import net


@dataclasses.dataclass
class PgServer:
    datadir: Path
    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    user: str = "postgres"
    options: tuple[str, ...] = ()
    """More ``name=value`` settings for the next start (after, so above, the defaults)."""

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def start(self, bins: postgres.Binaries, timeout: float = 30, netns: str | None = None) -> None:
        """Start the server (in network namespace ``netns``, if given: needs root)."""
        log = open(self.datadir.parent / f"{self.datadir.name}.log", "ab")  # noqa: SIM115
        user, group, groups = bins.run_as.uid, bins.run_as.gid, bins.run_as.extra_groups
        prefix: list[str] = []
        if netns is not None:
            # Enter the namespace as root, then become the server's user (what Popen's
            # user= would do before exec'ing ``ip``). Both exec: the pid is the server's.
            prefix = ["ip", "netns", "exec", netns]
            if user is not None:
                prefix += ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups"]
            user, group, groups = None, None, None
        self.proc = subprocess.Popen(
            [
                *prefix,
                bins.path("postgres"),
                "-D",
                str(self.datadir),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                f"port={self.port}",
                "-c",
                f"unix_socket_directories={self.datadir}",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                # Two-phase commit works (a follower needs at least its primary's value).
                "-c",
                "max_prepared_transactions=10",
                *(arg for option in self.options for arg in ("-c", option)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=bins.env(),
            cwd="/",
            user=user,
            group=group,
            extra_groups=groups,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}; see {log.name}")
            try:
                bins.run("pg_isready", "-h", self.host, "-p", str(self.port), "-t", "1", timeout=5)
                return
            except postgres.PostgresCommandFailed:
                time.sleep(0.1)
        raise TimeoutError(f"postgres on {self.host}:{self.port} not ready after {timeout}s")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_server(
    base: Path, name: str = "pg", host: str | None = None, options: tuple[str, ...] = ()
) -> PgServer:
    """initdb + start a server under ``base`` on a random loopback address (``options``:
    ``name=value`` settings, as :attr:`PgServer.options`)."""
    bins = postgres.Binaries.detect()
    bins.run_as.own(base, 0o755)
    datadir = base / name
    postgres.initdb(bins, datadir)
    host = host or net.random_loopback()
    server = PgServer(datadir=datadir, host=host, port=net.free_port(host), options=options)
    if bins.run_as.uid is not None:
        os.chown(base, bins.run_as.uid, bins.run_as.gid or -1)
    server.start(bins)
    return server


def make_follower(
    primary: PgServer,
    base: Path,
    name: str = "follower",
    *,
    apply_delay_ms: int = 0,
    options: tuple[str, ...] = (),
) -> PgServer:
    """A streaming follower of ``primary`` (pg_basebackup), on its own loopback address.

    It streams with ``application_name`` = ``name`` so it shows up under that name in the
    primary's ``pg_stat_replication``. For tests of single pieces (probes, monitors);
    replicated shards with failover come from the local platform. ``apply_delay_ms``
    (``recovery_min_apply_delay``) makes it lag behind the primary's commits; ``options``
    as :attr:`PgServer.options`.
    """
    bins = postgres.Binaries.detect()
    datadir = base / name
    bins.run_as.own(datadir)
    bins.run(
        "pg_basebackup",
        "-h", primary.host, "-p", str(primary.port), "-U", primary.user,
        "-D", str(datadir), "-X", "stream", "-c", "fast",
        timeout=120,
    )  # fmt: skip
    conninfo = (
        f"host={primary.host} port={primary.port} user={primary.user} application_name={name}"
    )
    with open(datadir / "postgresql.auto.conf", "a") as f:
        f.write(f"primary_conninfo = '{conninfo}'\nrecovery_target_timeline = 'latest'\n")
        if apply_delay_ms:
            f.write(f"recovery_min_apply_delay = '{apply_delay_ms}ms'\n")
    (datadir / "standby.signal").touch()
    bins.run_as.own_tree(datadir)
    host = net.random_loopback()
    follower = PgServer(
        datadir=datadir, host=host, port=net.free_port(host), user=primary.user, options=options
    )
    follower.start(bins)
    return follower
