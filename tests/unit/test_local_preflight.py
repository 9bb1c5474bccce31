"""What ``up`` and the instance agent check before they start anything: whether a follower's
snapshot fits on its disk (instance/diskspace.py), where PostgreSQL's binaries are
(``PGSHARD_PG_BINDIR``, instance/postgres.py), and that asking whether DIR is in use
leaves DIR as it was (atomicfile.is_locked)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgshard_operator import atomicfile
from pgshard_operator.instance import diskspace, postgres

MB = 2**20
SEG = 16 * MB


def space(free_mb: int) -> diskspace.Space:
    return diskspace.Space(Path("/x"), total=1000 * MB, free=free_mb * MB, free_inodes=10_000)


@pytest.mark.parametrize(
    ("data_mb", "free_mb", "short_mb"),
    [
        (30, 200, 0),  # 30 + 2 segments copied + 2 segments headroom = 94 MB
        (30, 94, 0),
        (30, 93, 1),
        (30, 54, 40),
        (0, 0, 64),
    ],
)
def test_a_snapshot_needs_its_data_two_wal_segments_and_two_more_left_free(
    data_mb: int, free_mb: int, short_mb: int
) -> None:
    need = diskspace.SnapshotSize(data=data_mb * MB, wal_segment=SEG)
    assert need.copy == (data_mb + 32) * MB
    assert need.headroom == 32 * MB
    assert diskspace.shortfall(need, space(free_mb)) == short_mb * MB


def test_space_is_described_in_megabytes_and_inodes() -> None:
    assert space(54).describe() == "54 MB free of 1000 MB, 10000 inodes free"


def test_measure_looks_at_the_nearest_existing_directory(tmp_path: Path) -> None:
    got = diskspace.measure(tmp_path / "not" / "yet")
    assert got.path == tmp_path / "not" / "yet"
    assert 0 < got.free <= got.total


def _tools(bindir: Path, names: tuple[str, ...]) -> None:
    bindir.mkdir()
    for name in names:
        (bindir / name).write_text("")


def test_an_explicit_bindir_is_the_only_place_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = tmp_path / "full"
    _tools(full, postgres.TOOLS)
    monkeypatch.setenv("PGSHARD_PG_BINDIR", str(full))
    assert postgres.find_bindir() == full

    partial = tmp_path / "partial"
    _tools(partial, ("postgres", "initdb", "pg_ctl"))
    monkeypatch.setenv("PGSHARD_PG_BINDIR", str(partial))
    with pytest.raises(postgres.PostgresNotInstalled) as e:
        postgres.find_bindir()  # not the Debian directory instead
    assert f"PGSHARD_PG_BINDIR={partial} lacks PostgreSQL server binaries" in str(e.value)
    assert "(missing: pg_basebackup, pg_rewind, pg_controldata)" in str(e.value)

    monkeypatch.setenv("PGSHARD_PG_BINDIR", str(tmp_path / "nowhere"))
    with pytest.raises(postgres.PostgresNotInstalled, match="nowhere is not a directory"):
        postgres.find_bindir()


def test_asking_whether_a_lock_is_held_creates_nothing(tmp_path: Path) -> None:
    lock = tmp_path / "supervisor.lock"
    assert not atomicfile.is_locked(lock)
    assert list(tmp_path.iterdir()) == []
    fd = atomicfile.hold_lock(lock)
    try:
        assert atomicfile.is_locked(lock)
    finally:
        os.close(fd)
    assert not atomicfile.is_locked(lock)
