"""COPY … FROM STDIN data cut into rows by shard, whatever the client's chunking."""

from __future__ import annotations

import random
import struct

import pytest

from pgshard_proxy.contract import placement, topology
from pgshard_proxy.routing import copysplit

SHARDS = tuple(
    topology.Shard(index=i, epoch=1, primary=None, hash_range=r)
    for i, r in enumerate(topology.hash_ranges(3))
)
INT = placement.KeyType.INTEGER
TEXT = placement.KeyType.TEXT


def shard(value: object, key_type: placement.KeyType = INT) -> int:
    return placement.shard_of(placement.reduce(placement.hash_key(value, key_type)), SHARDS)


def split(splitter: copysplit.Splitter, data: bytes, seed: int) -> dict[int, bytes]:
    rng = random.Random(seed)
    out: dict[int, bytearray] = {}
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 7)
        for k, v in splitter.feed(data[pos : pos + n]).items():
            out.setdefault(k, bytearray()).extend(v)
        pos += n
    for k, v in splitter.finish().items():
        out.setdefault(k, bytearray()).extend(v)
    return {k: bytes(v) for k, v in out.items()}


def test_statements_give_table_columns_and_format() -> None:
    st = copysplit.parse(
        "copy Public.Orders (id, \"Key\") from stdin with (format csv, header true, delimiter ';')"
    )
    assert st is not None and st.from_stdin
    assert (st.table, st.columns) == ("public.orders", ("id", "Key"))
    assert st.format == copysplit.CopyFormat("csv", ";", "", '"', '"', True)
    old = copysplit.parse("COPY t FROM STDIN CSV HEADER NULL AS 'x' QUOTE '''' ")
    assert old is not None and old.format.null == "x" and old.format.quote == "'"
    assert copysplit.parse("COPY t FROM STDIN (FORMAT binary)").format.kind == "binary"  # type: ignore[union-attr]
    assert not copysplit.parse("COPY t TO STDOUT").from_stdin  # type: ignore[union-attr]
    assert copysplit.parse("SELECT 1") is None


@pytest.mark.parametrize("seed", range(5))
def test_text_rows_go_to_their_keys_shards(seed: int) -> None:
    rows = [f"{k}\tnote {k}\\twith\\\\tab\n".encode() for k in range(1, 60)]
    splitter = copysplit.Splitter(copysplit.CopyFormat(), 0, INT, SHARDS)
    got = split(splitter, b"".join(rows) + b"\\.\nignored\n", seed)
    for s in range(3):
        assert got.get(s, b"") == b"".join(r for k, r in enumerate(rows, 1) if shard(k) == s)
    assert splitter.rows == 59


@pytest.mark.parametrize("seed", range(5))
def test_csv_with_header_quotes_and_newlines(seed: int) -> None:
    header = b"note,key\n"
    keys = ["a", 'b"q', "c,d", "e\nf", "", "g"]
    rows = [('"x\ny",' + '"' + k.replace('"', '""') + '"' + "\r\n").encode() for k in keys]
    fmt = copysplit.CopyFormat("csv", ",", "", '"', '"', True)
    got = split(copysplit.Splitter(fmt, 1, TEXT, SHARDS), header + b"".join(rows), seed)
    for s in range(3):
        want = header + b"".join(r for k, r in zip(keys, rows, strict=True) if shard(k, TEXT) == s)
        assert got[s] == want


@pytest.mark.parametrize("seed", range(5))
def test_binary_rows_header_and_trailer(seed: int) -> None:
    head = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
    rows = [struct.pack("!hi", 2, 4) + b"abcd" + struct.pack("!iq", 8, k) for k in range(1, 40)]
    trailer = struct.pack("!h", -1)
    got = split(copysplit.Splitter(copysplit.CopyFormat("binary"), 1, INT, SHARDS),
                head + b"".join(rows) + trailer, seed)  # fmt: skip
    for s in range(3):
        mine = b"".join(r for k, r in enumerate(rows, 1) if shard(k) == s)
        assert got[s] == head + mine + trailer


def test_a_bad_key_is_named() -> None:
    splitter = copysplit.Splitter(copysplit.CopyFormat(), 0, INT, SHARDS)
    with pytest.raises(copysplit.CopyError, match=r"row 2.*not an integer"):
        splitter.feed(b"1\tx\nabc\ty\n")


def test_parse_query_finds_the_query_and_options() -> None:
    q = copysplit.parse_query(
        "COPY (SELECT f(a, (b)) FROM t WHERE x IN (1, 2)) TO STDOUT (FORMAT csv)"
    )
    assert q is not None and q.query == "SELECT f(a, (b)) FROM t WHERE x IN (1, 2)"
    assert q.format.kind == "csv" and not q.problem
    assert copysplit.parse_query("COPY t TO STDOUT") is None
    assert copysplit.parse_query("COPY (SELECT 1) TO '/tmp/f'") is None
    assert copysplit.parse_query("COPY (SELECT 1 TO STDOUT") is None
