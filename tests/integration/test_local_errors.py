"""``pgshard local up``/``scale`` when things are missing: PostgreSQL's binaries, disk space.

Missing binaries are refused before anything starts. Disk-full tests run the cluster's
DIR on a small tmpfs in a private mount namespace (``tests.support.mountns``, the host's
mounts are never touched), sized so that the primary fits and a follower's snapshot
does not: by bytes (refused before any copy starts, nothing touched) or by inodes (the
copy fails half-way: the partial copy and the replication slot made for it are removed).
Each time the command says which member, which directory and how much space; nothing is
left running, and the cluster is either refused cleanly (``up`` resumes it once there is
room) or, for ``scale``, keeps running with its old shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import asyncpg
import pytest

from pgshard_operator.instance import postgres
from tests.support import localcluster, mountns

DEBIAN_BINDIR = Path(f"/usr/lib/postgresql/{postgres.PG_MAJOR}/bin")


def processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (a cluster's DIR)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(path) in cmdline:
                out.append(cmdline)
    return out


def slots_on_disk(c: localcluster.LocalCluster, member: str) -> list[str]:
    """Replication slots a stopped member's PGDATA holds (``pg_replslot/NAME``)."""
    return sorted(p.name for p in (c.files / "members" / member / "data" / "pg_replslot").iterdir())


async def fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(sql, timeout=10)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("tools", "problem"),
    [
        (None, "is not a directory"),
        ((), "missing: postgres, initdb, pg_basebackup, pg_rewind, pg_controldata"),
        (("postgres", "initdb"), "missing: pg_basebackup, pg_rewind, pg_controldata"),
    ],
    ids=["nonexistent", "empty", "partial"],
)
def test_up_without_postgresql_binaries_is_refused_before_anything_starts(
    pg_tmp: Path, tools: tuple[str, ...] | None, problem: str
) -> None:
    bindir = pg_tmp / "bin"
    if tools is not None:
        bindir.mkdir()
        real = postgres.find_bindir()
        for tool in tools:
            (bindir / tool).symlink_to(real / tool)
    c = localcluster.new(pg_tmp, shards=1, replicas=1)
    c.dir.mkdir()  # made beforehand, as in `mkdir DIR && pgshard local up --dir DIR`
    refused = c.cli(
        "local", "up", f"--dir={c.dir}", *c.create_args(1, 1),
        check=False, timeout=60, PGSHARD_PG_BINDIR=str(bindir),
    )  # fmt: skip
    assert refused.returncode != 0
    assert f"PGSHARD_PG_BINDIR={bindir} " in refused.stderr
    assert problem in refused.stderr
    if postgres.missing_tools(DEBIAN_BINDIR):
        assert "apt-get install postgresql-15" in refused.stderr
    else:
        assert f"is in {DEBIAN_BINDIR}: set PGSHARD_PG_BINDIR to it, or unset it" in refused.stderr
    assert list(c.dir.iterdir()) == []
    assert processes_naming(c.dir) == []


def test_up_after_a_refusal_creates_the_cluster_in_the_same_dir(pg_tmp: Path) -> None:
    c = localcluster.new(pg_tmp, shards=1, replicas=1)
    c.dir.mkdir()
    (pg_tmp / "empty").mkdir()
    refused = c.cli(
        "local", "up", f"--dir={c.dir}", *c.create_args(1, 1),
        check=False, timeout=60, PGSHARD_PG_BINDIR=str(pg_tmp / "empty"),
    )  # fmt: skip
    assert refused.returncode != 0
    try:
        c.up(*c.create_args(1, 1))
        shard = c.shard(0)
        assert shard["primary"]["name"] == "s0m0"
        assert [(f["name"], f["state"]) for f in shard["followers"]] == [("s0m1", "streaming")]
    finally:
        c.down()
        c.kill_leftovers()
    assert processes_naming(c.dir) == []


def refused_up(c: localcluster.LocalCluster) -> str:
    """Run ``local up`` for a one-shard, one-follower cluster that must fail: its stderr."""
    failed = c.cli("local", "up", f"--dir={c.dir}", *c.create_args(1, 1), check=False)
    assert failed.returncode != 0
    return failed.stderr


def test_up_refuses_a_follower_that_does_not_fit_and_resumes_once_there_is_room(
    pg_tmp: Path,
) -> None:
    # The primary takes ~46 MB (initdb, one WAL segment), ~62 MB once a snapshot
    # started (a WAL switch); a follower's snapshot needs ~62 MB plus 32 MB headroom.
    with mountns.private_tmpfs(pg_tmp / "cluster", size_mb=100) as disk:
        with localcluster.cleaned_up(localcluster.new(pg_tmp, 1, 1, disk)) as c:
            err = refused_up(c)
            assert "s0m1 could not be created: not enough disk space for member s0m1 " in err
            assert f"in {c.dir}/members/s0m1: a snapshot of primary {c.host}:{c.base_port} " in err
            assert re.search(
                r"needs about \d+ MB plus 32 MB left free, there are \d+ MB free of 100 MB", err
            ), err
            assert "nothing was copied" in err
            assert disk.pids() == []  # supervisor, agents, servers: all stopped
            members = c.files / "members"
            assert (members / "s0m0" / "data" / "PG_VERSION").exists()
            assert sorted(p.name for p in (members / "s0m1").iterdir()) == []
            assert slots_on_disk(c, "s0m0") == []  # refused before the slot, too
            assert "no cluster running" in c.cli("local", "down", f"--dir={c.dir}").stdout

            disk.resize(250)
            c.up()  # resumes the cluster as it was created
            shard = c.shard(0)
            assert shard["primary"]["name"] == "s0m0"
            assert [(f["name"], f["state"]) for f in shard["followers"]] == [("s0m1", "streaming")]
        assert disk.pids() == []


def test_a_disk_filling_during_the_copy_loses_only_the_partial_copy(pg_tmp: Path) -> None:
    # Bytes are plenty, files are not: the primary's PGDATA has ~1300, and so does its
    # snapshot, which fails half-way with "No space left on device".
    with mountns.private_tmpfs(pg_tmp / "cluster", size_mb=400, nr_inodes=2000) as disk:
        with localcluster.cleaned_up(localcluster.new(pg_tmp, 1, 1, disk)) as c:
            err = refused_up(c)
            assert "s0m1 could not be created: disk full while snapshot of primary " in err
            assert f"for member s0m1 in {c.dir}/members/s0m1 (" in err
            assert re.search(r"\d+ MB free of 400 MB, \d+ inodes free now\)", err), err
            assert "the partial copy was removed" in err
            assert disk.pids() == []
            assert sorted(p.name for p in (c.files / "members" / "s0m1").iterdir()) == []
            # The slot made for the copy is gone: the primary keeps no WAL for it.
            assert slots_on_disk(c, "s0m0") == []
        assert disk.pids() == []


async def test_scale_on_a_full_disk_is_refused_and_the_cluster_keeps_its_shape(
    pg_tmp: Path,
) -> None:
    # Primary (~62 MB) and one follower (~46 MB) fit; a second follower does not.
    with mountns.private_tmpfs(pg_tmp / "cluster", size_mb=150) as disk:
        c = localcluster.new(pg_tmp, shards=1, replicas=1, disk=disk)
        try:
            await asyncio.to_thread(
                c.up, *c.create_args(1, 1), "--replication-mode=sync", "--cooldown-seconds=2"
            )
            refused = await asyncio.to_thread(
                c.cli, "local", "scale", f"--dir={c.dir}", "--replicas=2", check=False
            )
            assert refused.returncode != 0
            err = refused.stderr
            assert "scale refused: s0m2 could not be created: not enough disk space for " in err
            assert f"member s0m2 in {c.dir}/members/s0m2: " in err
            assert re.search(r"there are \d+ MB free of 150 MB", err), err
            assert "the cluster stays at --replicas 1" in err

            assert not (c.files / "members" / "s0m2").exists()
            assert json.loads((c.files / "cluster.json").read_text())["replicas"] == 1
            assert not [p for p in processes_naming(c.dir) if "--name=s0m2" in p]
            shard = c.shard(0)
            primary = shard["primary"]
            assert primary["name"] == "s0m0"
            assert [(f["name"], f["state"]) for f in shard["followers"]] == [("s0m1", "streaming")]
            dsn = c.reachable(primary["dsn"])  # DIR (and its CA) is in the tmpfs's namespace
            slots = await fetchval(
                dsn,
                "SELECT array_agg(slot_name ORDER BY slot_name) FROM pg_replication_slots",
            )
            assert slots == ["s0m1"]
            standbys = await fetchval(dsn, "SHOW synchronous_standby_names")
            assert standbys == 'ANY 1 ("s0m1")'
            conn = await asyncpg.connect(dsn, timeout=10)
            try:  # still a sync cluster that commits (s0m1 confirms)
                await conn.execute("CREATE TABLE after_scale (id int)", timeout=15)
                await conn.execute("INSERT INTO after_scale VALUES (1)", timeout=15)
            finally:
                await conn.close()
        except BaseException:
            c.print_logs()
            raise
        finally:
            await asyncio.to_thread(c.down)
            c.kill_leftovers()
        assert disk.pids() == []


@pytest.mark.parametrize(
    ("flag", "problem"),
    [
        ("--lease-ttl=-1", "--lease-ttl -1: must be a number of seconds > 0"),
        ("--lease-ttl=nan", "--lease-ttl nan: must be a number of seconds > 0"),
        ("--lease-ttl=inf", "--lease-ttl inf: must be a number of seconds > 0"),
        ("--lease-ttl=0.3", "--lease-ttl 0.3: must be at least 1 s"),
        ("--detection-seconds=0", "--detection-seconds 0: must be a number of seconds > 0"),
        ("--detection-seconds=nan", "--detection-seconds nan: must be a number of seconds > 0"),
        ("--cooldown-seconds=-5", "--cooldown-seconds -5: must be a number of seconds >= 0"),
        ("--cooldown-seconds=inf", "--cooldown-seconds inf: must be a number of seconds >= 0"),
    ],
)
def test_up_with_bad_timings_is_refused_before_anything_starts(
    pg_tmp: Path, flag: str, problem: str
) -> None:
    with localcluster.cleaned_up(localcluster.new(pg_tmp, shards=1, replicas=1)) as c:
        c.dir.mkdir()
        refused = c.cli(
            "local", "up", f"--dir={c.dir}", *c.create_args(1, 1), flag, check=False, timeout=120
        )
        assert refused.returncode != 0, refused.stdout
        assert problem in refused.stderr
        assert list(c.dir.iterdir()) == []
        assert processes_naming(c.dir) == []
