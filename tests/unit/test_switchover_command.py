"""``pgshard switchover``: flag checks, how ``--kube`` reads the operator's answer (pure),
and how it retries its request on a conflict (an in-memory API)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
from typing import Any

import pytest

from pgshard_operator import cli
from pgshard_operator.cli import CommandError
from pgshard_operator.k8s import switchover_request as sr
from pgshard_operator.k8s.apply import ApiError

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


class ChangingCluster:
    """An API whose object changes (a status write) between each read and the request's
    conditional patch ``conflicts`` times: the patch gets 409 as from the API server."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.version = 1
        self.annotations: dict[str, str] = {}

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, object]:
        meta = {"resourceVersion": str(self.version), "annotations": dict(self.annotations),
                "uid": "u"}  # fmt: skip
        return {"metadata": meta, "spec": {"shards": 2}, "status": cluster(3)["status"]}

    async def merge_patch(self, kind: str, ns: str, name: str, patch: dict[str, Any]) -> None:
        if self.conflicts:
            self.conflicts -= 1
            self.version += 1
        if patch["metadata"]["resourceVersion"] != str(self.version):
            raise ApiError(409, "the object has been modified")
        self.annotations.update(patch["metadata"]["annotations"])
        self.version += 1

    async def list(self, *args: object) -> list[object]:
        return []


def _request(api: ChangingCluster) -> sr.Outcome:
    args = argparse.Namespace(cluster="c", shard=1, to=None, timeout=0.0)
    return asyncio.run(sr.request(api, args, "ns"))  # type: ignore[arg-type]


def test_a_cluster_changed_between_read_and_request_is_read_again() -> None:
    api = ChangingCluster(conflicts=3)
    outcome = _request(api)  # no time to wait for an outcome: the request is withdrawn
    assert "did not take the request up" in outcome.message
    assert api.conflicts == 0


def test_a_cluster_that_keeps_changing_is_an_error_not_a_hang() -> None:
    api = ChangingCluster(conflicts=sr.ANNOTATE_ATTEMPTS)
    with pytest.raises(CommandError, match="kept changing"):
        _request(api)
    assert api.annotations == {}
