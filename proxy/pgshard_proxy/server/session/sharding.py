"""Which shards a request goes to: its statement's shard plan and its key values.

Used by the request loop (``requests.py``) for every request that servers answer.
With no distributed table in the topology (or one shard), every request goes to
shard 0, as before sharding. Otherwise the statement's plan
(``routing.shardplan``, cached by text) and its key values (literals, or the Bind's
parameters, ``routing.keyroute``) give a :class:`Target`: one shard, a scatter
read, a DDL broadcast, or a refusal. Placing a key needs the key column's type:
learned once per table from shard 0's catalogue (:class:`KeyTypes`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re

from ...contract import placement, topology
from ...execute.keytypes import KeyTypes
from ...routing import copysplit, keyroute, rowsplit, shardplan
from ...routing.classify import Refusal


class Kind(enum.Enum):
    ONE = "one shard's server"
    SCATTER = "a read on several shards, merged"
    BROADCAST = "DDL on every shard's primary"
    SPLIT = "an INSERT whose rows fall on several shards, one INSERT per shard"
    COPY_IN = "COPY FROM STDIN into a distributed table, its rows split by key"
    COPY_OUT = "COPY TO STDOUT of a distributed table, every shard's rows gathered"
    REFUSE = "refused"
    KEY_TYPE = "the key column's type must be learned first"


@dataclasses.dataclass(frozen=True)
class Target:
    kind: Kind
    shard: int = 0
    shards: tuple[int, ...] = ()
    """SCATTER: the shards to read."""
    plan: shardplan.Plan | None = None
    refusal: Refusal | None = None
    table: str | None = None
    """KEY_TYPE: the distributed table whose key type is needed."""
    anywhere: bool = False
    """ONE: no table is involved; the open transaction's shard will do."""
    constant: bool = False
    """ONE, ``anywhere``: a SELECT of constants, which need not choose the shard of a
    transaction whose BEGIN waits for its first statement (``plan.scatter`` runs it)."""
    parts: tuple[rowsplit.ShardInsert, ...] = ()
    """SPLIT: each shard's INSERT (``shards`` lists their shards)."""
    copy: copysplit.CopyStatement | None = None
    key_type: placement.KeyType | None = None
    """COPY_IN: the key column's type and its place among the copied columns."""
    key_index: int = 0


SHARD_0 = Target(Kind.ONE)
ANYWHERE = Target(Kind.ONE, anywhere=True)


@functools.lru_cache(maxsize=4096)
def plan_of(sql: str, tables: tuple[tuple[str, str], ...]) -> shardplan.Plan:
    return shardplan.plan(sql, tables)


def _refuse(message: str, hint: str) -> Target:
    return Target(Kind.REFUSE, refusal=Refusal(shardplan.FEATURE_NOT_SUPPORTED, message, hint))


def _split(
    sql: str,
    p: shardplan.Plan,
    key_type: placement.KeyType,
    bind: keyroute.BindValues | None,
    topo: topology.Topology,
) -> Target:
    """A multi-row INSERT whose rows fall on several shards: one INSERT per shard."""
    try:
        parts = rowsplit.split(sql, keyroute.shard_of_each(p.keys, key_type, bind, topo.shards))
    except rowsplit.CannotSplit as e:
        return _refuse(
            f"{e}: the rows of this INSERT into {p.table} fall on several shards and it "
            "cannot be split by rows",
            "insert the rows of each shard in their own statement",
        )
    return Target(Kind.SPLIT, shards=tuple(x.shard for x in parts), plan=p, parts=tuple(parts))


@functools.lru_cache(maxsize=256)
def copy_of(sql: str) -> copysplit.CopyStatement | None:
    return copysplit.parse(sql)


def _copy(
    sql: str, topo: topology.Topology, key_types: KeyTypes, tried: frozenset[str]
) -> Target | None:
    """``COPY distributed FROM STDIN``: split by key; None for any other statement."""
    st = copy_of(sql)
    if st is None or not (st.from_stdin or st.to_stdout):
        return None  # COPY (query) TO (planned, refused), files, or not a COPY at all
    table = next(
        (t for t in topo.tables if st.table in (t.name.lower(), f"public.{t.name.lower()}")),
        None,
    )
    if table is None:
        return None
    if st.problem:
        return _refuse(f"COPY of distributed table {table.name}: {st.problem}", _COPY_HINT)
    if st.to_stdout:
        if st.format.kind == "binary" or st.format.header:
            return _refuse(
                f"COPY {table.name} TO STDOUT in binary format or with HEADER is not "
                "supported on a distributed table (each shard would send its own)",
                "copy in text or CSV format without HEADER",
            )
        return Target(Kind.COPY_OUT, shards=tuple(s.index for s in topo.shards), table=table.name)
    key = table.key.lower()
    if st.columns is not None and key not in st.columns:
        return _refuse(
            f"COPY into distributed table {table.name} must include its shard key column {key}",
            f"list the columns: COPY {table.name} ({key}, …) FROM STDIN",
        )
    key_type = key_types.types.get(table.name)
    if key_type is None:
        if table.name not in tried:
            return Target(Kind.KEY_TYPE, table=table.name)
        return SHARD_0  # the table does not exist (yet): PostgreSQL says so
    index = st.columns.index(key) if st.columns is not None else key_types.positions[table.name]
    return Target(
        Kind.COPY_IN,
        shards=tuple(s.index for s in topo.shards),
        table=table.name,
        copy=st,
        key_type=key_type,
        key_index=index,
    )


_COPY_HINT = "COPY in text, CSV or binary format, UTF-8 encoded"


_EXPLAIN = re.compile(
    r"\s*EXPLAIN\s+(?:\((?:[^()]|\([^()]*\))*\)\s*|(?:(?:ANALYZE|ANALYSE|VERBOSE)\s+)*)",
    re.IGNORECASE,
)


def _explain(
    sql: str,
    bind: keyroute.BindValues | None,
    topo: topology.Topology,
    key_types: KeyTypes,
    tried: frozenset[str],
) -> Target:
    """``EXPLAIN [options] statement``: where the statement would go, if that is one
    shard; a statement on several shards is refused naming them (the plans of several
    servers and the proxy's merge are not one PostgreSQL plan)."""
    match = _EXPLAIN.match(sql)
    assert match is not None
    inner = _unchanged(target(sql[match.end() :], bind, topo, key_types, tried))
    if inner.kind in (Kind.ONE, Kind.REFUSE, Kind.KEY_TYPE):
        return inner
    shards = ", ".join(str(s) for s in inner.shards or (s.index for s in topo.shards))
    return _refuse(
        f"EXPLAIN of a statement that runs on shards {shards} ({inner.kind.value}) is not "
        "supported: each shard has its own plan",
        "EXPLAIN it with a shard key condition (WHERE <key> = value) to see one shard's plan",
    )


def _unchanged(inner: Target) -> Target:
    """The target of a statement inside another (EXPLAIN, COPY): run as the client sent
    it, not as its inner SELECT of constants would be run (``constant``)."""
    return dataclasses.replace(inner, constant=False) if inner.constant else inner


def _copy_query(
    sql: str, topo: topology.Topology, key_types: KeyTypes, tried: frozenset[str]
) -> Target | None:
    """``COPY (query) TO STDOUT``: the query's shard, or every shard's rows gathered when
    they need no merge; None when ``sql`` is not such a COPY."""
    st = copysplit.parse_query(sql)
    if st is None:
        return None
    inner = _unchanged(target(st.query, None, topo, key_types, tried))
    if inner.kind is not Kind.SCATTER:
        if inner.kind in (Kind.ONE, Kind.REFUSE, Kind.KEY_TYPE):
            return inner
        return _refuse("COPY (query) TO STDOUT: the query must be a read", "COPY a SELECT")
    sp = inner.plan.scatter if inner.plan is not None else None
    merged = sp is None or bool(
        sp.hidden or sp.order_by or sp.limit is not None or sp.offset or sp.distinct
    )
    if merged or (sp is not None and sp.grouping is not None):
        return _refuse(
            "COPY (SELECT …) TO STDOUT of a query over several shards whose rows the proxy "
            "must merge (ORDER BY, LIMIT/OFFSET, DISTINCT, aggregates) is not supported",
            "run the SELECT itself (the proxy merges it), or COPY a query without ORDER BY, "
            "LIMIT, DISTINCT and aggregates, or give it the shard key",
        )
    if st.problem or st.format.kind == "binary" or st.format.header:
        return _refuse(
            "COPY (SELECT …) TO STDOUT over several shards is gathered in text or CSV "
            f"format without HEADER only{': ' + st.problem if st.problem else ''}",
            "copy in text or CSV format without HEADER",
        )
    return Target(Kind.COPY_OUT, shards=inner.shards)


def target(
    sql: str,
    bind: keyroute.BindValues | None,
    topo: topology.Topology | None,
    key_types: KeyTypes,
    tried: frozenset[str] = frozenset(),
) -> Target:
    """Where ``sql`` goes; ``tried``: tables whose key type was looked up already."""
    if topo is None or len(topo.shards) < 2 or not topo.tables:
        return SHARD_0
    if sql.lstrip()[:7].upper() == "EXPLAIN":
        return _explain(sql, bind, topo, key_types, tried)
    if sql.lstrip()[:4].upper() == "COPY":
        found = _copy(sql, topo, key_types, tried) or _copy_query(sql, topo, key_types, tried)
        if found is not None:
            return found
    p = plan_of(sql, tuple((t.name, t.key) for t in topo.tables))
    match p.kind:
        case shardplan.PlanKind.HOME:
            if p.constant:
                return Target(Kind.ONE, anywhere=True, constant=True, plan=p)
            return ANYWHERE if p.anywhere else SHARD_0
        case shardplan.PlanKind.BROADCAST:
            return Target(Kind.BROADCAST, plan=p)
        case shardplan.PlanKind.REFUSE:
            return Target(Kind.REFUSE, refusal=p.refusal)
        case shardplan.PlanKind.SCATTER:
            return Target(Kind.SCATTER, shards=tuple(s.index for s in topo.shards), plan=p)
    assert p.table is not None
    key_type = key_types.types.get(p.table)
    if key_type is None:
        if p.table not in tried:
            return Target(Kind.KEY_TYPE, table=p.table)
        return SHARD_0  # the table does not exist (yet): PostgreSQL says so
    try:
        shards = keyroute.shards_for(p.keys, key_type, bind, topo.shards)
    except (keyroute.BadKey, ValueError) as e:
        return _refuse(f"cannot place the shard key: {e}", "pass a valid key value")
    if len(shards) == 1:
        return Target(Kind.ONE, shard=shards[0], plan=p)
    if p.rows:
        return _split(sql, p, key_type, bind, topo)
    if p.writes or p.scatter is None:
        return _refuse(
            f"a write to {p.table} whose keys fall on several shards ({len(shards)}) is not "
            "supported (a write stays on one shard)",
            "send one statement per shard key",
        )
    return Target(Kind.SCATTER, shards=shards, plan=p)
