"""Property: sessions that follow the router never see a read-your-writes or monotonic-read
violation, whatever the followers' replay and the monitor's (stale) view of it do.

A pure model of one shard: the primary is a log of register writes (position =
log length); each follower has replayed a prefix of it (only growing) and may be
down; the monitor's view of a follower lags behind its real replay. Sessions
write and read through :func:`router.route` and :class:`SessionTokens` exactly as
the proxy's session does (``consistency/session.py``), and every recorded history
goes through the same checker as the end-to-end test.
"""

from __future__ import annotations

import dataclasses

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pgshard_proxy.consistency.tracker import Mode, SessionTokens
from pgshard_proxy.contract.positions import Position
from pgshard_proxy.contract.topology import Member, Shard
from pgshard_proxy.routing import router
from pgshard_proxy.routing.classify import Classified, classify
from pgshard_proxy.routing.router import Role, Track
from tests.support.history import Op, OpKind, check

FOLLOWERS = ("f1", "f2")
KEYS = 2
READ = classify("SELECT v FROM kv WHERE k = $1")
WRITE = classify("UPDATE kv SET v = v + 1 WHERE k = $1 RETURNING v")


@dataclasses.dataclass
class Cluster:
    log: list[int] = dataclasses.field(default_factory=list)
    """Keys written, in commit order; position n = the first n writes applied."""
    replayed: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(FOLLOWERS, 0)
    )
    seen_by_monitor: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(FOLLOWERS, 0)
    )
    down: set[str] = dataclasses.field(default_factory=set)

    def value(self, key: int, position: int) -> int:
        return self.log[:position].count(key)

    def shard(self) -> Shard:
        followers = tuple(
            Member(f, f"{f}:5432", "", state="down" if f in self.down else "streaming")
            for f in FOLLOWERS
        )
        return Shard(0, 1, Member("p", "p:5432", ""), followers)


action = st.one_of(
    st.tuples(st.just("replay"), st.sampled_from(FOLLOWERS), st.integers(1, 5)),
    st.tuples(st.just("monitor"), st.sampled_from(FOLLOWERS), st.just(0)),
    st.tuples(st.just("toggle"), st.sampled_from(FOLLOWERS), st.just(0)),
    st.tuples(st.just("write"), st.integers(0, 1), st.integers(0, KEYS - 1)),
    st.tuples(st.just("read"), st.integers(0, 1), st.integers(0, KEYS - 1)),
)


def run(actions: list[tuple[str, object, int]], mode: Mode, max_wait_ms: int) -> list[Op]:
    c = Cluster()
    tokens = [SessionTokens() for _ in range(2)]
    ops: list[Op] = []
    for kind, who, n in actions:
        if kind == "replay":  # the follower applies more of the primary's log
            f = str(who)
            c.replayed[f] = min(len(c.log), c.replayed[f] + n)
        elif kind == "monitor":  # the monitor polls it
            c.seen_by_monitor[str(who)] = c.replayed[str(who)]
        elif kind == "toggle":
            c.down ^= {str(who)}
        elif kind == "write":
            s = int(str(who))
            r = route(c, WRITE, mode, tokens[s], max_wait_ms)
            assert r.role is Role.PRIMARY
            c.log.append(n)
            ops.append(Op(str(s), len(ops), OpKind.WRITE, n, c.value(n, len(c.log))))
            if r.track is Track.CAPTURE_PRIMARY:
                tokens[s].after_write(0, Position(len(c.log)))
        else:
            s = int(str(who))
            r = route(c, READ, mode, tokens[s], max_wait_ms)
            if r.role is Role.FOLLOWER and r.wait_ms > 0:
                assert r.min_position is not None
                if c.replayed[r.member.name] >= r.min_position:  # caught up while waiting
                    c.seen_by_monitor[r.member.name] = c.replayed[r.member.name]
                else:
                    assert r.on_timeout is not None
                    r = r.on_timeout
            at = len(c.log) if r.role is Role.PRIMARY else c.replayed[r.member.name]
            ops.append(Op(str(s), len(ops), OpKind.READ, n, c.value(n, at)))
            if r.track is Track.FOLLOWER:
                assert r.observed is not None and r.observed <= at
                tokens[s].after_read(0, r.observed, r.member.name)
            elif r.track is Track.CAPTURE_PRIMARY:
                tokens[s].after_write(0, Position(len(c.log)))
    return ops


def route(
    c: Cluster, stmt: Classified, mode: Mode, tokens: SessionTokens, max_wait: int
) -> router.Route:
    return router.route(
        stmt,
        mode=mode,
        in_transaction=None,
        pinned=False,
        shard=c.shard(),
        tokens=tokens,
        replayed={f: Position(p) for f, p in c.seen_by_monitor.items()},
        max_wait_ms=max_wait,
    )


# Session 0 reads session 1's write on f1 (the monitor still thinks f1 is at 0), then f1
# goes down: f2 (really at 0) must not serve the next read — only stickiness knows.
SWITCH_AFTER_A_FRESH_READ = [
    ("write", 1, 0),
    ("replay", "f1", 1),
    ("read", 0, 0),
    ("toggle", "f1", 0),
    ("read", 0, 0),
]

# Session 0's read times out and goes to the primary, seeing session 1's newer write;
# f1 then reaches only session 0's own write: the primary read's position must count.
PRIMARY_READ_THEN_FOLLOWER = [
    ("write", 0, 0),
    ("write", 1, 0),
    ("read", 0, 0),
    ("replay", "f1", 1),
    ("monitor", "f1", 0),
    ("read", 0, 0),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=60), st.sampled_from([0, 100]))
@example(SWITCH_AFTER_A_FRESH_READ, 100)
@example(PRIMARY_READ_THEN_FOLLOWER, 100)
def test_session_mode_never_violates(actions: list[tuple[str, object, int]], wait: int) -> None:
    assert check(run(actions, Mode.SESSION, wait)) == []


def test_the_model_can_fail_in_eventual_mode() -> None:
    # f1 streams but replays nothing: the session's own write is invisible there
    ops = run([("write", 0, 1), ("read", 0, 1)], Mode.EVENTUAL, 100)
    assert [v.guarantee.value for v in check(ops)] == ["read-your-writes"]
