"""The primary lease as a coordination.k8s.io Lease object (pure mapping)."""

from __future__ import annotations

from pgshard_operator.k8s import lease as kube_lease
from pgshard_operator.shard import state

NOW = 1_800_000_000.25


def test_round_trip_keeps_holder_epoch_and_expiry() -> None:
    held = state.Lease("c-shard-0-1", 4, NOW + 10)
    obj = kube_lease.to_object(
        "ns", "c-shard-0-primary", held, 10, renewed_at=NOW, transitions=3, resource_version="42"
    )
    assert obj["spec"]["holderIdentity"] == "c-shard-0-1"
    assert obj["spec"]["leaseDurationSeconds"] == 10
    assert obj["spec"]["renewTime"] == "2027-01-15T08:00:00.250000Z"
    assert obj["metadata"]["resourceVersion"] == "42"
    record = kube_lease.from_object(obj)
    assert record == kube_lease.LeaseRecord(held, "42", 3)


def test_fractional_ttl_is_rounded_up_never_down() -> None:
    held = state.Lease("m", 1, NOW + 2.5)
    obj = kube_lease.to_object("ns", "l", held, 2.5, renewed_at=NOW, transitions=0,
                               resource_version=None)  # fmt: skip
    assert obj["spec"]["leaseDurationSeconds"] == 3
    assert "resourceVersion" not in obj["metadata"]


def test_released_and_missing_leases_are_free() -> None:
    released = kube_lease.to_object("ns", "l", None, 0, renewed_at=NOW, transitions=2,
                                    resource_version="7")  # fmt: skip
    assert "holderIdentity" not in released["spec"]
    assert kube_lease.from_object(released) == kube_lease.LeaseRecord(None, "7", 2)
    assert kube_lease.from_object(None) == kube_lease.LeaseRecord(None, None)


def test_agent_view_of_the_lease() -> None:
    from pgshard_operator.instance import lease as agent_lease

    assert kube_lease.to_agent_lease(None) == agent_lease.FREE
    seen = kube_lease.to_agent_lease(state.Lease("m1", 3, NOW + 10))
    assert (seen.holder, seen.epoch, seen.expires_at) == ("m1", 3, NOW + 10)
    assert agent_lease.classify(seen, "m1", NOW) is agent_lease.LeaseView.MINE
    assert agent_lease.classify(seen, "m2", NOW + 10) is agent_lease.LeaseView.OTHERS_EXPIRED
