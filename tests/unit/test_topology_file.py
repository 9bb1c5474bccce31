"""Following DIR/topology.json (topology/file.py): changes, bad documents, missing file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pgshard_proxy.contract import topology
from pgshard_proxy.topology.file import FileTopologySource
from pgshard_proxy.topology.source import TopologySource
from tests.support.proxy import rewrite_unnoticed


def sample(version: int, epoch: int = 1) -> topology.Topology:
    primary = topology.Member("s0-0", "127.0.0.1:5432", "postgresql://a@127.0.0.1:5432/app")
    return topology.Topology(
        shards=(topology.Shard(index=0, epoch=epoch, primary=primary),), version=version
    )


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def until_logged(caplog: pytest.LogCaptureFixture, needle: str) -> None:
    """Wait (bounded) until the source has seen and logged a document."""
    for _ in range(1000):
        if any(needle in r.getMessage() for r in caplog.records):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never logged: {needle!r}")


async def next_item(it: AsyncIterator[topology.Topology]) -> topology.Topology:
    return await asyncio.wait_for(anext(it), timeout=10)


async def test_first_item_is_current_then_only_changes(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    write_atomically(path, topology.to_json(sample(1)))
    source: TopologySource = FileTopologySource(path, poll_interval=0.01)
    it = aiter(source)
    try:
        assert await next_item(it) == sample(1)
        write_atomically(path, topology.to_json(sample(1)))  # rewritten, same content: no item
        write_atomically(path, topology.to_json(sample(2, epoch=2)))
        got = await next_item(it)
        assert (got.version, got.shards[0].epoch) == (2, 2)
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_bad_documents_keep_the_last_good_topology(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "topology.json"
    path.write_text(topology.to_json(sample(1)))
    it = aiter(FileTopologySource(path, poll_interval=0.01))
    try:
        assert (await next_item(it)).version == 1
        with caplog.at_level(logging.ERROR, logger="pgshard_proxy.topology.file"):
            pending = asyncio.ensure_future(next_item(it))  # the source polls while we write
            path.write_text('{"shards": [{"index": 0, "epo')  # half-written
            await until_logged(caplog, "not valid JSON")
            broken = topology.to_dict(sample(3))
            del broken["shards"][0]["epoch"]
            write_atomically(path, json.dumps(broken))  # valid JSON, missing a field
            await until_logged(caplog, "missing field 'epoch'")
            assert not pending.done()
            write_atomically(path, topology.to_json(sample(4)))
            got = await pending
        assert got.version == 4  # nothing in between was yielded
        messages = [r.getMessage() for r in caplog.records]
        assert any("not valid JSON" in m and "keeping the last good one" in m for m in messages)
        assert any("missing field 'epoch'" in m and str(path) in m for m in messages)
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_waits_for_the_file_to_appear(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "topology.json"
    it = aiter(FileTopologySource(path, poll_interval=0.01))
    try:
        with caplog.at_level(logging.ERROR, logger="pgshard_proxy.topology.file"):
            pending = asyncio.ensure_future(next_item(it))
            await until_logged(caplog, "waiting for a valid one")
            assert not pending.done()
            write_atomically(path, topology.to_json(sample(7)))
            assert (await pending).version == 7
        assert sum("waiting for a valid one" in r.getMessage() for r in caplog.records) == 1
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_converges_on_a_change_its_polling_missed(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    write_atomically(path, topology.to_json(sample(1)))
    source = FileTopologySource(path, poll_interval=0.01)
    it = aiter(source)
    try:
        assert await next_item(it) == sample(1)
        rewrite_unnoticed(path, topology.to_json(sample(2, epoch=2)))
        got = await asyncio.wait_for(anext(it), timeout=source.resync_seconds + 1)
        assert (got.version, got.shards[0].epoch) == (2, 2)
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_refresh_rereads_at_once(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    write_atomically(path, topology.to_json(sample(1)))
    source = FileTopologySource(path, poll_interval=0.01, resync_seconds=600)
    it = aiter(source)
    try:
        assert await next_item(it) == sample(1)
        rewrite_unnoticed(path, topology.to_json(sample(2, epoch=2)))
        pending = asyncio.ensure_future(next_item(it))
        await asyncio.sleep(0.3)
        assert not pending.done()  # no sign of a change, no re-read due
        source.refresh()
        got = await asyncio.wait_for(pending, timeout=1)
        assert got.shards[0].epoch == 2
    finally:
        await it.aclose()  # type: ignore[attr-defined]
