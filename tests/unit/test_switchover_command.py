"""``pgshard switchover``: flag checks, and how ``--kube`` reads the operator's answer (pure)."""

from __future__ import annotations

import datetime

import pytest

from pgshard_operator import cli
from pgshard_operator.k8s import switchover_request as sr

SINCE = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=datetime.UTC)


def cluster(epoch: int, last: dict[str, object] | None = None) -> dict[str, object]:
    entry: dict[str, object] = {"index": 1, "epoch": epoch}
    if last:
        entry["lastFailover"] = last
    return {"status": {"shards": [{"index": 0, "epoch": 9}, entry]}}


def event(message: str, at: str, reason: str = "ActionFailed") -> dict[str, object]:
    return {"reason": reason, "message": message, "lastTimestamp": at}


def test_no_outcome_while_nothing_happened() -> None:
    old_refusal = event("shard 1: switchover refused: x", "2026-11-29T11:59:59Z")
    other_shard = event("shard 0: switchover refused: x", "2026-11-29T12:00:05Z")
    assert sr.outcome(cluster(3), [old_refusal, other_shard], 1, 3, SINCE) is None


def test_a_new_epoch_from_a_switchover_is_success() -> None:
    last = {"kind": "switchover", "from": "c_shard_1_0", "to": "c_shard_1_2", "epoch": 4}
    result = sr.outcome(cluster(4, last), [], 1, 3, SINCE)
    assert result == sr.Outcome(
        True, "shard 1: switched over from c-shard-1-0 to c-shard-1-2, epoch 4"
    )


def test_a_failover_in_between_is_reported_as_such() -> None:
    last = {"kind": "failover", "from": "c_shard_1_0", "to": "c_shard_1_1", "reason": "gone"}
    result = sr.outcome(cluster(4, last), [], 1, 3, SINCE)
    assert result is not None and not result.ok
    assert "failed over from c-shard-1-0 to c-shard-1-1 instead (gone)" in result.message


def test_a_refusal_event_of_this_shard_since_the_request_is_the_answer() -> None:
    refusal = event("shard 1: switchover refused or failed: lag", "2026-11-29T12:00:00Z")
    other = event("shard 1: promoted", "2026-11-29T12:00:01Z", reason="Promoted")
    result = sr.outcome(cluster(3), [other, refusal], 1, 3, SINCE)
    assert result == sr.Outcome(False, "shard 1: switchover refused or failed: lag")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["switchover", "--kube", "--shard", "0"], "--kube needs --cluster NAME"),
        (
            ["switchover", "--dir", "/nonexistent", "--cluster", "c", "--shard", "0"],
            "go with --kube",
        ),
    ],
)
def test_flag_mistakes_are_explained(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 1
    assert words in capsys.readouterr().err


def test_dir_and_kube_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["switchover", "--dir", "d", "--kube", "--shard", "0"])
    assert "not allowed with argument" in capsys.readouterr().err
