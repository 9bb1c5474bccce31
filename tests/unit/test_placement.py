"""Placement arithmetic (pure); equality with PostgreSQL: integration/test_placement_hash.py."""

from __future__ import annotations

import pytest

from pgshard_proxy.contract import placement, topology


def _shards(n: int) -> tuple[topology.Shard, ...]:
    return tuple(
        topology.Shard(index=i, epoch=1, primary=None, hash_range=r)
        for i, r in enumerate(topology.hash_ranges(n))
    )


def test_every_32_bit_hash_has_exactly_one_shard() -> None:
    shards = _shards(3)
    edges = [0, 1, (1 << 32) // 3 - 1, (1 << 32) // 3, (1 << 32) - 1]
    assert [placement.shard_of(h, shards) for h in edges] == [0, 0, 0, 1, 2]
    with pytest.raises(LookupError, match="does not cover"):
        placement.shard_of(1 << 32, shards)


def test_integers_of_every_width_hash_alike_and_the_reduction_keeps_32_bits() -> None:
    h = placement.hash_key(-5, placement.KeyType.INTEGER)
    assert h == placement.hash_uint32(-5 & 0xFFFFFFFF)
    assert placement.hash_key("-5", placement.KeyType.INTEGER) == h
    assert 0 <= placement.reduce(h) < 1 << 32
    assert placement.reduce(-1) == 0xFFFFFFFF
    with pytest.raises(ValueError, match="out of range"):
        placement.hash_key(1 << 63, placement.KeyType.INTEGER)
    with pytest.raises(ValueError, match="not an integer"):
        placement.hash_key(1.5, placement.KeyType.INTEGER)


def test_key_types_by_column_type() -> None:
    assert placement.KeyType.of("bigint") is placement.KeyType.INTEGER
    assert placement.KeyType.of("character varying(20)") is placement.KeyType.TEXT
    assert placement.KeyType.of("uuid") is placement.KeyType.UUID
    with pytest.raises(ValueError, match="numeric is not supported"):
        placement.KeyType.of("numeric")
    assert placement.hash32_sql('"k"', placement.KeyType.TEXT) == (
        '(hashtextextended(("k")::text, 0) & 4294967295)'
    )
