"""The routing decision and the session tokens (routing/router.py, consistency/tracker.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from pgshard_proxy.consistency import tracker
from pgshard_proxy.consistency.tracker import Mode, SessionTokens
from pgshard_proxy.contract.positions import Position
from pgshard_proxy.contract.topology import Member, Shard
from pgshard_proxy.routing import router
from pgshard_proxy.routing.classify import Classified, classify
from pgshard_proxy.routing.router import Reason, Role, Route, Track

PRIMARY = Member("p", "127.0.0.1:5432", "")
F1 = Member("f1", "127.0.0.2:5432", "")
F2 = Member("f2", "127.0.0.3:5432", "")
SHARD = Shard(index=0, epoch=1, primary=PRIMARY, followers=(F1, F2))
READ = classify("SELECT * FROM t WHERE id = $1")
WRITE = classify("INSERT INTO t VALUES (1)")


def P(n: int) -> Position:
    return Position(n)


def go(
    c: Classified = READ,
    *,
    mode: Mode = Mode.SESSION,
    tokens: SessionTokens | None = None,
    replayed: Mapping[str, Position] | None = None,
    shard: Shard = SHARD,
    in_transaction: Route | None = None,
    pinned: bool = False,
    max_wait_ms: int = 100,
    seed: int = 0,
    zone: str | None = None,
) -> Route:
    return router.route(
        c,
        mode=mode,
        in_transaction=in_transaction,
        pinned=pinned,
        shard=shard,
        tokens=tokens or SessionTokens(),
        replayed={"f1": P(100), "f2": P(100)} if replayed is None else replayed,
        max_wait_ms=max_wait_ms,
        seed=seed,
        zone=zone,
    )


def test_fresh_session_reads_from_a_follower_and_seed_spreads_sessions() -> None:
    a, b = go(seed=0), go(seed=1)
    assert a.role is b.role is Role.FOLLOWER
    assert {a.member.name, b.member.name} == {"f1", "f2"}
    assert a.track is Track.FOLLOWER and a.observed == 100 and a.wait_ms == 0


def test_writes_go_to_the_primary_and_capture_its_position() -> None:
    r = go(WRITE)
    assert (r.role, r.member, r.track, r.reason) == (
        Role.PRIMARY,
        PRIMARY,
        Track.CAPTURE_PRIMARY,
        Reason.NOT_A_READ,
    )
    assert go(classify("SET search_path TO a")).track is Track.NOTHING
    assert go(classify("SELECT nextval('s')")).role is Role.PRIMARY
    assert go(classify("BEGIN")).role is Role.PRIMARY
    assert go(classify("garbage that does not parse")).role is Role.PRIMARY


def test_read_your_writes_needs_a_caught_up_follower() -> None:
    tokens = SessionTokens()
    tokens.after_write(0, P(150))
    r = go(tokens=tokens, replayed={"f1": P(100), "f2": P(200)})
    assert (r.member, r.min_position, r.wait_ms) == (F2, 150, 0)


def test_lagging_followers_are_waited_for_then_the_primary() -> None:
    tokens = SessionTokens()
    tokens.after_write(0, P(300))
    r = go(tokens=tokens, replayed={"f1": P(100), "f2": P(200)}, max_wait_ms=250)
    assert (r.role, r.member, r.reason) == (Role.FOLLOWER, F2, Reason.FOLLOWER_WAIT)
    assert (r.min_position, r.wait_ms) == (300, 250)
    assert r.on_timeout is not None
    assert (r.on_timeout.role, r.on_timeout.track) == (Role.PRIMARY, Track.CAPTURE_PRIMARY)
    no_wait = go(tokens=tokens, replayed={"f1": P(100), "f2": P(200)}, max_wait_ms=0)
    assert (no_wait.role, no_wait.reason) == (Role.PRIMARY, Reason.NO_WAIT)


def test_the_chosen_follower_is_checked_on_every_read() -> None:
    tokens = SessionTokens()
    first = go(tokens=tokens, replayed={"f1": P(100), "f2": P(90)}, seed=0)
    assert first.member == F1
    tokens.after_read(0, P(100), "f1")
    # f1 stays the session's follower even when f2 looks fine, and is checked again:
    again = go(tokens=tokens, replayed={"f1": P(120), "f2": P(500)}, seed=1)
    assert again.member == F1 and again.wait_ms == 0
    tokens.after_write(0, P(130))  # own write; f1 behind it now
    lagging = go(tokens=tokens, replayed={"f1": P(120), "f2": P(125)})
    assert lagging.reason is Reason.FOLLOWER_WAIT and lagging.min_position == 130
    # a caught-up follower is never "unstuck": each read compares with the token
    caught_up = go(tokens=tokens, replayed={"f1": P(120), "f2": P(131)})
    assert caught_up.member == F2 and caught_up.reason is Reason.FOLLOWER


def test_monotonic_reads_when_the_sticky_follower_disappears() -> None:
    tokens = SessionTokens()
    tokens.after_read(0, P(100), "f1")
    down = Shard(0, 1, PRIMARY, (Member("f1", "127.0.0.2:5432", "", state="down"), F2))
    r = go(tokens=tokens, shard=down, replayed={"f1": P(100), "f2": P(5000)})
    assert (r.role, r.reason, r.track) == (
        Role.PRIMARY,
        Reason.STICKY_FOLLOWER_GONE,
        Track.CAPTURE_PRIMARY,
    )
    # after the primary read the session's token bounds what f1 showed: f2 will do
    tokens.after_write(0, P(400))
    assert tokens.sticky_follower(0) is None
    assert go(tokens=tokens, shard=down, replayed={"f2": P(5000)}).member == F2


def test_followers_not_streaming_or_without_position_are_not_chosen() -> None:
    shard = Shard(
        0,
        1,
        PRIMARY,
        (Member("f1", "a:1", "", state="catching-up"), Member("f2", "b:1", "", state="down")),
    )
    r = go(shard=shard)
    assert (r.role, r.reason) == (Role.PRIMARY, Reason.NO_FOLLOWER)
    assert go(replayed={"f2": P(1)}).member == F2  # f1 unknown to the monitor
    assert go(replayed={}).role is Role.PRIMARY


def test_no_followers_means_primary_without_tracking() -> None:
    single = Shard(0, 1, PRIMARY)
    r = go(shard=single)
    assert (r.role, r.track) == (Role.PRIMARY, Track.NOTHING)
    assert go(WRITE, shard=single).track is Track.NOTHING


def test_transactions_stay_where_they_began() -> None:
    ro = go(classify("BEGIN READ ONLY"))
    assert ro.role is Role.FOLLOWER
    inside = go(WRITE, in_transaction=ro)  # PostgreSQL itself refuses it there
    assert (inside.member, inside.reason, inside.wait_ms) == (ro.member, Reason.IN_TRANSACTION, 0)
    rw = go(classify("BEGIN"))
    assert go(READ, in_transaction=rw).role is Role.PRIMARY
    assert go(classify("START TRANSACTION READ ONLY"), mode=Mode.STRONG).role is Role.PRIMARY


def test_pinned_sessions_use_only_the_primary() -> None:
    assert go(pinned=True).role is Role.PRIMARY
    r = go(classify("SELECT pg_advisory_lock(1)"))
    assert (r.role, r.reason, r.track) == (Role.PRIMARY, Reason.PINNED, Track.NOTHING)


def test_modes() -> None:
    tokens = SessionTokens()
    tokens.after_write(0, P(10_000))
    eventual = go(tokens=tokens, mode=Mode.EVENTUAL, replayed={"f1": P(1), "f2": P(2)})
    assert (eventual.role, eventual.wait_ms, eventual.track) == (Role.FOLLOWER, 0, Track.NOTHING)
    strong = go(mode=Mode.STRONG)
    assert (strong.role, strong.reason, strong.track) == (
        Role.PRIMARY,
        Reason.STRONG,
        Track.NOTHING,
    )
    assert go(mode=Mode.EVENTUAL, replayed={}).role is Role.PRIMARY


def test_no_primary_is_a_clear_error_unless_a_follower_can_serve() -> None:
    headless = Shard(0, 2, None, (F1,))
    with pytest.raises(router.NoPrimary, match="shard 0 has no primary"):
        go(WRITE, shard=headless)
    assert go(shard=headless, replayed={"f1": P(5)}).member == F1
    tokens = SessionTokens()
    tokens.after_write(0, P(9))
    waiting = go(shard=headless, tokens=tokens, replayed={"f1": P(5)})
    assert waiting.wait_ms > 0 and waiting.on_timeout is None


def test_tokens_only_grow() -> None:
    t = SessionTokens()
    assert t.required(0) is None
    t.after_write(0, P(50))
    t.after_write(0, P(40))
    t.after_read(0, P(30), "f1")
    assert t.required(0) == 50 and t.sticky_follower(0) == "f1"
    t.after_read(0, P(60), "f1")
    assert t.required(0) == 60
    assert t.required(1) is None and t.sticky_follower(1) is None


def test_parse_mode() -> None:
    assert tracker.parse_mode(" Eventual ") is Mode.EVENTUAL
    with pytest.raises(tracker.BadMode, match="expected one of: session, eventual, strong"):
        tracker.parse_mode("sometimes")


def test_a_failed_capture_sends_reads_to_the_primary_until_the_next_one() -> None:
    tokens = SessionTokens()
    tokens.capture_failed(0)
    r = go(tokens=tokens)
    assert (r.role, r.reason, r.track) == (
        Role.PRIMARY,
        Reason.CAPTURE_FAILED,
        Track.CAPTURE_PRIMARY,
    )
    tokens.after_write(0, P(50))
    assert go(tokens=tokens).role is Role.FOLLOWER


def test_the_rest_of_a_request_stays_on_the_follower_it_began_on_while_it_may_serve_it() -> None:
    # A Parse/Describe/Flush went to f2; the Bind is routed anew and the router now
    # picks f1 (the monitor's view changed): the rest goes to f2, with f2's position.
    to_f1 = go(tokens=None, replayed={"f1": P(100), "f2": P(90)}, seed=0)
    assert to_f1.member is F1
    stay = router.stay_on_follower(to_f1, SHARD, "f2", {"f1": P(100), "f2": P(90)})
    assert stay is not None and stay.member is F2 and stay.observed == 90
    assert stay.role is Role.FOLLOWER and stay.wait_ms == 0


def test_the_follower_a_request_began_on_is_left_when_it_may_not_serve_the_rest() -> None:
    needs_95 = Route(Role.FOLLOWER, F1, Reason.FOLLOWER, min_position=P(95), observed=P(100))
    # Behind the session's read-your-writes position, unknown to the monitor, not a member.
    assert router.stay_on_follower(needs_95, SHARD, "f2", {"f1": P(100), "f2": P(90)}) is None
    assert router.stay_on_follower(needs_95, SHARD, "f2", {"f1": P(100)}) is None
    assert router.stay_on_follower(needs_95, SHARD, "f9", {"f9": P(200)}) is None
    assert router.stay_on_follower(needs_95, SHARD, "f2", {"f2": P(95)}) is not None


def test_server_local_reads_go_to_the_primary_in_session_mode_only() -> None:
    """Issue 17: ``SHOW transaction_read_only`` and friends answer as the session's primary;
    a probe reading no table captures nothing, one reading a view does; an eventual
    session still asks a follower."""
    probe = classify("SELECT pg_is_in_recovery()")
    r = go(probe)
    assert (r.role, r.reason, r.track) == (Role.PRIMARY, Reason.SERVER_LOCAL, Track.NOTHING)
    view = classify("SELECT * FROM pg_stat_activity WHERE pid = pg_backend_pid()")
    assert go(view).track is Track.CAPTURE_PRIMARY
    assert go(probe, mode=Mode.EVENTUAL).role is Role.FOLLOWER
    assert go(probe, mode=Mode.STRONG).reason is Reason.STRONG


ZONED = Shard(
    index=0,
    epoch=1,
    primary=PRIMARY,
    followers=(
        Member("f1", "127.0.0.2:5432", "", zone="a"),
        Member("f2", "127.0.0.3:5432", "", zone="b"),
        Member("f3", "127.0.0.4:5432", "", zone="b"),
    ),
)
ALL_AT_100 = {"f1": P(100), "f2": P(100), "f3": P(100)}


@pytest.mark.parametrize("mode", [Mode.SESSION, Mode.EVENTUAL])
def test_followers_in_the_proxys_zone_come_first_whatever_the_seed(mode: Mode) -> None:
    for seed in range(6):
        assert (
            go(shard=ZONED, replayed=ALL_AT_100, seed=seed, zone="a", mode=mode).member.name == "f1"
        )
    # Several in the zone: the seed spreads sessions over them only.
    chosen = {go(shard=ZONED, replayed=ALL_AT_100, seed=s, zone="b", mode=mode).member.name
              for s in range(6)}  # fmt: skip
    assert chosen == {"f2", "f3"}
    # No follower in the zone (or no zone): every follower is a candidate.
    chosen = {go(shard=ZONED, replayed=ALL_AT_100, seed=s, zone="c", mode=mode).member.name
              for s in range(6)}  # fmt: skip
    assert chosen == {"f1", "f2", "f3"}


def test_a_same_zone_follower_behind_the_session_gives_way_to_another_zone_then_the_primary() -> (
    None
):
    tokens = SessionTokens()
    tokens.after_write(0, P(150))
    behind = {"f1": P(100), "f2": P(200), "f3": P(90)}
    r = go(shard=ZONED, tokens=tokens, replayed=behind, zone="a")
    assert (r.role, r.member.name, r.reason) == (Role.FOLLOWER, "f2", Reason.FOLLOWER)
    # Same-zone follower down: the other zone's.
    down = dataclasses.replace(ZONED, followers=(
        dataclasses.replace(ZONED.followers[0], state="down"), *ZONED.followers[1:]))  # fmt: skip
    assert go(shard=down, replayed=ALL_AT_100, zone="a").member.name in ("f2", "f3")
    # Every follower behind and no waiting: the primary.
    r = go(shard=ZONED, tokens=tokens, replayed=ALL_AT_100, zone="a", max_wait_ms=0)
    assert (r.role, r.reason) == (Role.PRIMARY, Reason.NO_WAIT)
    # Waiting: for the most advanced one, the same-zone one among equals.
    r = go(shard=ZONED, tokens=tokens, replayed={"f1": P(120), "f2": P(120), "f3": P(90)},
           zone="a")  # fmt: skip
    assert (r.member.name, r.reason, r.on_timeout and r.on_timeout.member.name) == (
        "f1", Reason.FOLLOWER_WAIT, "p")  # fmt: skip


def test_a_session_stays_on_its_follower_until_it_writes_then_prefers_its_zone_again() -> None:
    tokens = SessionTokens()
    tokens.after_write(0, P(150))
    first = go(shard=ZONED, tokens=tokens, replayed={"f1": P(100), "f2": P(200), "f3": P(90)},
               zone="a")  # fmt: skip
    tokens.after_read(0, first.observed or P(0), first.member.name)
    caught_up = {"f1": P(300), "f2": P(300), "f3": P(300)}
    assert go(shard=ZONED, tokens=tokens, replayed=caught_up, zone="a").member.name == "f2"
    tokens.after_write(0, P(250))
    for seed in range(3):
        assert (
            go(shard=ZONED, tokens=tokens, replayed=caught_up, zone="a", seed=seed).member.name
            == "f1"
        )
