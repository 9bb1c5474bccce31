"""PostgreSQL server binaries: find them, and run them as an unprivileged user.

PostgreSQL refuses to run as root. When pgshard itself runs as root (containers,
CI), every server-side binary is started as ``PGSHARD_PG_USER`` (default
``postgres``) and the directories it writes are handed to that user. This is the
only module that spawns PostgreSQL binaries; the instance agent, the local
platform and the test fixtures all go through it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .. import proctree

PG_MAJOR = 15
INSTALL_HINT = (
    "install the PostgreSQL 15 server: 'bash scripts/install-postgres' "
    "(Debian: apt-get install postgresql-15), or point PGSHARD_PG_BINDIR at its bin directory"
)


class PostgresNotInstalled(RuntimeError):
    """The PostgreSQL server binaries cannot be found."""


class PostgresCommandFailed(RuntimeError):
    """A PostgreSQL binary exited non-zero; carries its output for the error message."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"{Path(argv[0]).name} exited with status {returncode}:\n{tail}")


TOOLS = ("postgres", "initdb", "pg_basebackup", "pg_rewind", "pg_controldata")
"""The server binaries pgshard runs (bootstrap, supervision, rejoin)."""


def missing_tools(bindir: Path) -> list[str]:
    """Which of ``TOOLS`` are not files in ``bindir`` (all of them if it does not exist)."""
    return [t for t in TOOLS if not (bindir / t).is_file()]


STATEMENT_TOOLS = (*TOOLS, "pg_dump", "pg_restore")
"""What a member of a statement-method cluster runs (its bootstrap dumps and restores)."""


def major_version(bindir: Path) -> int:
    """The major version of ``bindir/postgres`` (``postgres --version``: "… 18.6" -> 18);
    raises PostgresNotInstalled saying what is wrong with ``bindir``."""
    missing = [t for t in STATEMENT_TOOLS if not (bindir / t).is_file()]
    if not bindir.is_dir():
        raise PostgresNotInstalled(f"{bindir} is not a directory (expected a PostgreSQL bin dir)")
    if missing:
        raise PostgresNotInstalled(
            f"{bindir} is not a PostgreSQL bin directory (missing: {', '.join(missing)})"
        )
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            cwd="/",
        ).stdout
        return int(out.split()[-1].split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise PostgresNotInstalled(f"{bindir}/postgres does not run here: {e}") from None


def ssl_library(bins: Binaries) -> str:
    """The SSL library ``bins``' server is built with ("" without SSL support: it cannot
    serve a TLS cluster), from ``postgres -C ssl_library`` on an empty configuration."""
    with tempfile.TemporaryDirectory(prefix="pgshard-ssl-") as d:
        conf = Path(d)
        for name in ("postgresql.conf", "postgresql.auto.conf"):
            (conf / name).write_text("")
            bins.run_as.chown(conf / name)
        bins.run_as.own(conf)
        return bins.run("postgres", "-C", "ssl_library", "-D", d, timeout=30).strip()


def find_bindir() -> Path:
    """The directory holding ``postgres``, ``initdb``, ``pg_basebackup``…

    ``$PGSHARD_PG_BINDIR``, when set, is the only place looked at (pointing it at
    the wrong directory is an error, not a reason to pick other binaries). Else
    Debian's ``/usr/lib/postgresql/15/bin``, then the directory of ``pg_ctl`` on
    ``PATH`` (following symlinks).
    """
    debian = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
    if env := os.environ.get("PGSHARD_PG_BINDIR"):
        bindir = Path(env)
        missing = missing_tools(bindir)
        if not missing:
            return bindir
        what = (
            f"lacks PostgreSQL server binaries (missing: {', '.join(missing)})"
            if bindir.is_dir()
            else "is not a directory"
        )
        hint = INSTALL_HINT
        if not missing_tools(debian):  # the usual fix is then a stale or mistyped setting
            hint = f"PostgreSQL {PG_MAJOR} is in {debian}: set PGSHARD_PG_BINDIR to it, or unset it"
        raise PostgresNotInstalled(f"PGSHARD_PG_BINDIR={env} {what}; {hint}")
    candidates = [debian]
    if found := shutil.which("pg_ctl"):
        candidates.append(Path(found).resolve().parent)
    for c in candidates:
        if not missing_tools(c):
            return c
    looked = " and ".join(str(c) for c in candidates)
    raise PostgresNotInstalled(
        f"PostgreSQL server binaries ({', '.join(TOOLS)}) not found in {looked}; {INSTALL_HINT}"
    )


@dataclasses.dataclass(frozen=True)
class RunAs:
    """Who server processes run as: ``None`` fields mean 'the current user'."""

    uid: int | None = None
    gid: int | None = None
    name: str | None = None

    @classmethod
    def detect(cls) -> RunAs:
        """Current user unless root, else ``$PGSHARD_PG_USER`` (default ``postgres``)."""
        if os.geteuid() != 0:
            return cls()
        name = os.environ.get("PGSHARD_PG_USER", "postgres")
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise PostgresNotInstalled(
                f"running as root, but the unprivileged user {name!r} that PostgreSQL must run as "
                f"does not exist; create it (useradd --system {name}) or set PGSHARD_PG_USER"
            ) from None
        return cls(uid=pw.pw_uid, gid=pw.pw_gid, name=name)

    @property
    def extra_groups(self) -> list[int] | None:
        """Supplementary groups for the child: none when switching user, else inherited."""
        return [] if self.uid is not None else None

    def own(self, path: Path, mode: int = 0o700) -> None:
        """Create ``path`` (and parents) and hand it to this user with ``mode``."""
        path.mkdir(parents=True, exist_ok=True)
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)
        path.chmod(mode)

    def chown(self, path: Path) -> None:
        """Hand one file we wrote as root to this user (no-op when not switching user)."""
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)

    def own_tree(self, path: Path) -> None:
        """Hand an existing tree to this user (used after copying files in as root)."""
        if self.uid is None:
            return
        gid = self.gid if self.gid is not None else -1
        os.chown(path, self.uid, gid)
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                os.chown(os.path.join(root, n), self.uid, gid, follow_symlinks=False)


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Resolved binaries plus the user they run as."""

    bindir: Path
    run_as: RunAs

    @classmethod
    def detect(cls) -> Binaries:
        return cls(find_bindir(), RunAs.detect())

    def path(self, tool: str) -> str:
        return str(self.bindir / tool)

    def env(self, password: str | None = None) -> dict[str, str]:
        """Environment for server binaries: no inherited PG* connection settings.

        ``password`` is handed to client tools (pg_basebackup, pg_rewind) as
        ``PGPASSWORD``, which, unlike argv, other users cannot read.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if password is not None:
            env["PGPASSWORD"] = password
        env["LC_ALL"] = env.get("LC_ALL", "C.UTF-8")
        if self.run_as.name:
            env["HOME"] = pwd.getpwnam(self.run_as.name).pw_dir
            env["USER"] = self.run_as.name
        return env

    def run(self, tool: str, *args: str, timeout: float = 120, input: str | None = None) -> str:
        """Run a binary to completion; returns its combined output or raises."""
        argv = [self.path(tool), *args]
        try:
            proc = subprocess.run(
                argv,
                input=input,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                env=self.env(),
                cwd="/",
                user=self.run_as.uid,
                group=self.run_as.gid,
                extra_groups=self.run_as.extra_groups,
            )
        except subprocess.TimeoutExpired as e:
            out = e.output.decode() if isinstance(e.output, bytes) else (e.output or "")
            raise PostgresCommandFailed(argv, -1, f"timed out after {timeout}s\n{out}") from None
        if proc.returncode != 0:
            raise PostgresCommandFailed(argv, proc.returncode, proc.stdout)
        return str(proc.stdout)

    async def run_async(
        self, tool: str, *args: str, timeout: float = 120, password: str | None = None
    ) -> str:
        """Like :meth:`run`, without blocking the event loop; kills the child on timeout."""
        argv = [self.path(tool), *args]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env(password),
            cwd="/",
            user=self.run_as.uid,
            group=self.run_as.gid,
            extra_groups=self.run_as.extra_groups,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PostgresCommandFailed(argv, -1, f"timed out after {timeout}s") from None
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise PostgresCommandFailed(argv, proc.returncode or -1, text)
        return text


def initdb(
    bins: Binaries, datadir: Path, superuser: str = "postgres", password: str | None = None
) -> None:
    """A fresh cluster in ``datadir`` (must not exist or be empty).

    Without ``password`` every local connection is trusted (test servers); with
    one, the superuser gets it and connections need SCRAM from the first start.
    """
    bins.run_as.own(datadir)
    auth = ["--auth=trust"]
    with tempfile.TemporaryDirectory(prefix="pgshard-initdb-") as tmp:
        if password is not None:
            bins.run_as.own(Path(tmp))
            pwfile = Path(tmp) / "pw"
            pwfile.write_text(password + "\n")
            bins.run_as.chown(pwfile)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        bins.run(
            "initdb",
            "-D",
            str(datadir),
            "-U",
            superuser,
            *auth,
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        )


def open_log(log: Path) -> int:
    """``log`` opened for appending; a file is made owner-only (also when an older pgshard
    created it 0644). Anything else (``/dev/null``, the default) keeps its mode: a 0600
    ``/dev/null`` would break every other user of the machine."""
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if stat.S_ISREG(os.fstat(out).st_mode):
        os.fchmod(out, 0o600)
    return out


async def spawn(bins: Binaries, datadir: Path, log: Path) -> asyncio.subprocess.Process:
    """Start ``postgres -D datadir`` (settings come from its config files), output to ``log``."""
    out = open_log(log)
    try:
        return await asyncio.create_subprocess_exec(
            bins.path("postgres"),
            "-D",
            str(datadir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=bins.env(),
            cwd="/",
            user=bins.run_as.uid,
            group=bins.run_as.gid,
            extra_groups=bins.run_as.extra_groups,
        )
    finally:
        os.close(out)


def controldata(bins: Binaries, datadir: Path) -> dict[str, str]:
    """``pg_controldata`` as a dict ("Database cluster state" -> "shut down", …)."""
    out = bins.run("pg_controldata", "-D", str(datadir), timeout=30)
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def postmaster_pid(datadir: Path) -> int | None:
    """The running postmaster's pid from ``postmaster.pid``, if it is alive."""
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


async def wait_postmaster_gone(datadir: Path, pid: int, timeout: float = 15.0) -> None:
    """Wait until a killed postmaster is gone, so a new one can take the data directory.

    An orphaned server is reaped by init, which here can take seconds; until then the
    zombie still answers ``kill(pid, 0)`` and a new postmaster refuses to start ("lock
    file already exists"). Once the process is dead (gone or a zombie) for longer than
    ``timeout``, its ``postmaster.pid`` is stale and is removed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if postmaster_pid(datadir) != pid:
            return
        await asyncio.sleep(0.1)
    if not proctree.alive(pid):
        (datadir / "postmaster.pid").unlink(missing_ok=True)
        return
    raise PostgresCommandFailed(
        ["postgres"], -1, f"postmaster {pid} of {datadir} is still running after being killed"
    )
