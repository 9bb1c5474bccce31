"""Turning the probe's row into an observation, and reading primary_conninfo."""

import json

import pytest

from pgshard_operator.shard import observe, state


def test_primary_row() -> None:
    row = {
        "in_recovery": False,
        "current_lsn": "0/3000148",
        "received_lsn": None,
        "replayed_lsn": None,
        "timeline": 2,
        "primary_conninfo": "",
        "sync_standby_names": "ANY 1 (a, b)",
        "replicas": json.dumps(
            [
                {
                    "name": "a",
                    "state": "streaming",
                    "flush": "0/3000148",
                    "replay": "0/3000100",
                    "sync": "quorum",
                }
            ]
        ),
    }
    obs = observe.from_row("p", state.ProcessState.ALIVE, row)
    assert obs.ok and obs.in_recovery is False
    assert obs.position == obs.current_lsn == 0x3000148
    assert obs.timeline == 2
    assert obs.sync_standby_names == "ANY 1 (a, b)"
    assert obs.replicas == (
        state.ReplicaStat(
            "a",
            "streaming",
            state.positions.Position(0x3000148),
            state.positions.Position(0x3000100),
            "quorum",
        ),
    )
    assert obs.upstream is None


def test_follower_row() -> None:
    row = {
        "in_recovery": True,
        "current_lsn": None,
        "received_lsn": "1/10",
        "replayed_lsn": "1/8",
        "timeline": 1,
        "primary_conninfo": "user=replicator host=127.0.0.5 port=5433 application_name=a",
        "sync_standby_names": "",
        "replicas": "[]",
    }
    obs = observe.from_row("a", state.ProcessState.UNKNOWN, row)
    assert obs.in_recovery is True
    assert obs.received_lsn == (1 << 32) + 0x10
    assert obs.position == obs.received_lsn
    assert obs.replayed_lsn == (1 << 32) + 8
    assert obs.upstream == "127.0.0.5:5433"
    assert obs.sync_standby_names is None


@pytest.mark.parametrize(
    ("conninfo", "address"),
    [
        ("host=h port=1", "h:1"),
        ("hostaddr=10.0.0.1 port = 7 user=x", "10.0.0.1:7"),
        ("host='my host' password='a b\\'c' port=9", "my host:9"),
        ("host=only", "only:5432"),
        (
            "host='127.0.0.5' port=5433 user='rep' password='p\\'w x' "
            "application_name='a' connect_timeout=2",
            "127.0.0.5:5433",
        ),
        ("user=x", None),
        ("", None),
        (None, None),
    ],
)
def test_conninfo_address(conninfo: str | None, address: str | None) -> None:
    assert observe.conninfo_address(conninfo) == address


def test_statement_mode_rows_give_log_positions_and_the_upstream_setting() -> None:
    follower = observe.from_statement_row(
        "f", state.ProcessState.ALIVE, {"in_recovery": True, "seq": 41, "upstream": "h:1"}
    )
    assert follower.in_recovery is True
    assert follower.replayed_lsn == follower.received_lsn == follower.position == 41
    assert follower.upstream == "h:1" and follower.current_lsn is None
    primary = observe.from_statement_row(
        "p", state.ProcessState.ALIVE, {"in_recovery": False, "seq": 42, "upstream": None}
    )
    assert primary.in_recovery is False and primary.current_lsn == primary.position == 42
    assert primary.sync_standby_names is None  # no synchronous_standby_names to manage
