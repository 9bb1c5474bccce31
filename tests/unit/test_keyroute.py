"""Keyed plans to shards from literals and Bind parameters (text and binary formats)."""

from __future__ import annotations

import struct
import uuid

import pytest

from pgshard_proxy.contract import placement, topology
from pgshard_proxy.routing import keyroute, shardplan

SHARDS = tuple(
    topology.Shard(index=i, epoch=1, primary=None, hash_range=r)
    for i, r in enumerate(topology.hash_ranges(3))
)
INT = placement.KeyType.INTEGER


def bind(values: list[bytes | None], formats: list[int]) -> bytes:
    body = b"portal\x00stmt\x00" + struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    body += struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return body + struct.pack("!h", 0)


def expected(value: object, key_type: placement.KeyType) -> int:
    return placement.shard_of(placement.reduce(placement.hash_key(value, key_type)), SHARDS)


def test_bind_parameters_in_text_and_binary_place_alike() -> None:
    plan = shardplan.plan("SELECT * FROM t WHERE k = $2", [("t", "k")])
    want = (expected(123456, INT),)
    for values, formats in (
        ([b"x", b"123456"], []),
        ([b"x", b" 123456"], [0]),
        ([b"x", struct.pack("!i", 123456)], [0, 1]),
        ([b"x", struct.pack("!q", 123456)], [1]),
    ):
        b = keyroute.parse_bind(bind(values, formats))
        assert keyroute.shards_for(plan.keys, INT, b, SHARDS) == want


def test_in_lists_give_the_shards_of_all_values_and_nulls_place_nowhere() -> None:
    plan = shardplan.plan("SELECT * FROM t WHERE k IN (1, 2, 3, 4, 5, 6, $1)", [("t", "k")])
    b = keyroute.parse_bind(bind([None], []))
    found = keyroute.shards_for(plan.keys, INT, b, SHARDS)
    assert found == tuple(sorted({expected(i, INT) for i in range(1, 7)}))
    only_null = shardplan.plan("SELECT * FROM t WHERE k = $1", [("t", "k")])
    assert keyroute.shards_for(only_null.keys, INT, b, SHARDS) == (0,)


def test_uuid_and_text_keys() -> None:
    u = uuid.UUID(int=12345678901234567890)
    for raw, fmt in ((str(u).encode(), 0), (u.bytes, 1)):
        b = keyroute.parse_bind(bind([raw], [fmt]))
        ref = shardplan.KeyRef(param=1)
        assert keyroute.key_value(ref, placement.KeyType.UUID, b) == u
    ref = shardplan.KeyRef(value="été")
    assert keyroute.shards_for([ref], placement.KeyType.TEXT, None, SHARDS) == (
        expected("été", placement.KeyType.TEXT),
    )


@pytest.mark.parametrize(
    ("ref", "key_type", "raw", "needle"),
    [
        (shardplan.KeyRef(value="abc"), INT, None, "not an integer"),
        (shardplan.KeyRef(param=1), INT, ([b"abc"], [1]), "2, 4 or 8 bytes"),
        (shardplan.KeyRef(param=2), INT, ([b"1"], []), "no such parameter"),
        (shardplan.KeyRef(value="x"), placement.KeyType.UUID, None, "not a uuid"),
    ],
)
def test_bad_keys_are_explained(
    ref: shardplan.KeyRef,
    key_type: placement.KeyType,
    raw: tuple[list[bytes | None], list[int]] | None,
    needle: str,
) -> None:
    b = keyroute.parse_bind(bind(*raw)) if raw else None
    with pytest.raises(keyroute.BadKey, match=needle):
        keyroute.key_value(ref, key_type, b)
