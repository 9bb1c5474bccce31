"""Plain progress lines of ``local up/scale`` and ``switchover --dir`` (local/progress.py):
one line per change of state, copy progress throttled per member; and the agent's
``/status`` field they read a copy's progress from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgshard_operator.instance import agent as agent_mod
from pgshard_operator.instance import config, lease, peers, postgres
from pgshard_operator.instance.credentials import Credentials
from pgshard_operator.local import progress
from pgshard_operator.local.layout import ClusterDir
from pgshard_operator.local.progress import Member, PlainLines, Shard, Snapshot


def _snap(*members: Member, shard: Shard | None = None) -> Snapshot:
    return Snapshot(shards=(shard,) if shard else (), members=members)


def _text(lines: list[str]) -> list[str]:
    """The lines without their elapsed-time prefix."""
    return [line.split("] ", 1)[1] for line in lines]


def test_quiet_members_of_the_first_snapshot_print_nothing_until_they_change() -> None:
    p = PlainLines()
    first = p.lines(_snap(Member("s0m0", "primary"), Member("s0m1", "streaming")), 0.0)
    assert first == []
    assert p.lines(_snap(Member("s0m0", "primary"), Member("s0m1", "streaming")), 0.5) == []
    changed = p.lines(_snap(Member("s0m0", "primary"), Member("s0m1", "catching-up")), 1.0)
    assert _text(changed) == ["s0m1: catching-up"]
    assert changed[0].startswith("[   1.0s] ")


def test_a_new_member_prints_each_state_once_even_if_already_streaming() -> None:
    p = PlainLines()
    p.lines(_snap(Member("s0m1", "streaming")), 0.0)
    assert _text(p.lines(_snap(Member("s0m1", "streaming"), Member("s0m2", "streaming")), 1)) == [
        "s0m2: streaming"
    ]
    assert p.lines(_snap(Member("s0m1", "streaming"), Member("s0m2", "streaming")), 2) == []


def test_copy_progress_prints_at_most_every_few_seconds_per_member() -> None:
    p = PlainLines(every=5.0)
    mib = 1048576
    out: list[str] = []
    for tenth in range(0, 120):  # 12 s of polls every 0.1 s, the copy always moving
        t = tenth / 10
        snap = _snap(
            Member("s0m2", "bootstrapping", copied=(tenth + 1) * mib, total=200 * mib),
            Member("s1m2", "bootstrapping", copied=(tenth + 1) * mib, total=400 * mib),
        )
        out += _text(p.lines(snap, t))
    assert out.count("s0m2: bootstrapping") == 1
    copies = [line for line in out if line.startswith("s0m2: copied")]
    assert copies == [
        "s0m2: copied 1.0 MiB of 200.0 MiB (0%)",
        "s0m2: copied 51.0 MiB of 200.0 MiB (25%)",
        "s0m2: copied 101.0 MiB of 200.0 MiB (50%)",
    ]
    assert len([line for line in out if line.startswith("s1m2: copied")]) == 3


def test_a_copy_that_does_not_move_prints_no_more_lines() -> None:
    p = PlainLines(every=1.0)
    stuck = _snap(Member("s0m2", "bootstrapping", copied=10, total=100))
    assert len(p.lines(stuck, 0)) == 2  # the state, then the copy
    assert p.lines(stuck, 5) == []
    assert p.lines(stuck, 10) == []


def test_a_switchover_prints_the_switch_then_the_new_primary() -> None:
    p = PlainLines()
    members = (Member("s0m0", "primary"), Member("s0m1", "streaming"))
    assert p.lines(_snap(*members, shard=Shard(0, "s0m0", 1, None)), 0) == []
    switching = p.lines(_snap(*members, shard=Shard(0, "s0m0", 1, "s0m1")), 0.5)
    assert _text(switching) == ["shard 0: switching from s0m0 to s0m1"]
    assert p.lines(_snap(*members, shard=Shard(0, "s0m0", 1, "s0m1")), 1.0) == []
    after = (Member("s0m0", "catching-up"), Member("s0m1", "primary"))
    assert _text(p.lines(_snap(*after, shard=Shard(0, "s0m1", 2, None)), 1.5)) == [
        "shard 0: primary s0m1 (epoch 2)",
        "s0m0: catching-up",
        "s0m1: primary",
    ]


def test_watching_shows_plain_lines_on_stderr_and_nothing_on_stdout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    now = [_snap(Member("s0m1", "streaming"))]
    with progress.watching(ClusterDir(tmp_path), "scaling", poll=lambda: now[0]):
        now[0] = _snap(Member("s0m1", "streaming"), Member("s0m2", "streaming"))
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines()[0] == "scaling …"
    assert _text(out.err.splitlines()[1:]) == ["s0m2: streaming"]  # the last state, once


def test_watching_ignores_a_cluster_it_cannot_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def broken() -> Snapshot:
        raise OSError("no cluster.json")

    with progress.watching(ClusterDir(tmp_path), "scaling", poll=broken):
        pass
    assert capsys.readouterr().err == "scaling …\n"


async def test_the_agents_status_carries_its_copy_only_while_it_runs(tmp_path: Path) -> None:
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps(Credentials.generate().to_dict()))
    settings = agent_mod.AgentSettings(
        name="s0m2",
        datadir=tmp_path / "data",
        server=config.ServerSettings("s0m2", "127.0.0.1", 5432),
        credentials=creds,
    )
    members = peers.TopologyFilePeers(tmp_path / "topology.json", 0)
    store = lease.FileLeases(tmp_path / "lease.json")
    a = agent_mod.Agent(settings, postgres.Binaries.detect(), store, members)
    assert "bootstrap" not in await a.status()  # no copy (yet)
    partial = tmp_path / "data.partial"
    (partial / "base").mkdir(parents=True)
    (partial / "base" / "1").write_bytes(b"x" * 300)
    a.progress.total, a.progress.directory = 1000, partial
    doc = await a.status()
    assert doc["bootstrap"] == {"copiedBytes": 300, "totalBytes": 1000}
    assert doc["role"] == "bootstrapping"  # existing fields as before
    a.progress.finished = True
    assert "bootstrap" not in await a.status()
