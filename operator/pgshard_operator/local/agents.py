"""Instance agents as child processes of the local supervisor: start, watch, stop.

Each member runs ``python -m pgshard_operator.instance.main`` (never a ``PATH``
lookup), with its output appended to ``DIR/logs/NAME.agent.log``. Agents are
started with ``--exit-with-parent`` so none outlives the supervisor. Called by
supervisor.py; stopping is by pid: SIGTERM (clean stop of PostgreSQL), then the
whole process tree is killed if it does not exit in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from .. import atomicfile, proctree
from ..instance import postgres
from .layout import ClusterConfig, ClusterDir, MemberSpec

log = logging.getLogger(__name__)


class AgentProcess:
    def __init__(self, cdir: ClusterDir, cfg: ClusterConfig, spec: MemberSpec) -> None:
        self.cdir = cdir
        self.cfg = cfg
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.exits = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def argv(
        self, *, upstream: str | None, bootstrap_primary: bool, hold_primary: bool
    ) -> list[str]:
        s, cd = self.spec, self.cdir
        argv = [
            sys.executable,
            "-m",
            "pgshard_operator.instance.main",
            f"--name={s.name}",
            f"--datadir={cd.datadir(s.name)}",
            f"--host={s.host}",
            f"--port={s.port}",
            f"--status-port={s.status_port}",
            f"--credentials={cd.secrets}",
            f"--control-token-file={cd.control_token}",
            f"--lease-file={cd.lease(s.shard)}",
            f"--shard={s.shard}",
            f"--topology-file={cd.topology}",
            f"--lease-ttl={self.cfg.timings.lease_ttl}",
            f"--pg-log={cd.logs / f'{s.name}.postgres.log'}",
            f"--apply-delay-ms={s.apply_delay_ms}",
            "--exit-with-parent",
            f"--replication-method={self.cfg.method.value}",
        ]
        argv += [f"--pg-option={o}" for o in self.cfg.pg_options]
        if self.cfg.tls:
            argv.append(f"--tls-dir={cd.tls.directory}")
        if upstream:
            argv.append(f"--upstream={upstream}")
        if bootstrap_primary:
            argv.append("--bootstrap-primary")
        if hold_primary:
            argv.append("--hold-primary")
        return argv

    def env(self) -> dict[str, str]:
        """The agent's environment: a member on other binaries (``--follower-bindir``,
        ``local upgrade``) gets them as ``PGSHARD_PG_BINDIR``, the one place it looks."""
        env = dict(os.environ)
        if self.spec.bindir is not None:
            env["PGSHARD_PG_BINDIR"] = self.spec.bindir
        return env

    async def start(
        self, *, upstream: str | None, bootstrap_primary: bool = False, hold_primary: bool = False
    ) -> None:
        member_dir = self.cdir.member_dir(self.spec.name)
        member_dir.mkdir(parents=True, exist_ok=True)
        member_dir.chmod(0o755)
        postgres.RunAs.detect().own(member_dir, 0o755)
        out = os.open(
            self.cdir.agent_log(self.spec.name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )
        os.fchmod(out, 0o600)  # logs are the owner's: owner-only, even if created before
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(
                    upstream=upstream,
                    bootstrap_primary=bootstrap_primary,
                    hold_primary=hold_primary,
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env(),
            )
        finally:
            os.close(out)
        atomicfile.atomic_write(self.cdir.agent_pid(self.spec.name), f"{self.proc.pid}\n")
        log.info("%s: agent started (pid %d)", self.spec.name, self.proc.pid)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        self.cdir.agent_pid(self.spec.name).unlink(missing_ok=True)
        self.exits += 1
        return code

    async def stop(self, timeout: float = 60.0) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            # A SIGSTOPped agent (fault injection) must run again to stop cleanly.
            os.kill(proc.pid, signal.SIGCONT)
            for child in proctree.descendants(proc.pid):
                os.kill(child, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("%s: agent did not stop in %.0fs; killing it", self.spec.name, timeout)
            proctree.kill_tree(proc.pid)
            await proc.wait()
        # A server whose agent died can be left behind: kill it by its pid file.
        if (pid := postgres.postmaster_pid(self.cdir.datadir(self.spec.name))) is not None:
            proctree.kill_tree(pid)

    def bootstrap_error(self) -> str:
        """Why the agent's last bootstrap failed: its one-line message when the log ends
        with one (instance/main.py logs "bootstrap failed: …"), else the log's tail
        (a failed tool's output spans several lines)."""
        tail = self.log_tail(3)
        _, sep, message = tail.rpartition("\n")[2].partition("bootstrap failed: ")
        return message if sep else tail

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.cdir.agent_log(self.spec.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])
