"""The Kubernetes platform's pure mapping: pods -> members, status entry <-> shard record."""

from __future__ import annotations

import dataclasses

from pgshard_operator.instance.credentials import Credentials
from pgshard_operator.platform import base
from pgshard_operator.platform import kubernetes as kp
from pgshard_operator.shard import state
from pgshard_proxy.contract import topology

CREDS = Credentials(
    superuser_password="su",
    replication_user="replicator",
    replication_password="r",
    app_user="app",
    app_password="a",
    app_database="app",
)
RANGE = topology.hash_ranges(2)[1]


def _pod(name: str, ip: str | None, role: str | None = None, **extra: object) -> kp.PodState:
    obj = {"metadata": {"name": name}, "status": {"podIP": ip} if ip else {}}
    agent = {"role": role, "pgRunning": True, **extra} if role else None
    return kp.pod_state(name, obj, agent)


def test_process_state() -> None:
    # No pod object: deleted, maybe forcibly or on a lost node: its processes may still
    # run, so its Lease is honoured (REPLACED), never skipped (GONE).
    absent = kp.pod_state("c-shard-1-0", None, None)
    assert kp.process_state(absent) is state.ProcessState.REPLACED
    assert kp.process_state(_pod("p", "10.0.0.1")) is state.ProcessState.UNKNOWN
    assert kp.process_state(_pod("p", "10.0.0.1", "primary")) is state.ProcessState.ALIVE
    held = _pod("p", "10.0.0.1", "stale", pgRunning=False)
    assert kp.process_state(held) is state.ProcessState.GONE
    # A terminating pod may still run PostgreSQL: not gone, but going (no detection wait).
    obj = {"metadata": {"name": "p", "deletionTimestamp": "x"}, "status": {"podIP": "10.0.0.1"}}
    terminating = kp.pod_state("p", obj, {"role": "primary", "pgRunning": True})
    assert kp.process_state(terminating) is state.ProcessState.STOPPING
    assert kp.process_state(kp.pod_state("p", obj, None)) is state.ProcessState.STOPPING
    # Created again (another UID than the one it served in), its agent not up yet.
    new = {"metadata": {"name": "p", "uid": "u2"}, "status": {"podIP": "10.0.0.1"}}
    assert kp.process_state(kp.pod_state("p", new, None), "u1") is state.ProcessState.REPLACED
    assert kp.process_state(kp.pod_state("p", new, None), "u2") is state.ProcessState.UNKNOWN
    assert kp.process_state(kp.pod_state("p", new, None), None) is state.ProcessState.UNKNOWN
    answering = kp.pod_state("p", new, {"role": "follower", "pgRunning": True})
    assert kp.process_state(answering, "u1") is state.ProcessState.ALIVE


def test_members_keep_ordinals_and_last_known_addresses() -> None:
    record = topology.Shard(
        index=1,
        epoch=3,
        primary=topology.Member("c_shard_1_0", "10.0.0.7:5432", ""),
        hash_range=RANGE,
    )
    pods = [
        kp.pod_state("c-shard-1-0", None, None),
        _pod("c-shard-1-1", "10.0.0.8", "follower"),
        _pod("c-shard-1-2", None),
        _pod("c-shard-1-3", "10.0.0.9", "bootstrapping"),
    ]
    infos = kp.members("c", "ns", 1, pods, record, CREDS)
    assert [m.name for m in infos] == ["c_shard_1_0", "c_shard_1_1", "c_shard_1_2", "c_shard_1_3"]
    assert [m.address for m in infos] == [
        "10.0.0.7:5432",  # its pod is gone: where it was
        "10.0.0.8:5432",
        "c-shard-1-2.c-shard-1.ns.svc:5432",  # never had an address
        "10.0.0.9:5432",
    ]
    assert infos[1].dsn == "postgresql://postgres:su@10.0.0.8:5432/postgres"
    assert [m.bootstrapping for m in infos] == [False, False, False, True]
    assert infos[0].process is state.ProcessState.REPLACED


def _manager_record() -> topology.Shard:
    def member(name: str, ip: str, **kw: object) -> topology.Member:
        address = f"{ip}:5432"
        return topology.Member(name, address, CREDS.superuser_dsn(address), **kw)  # type: ignore[arg-type]

    return topology.Shard(
        index=1,
        epoch=4,
        primary=member("c_shard_1_2", "10.0.0.3", position=0x3000060),
        followers=(
            member("c_shard_1_0", "10.0.0.1", position=0x3000000, lag_bytes=96, state="down"),
            member("c_shard_1_1", "10.0.0.2", position=None, lag_bytes=None),
        ),
        hash_range=RANGE,
        last_failover={
            "kind": "failover",
            "at": 1.5,
            "from": "c_shard_1_0",
            "to": "c_shard_1_2",
            "epoch": 4,
            "reason": "gone",
            "rejoin": None,
        },
    )


def test_published_entry_has_pod_names_no_credentials_no_nulls() -> None:
    entry = kp.status_entry(_manager_record(), "wal")
    assert entry["primary"] == {"name": "c-shard-1-2", "address": "10.0.0.3:5432",
                                "position": "0/3000060"}  # fmt: skip
    assert entry["followers"][0] == {
        "name": "c-shard-1-0", "address": "10.0.0.1:5432", "position": "0/3000000",
        "state": "down", "lagBytes": 96,
    }  # fmt: skip
    assert entry["followers"][1] == {
        "name": "c-shard-1-1",
        "address": "10.0.0.2:5432",
        "state": "streaming",
    }
    assert "rejoin" not in entry["lastFailover"]
    assert "su" not in repr(entry)
    # What the proxy reads parses under the topology contract.
    topology.from_dict({"shards": [entry]})
    assert "primary" not in kp.status_entry(
        topology.Shard(index=0, epoch=0, primary=None, hash_range=RANGE), "wal"
    )


def test_published_record_reads_back_as_the_managers_own() -> None:
    record = _manager_record()
    entry = kp.status_entry(record, "wal")
    back = kp.stored_record(entry, 1, 2, "wal", CREDS, None, "unused:0")
    assert back.primary == record.primary
    assert back.followers[0] == record.followers[0]
    assert back.followers[1].name == "c_shard_1_1"
    assert kp.record_version(back) == kp.record_version(record)


def test_record_before_anything_was_published_comes_from_the_lease() -> None:
    empty = kp.stored_record(None, 1, 2, "wal", CREDS, None, "x:5432")
    assert (empty.epoch, empty.primary, empty.hash_range) == (0, None, RANGE)
    held = state.Lease("c_shard_1_0", 1, 100.0)
    first = kp.stored_record(None, 1, 2, "wal", CREDS, held, "10.0.0.1:5432")
    assert first.epoch == 1
    assert first.primary is not None and first.primary.name == "c_shard_1_0"


def test_replace_entry_keeps_other_shards_and_fills_gaps() -> None:
    other = {"index": 0, "epoch": 7, "hashRange": [0, 1], "followers": []}
    mine = kp.status_entry(_manager_record(), "wal")
    out = kp.replace_entry([other], mine, 3)
    assert [e["index"] for e in out] == [0, 1, 2]
    assert out[0] == other and out[1] == mine
    assert out[2]["epoch"] == 0 and out[2]["hashRange"] == list(topology.hash_ranges(3)[2])
    assert kp.replace_entry(out, {**mine, "epoch": 5}, 3)[1]["epoch"] == 5


def test_events_name_the_cluster_and_shard() -> None:
    cluster = {"metadata": {"name": "c", "namespace": "ns", "uid": "u-1"}}
    ev = kp.event_object(cluster, 1, base.EventReason.PROMOTED, "promote x", 0.0)
    assert ev["reason"] == "Promoted" and ev["type"] == "Normal"
    assert ev["involvedObject"] == {"apiVersion": "pgshard.io/v1alpha1", "kind": "ShardedCluster",
                                    "name": "c", "namespace": "ns", "uid": "u-1"}  # fmt: skip
    assert ev["message"] == "shard 1: promote x"
    assert ev["firstTimestamp"] == "1970-01-01T00:00:00Z"
    failing = kp.event_object(cluster, 1, base.EventReason.FAILING_OVER, "m", 0.0)
    assert failing["type"] == "Warning"


def test_a_record_published_before_the_first_primary_adopts_the_lease_holder() -> None:
    bare = kp.status_entry(topology.Shard(index=1, epoch=0, primary=None, hash_range=RANGE), "wal")
    held = state.Lease("c_shard_1_0", 0, 100.0)
    record = kp.stored_record(bare, 1, 2, "wal", CREDS, held, "10.0.0.1:5432")
    assert record.primary is not None and record.primary.name == "c_shard_1_0"
    # A published primary is never replaced by the lease's holder here: that is the
    # manager's decision (it completes or refuses a promotion).
    other = state.Lease("c_shard_1_1", 5, 100.0)
    again = kp.stored_record(kp.status_entry(record, "wal"), 1, 2, "wal", CREDS, other, "x:1")
    assert again.primary is not None and again.primary.name == "c_shard_1_0"


def test_switchover_annotation() -> None:
    from pgshard_operator.k8s import managers

    assert managers.parse_switchover("1", "c", 2) == managers.SwitchoverRequest(1, None)
    assert managers.parse_switchover(" 0:c-shard-0-2 ", "c", 2) == managers.SwitchoverRequest(
        0, "c_shard_0_2"
    )
    for bad, words in (
        ("2", "a shard from 0 to 1"),
        ("x", "expected '<shard>'"),
        ("0:c-shard-1-0", "not a pod of shard 0"),
        ("0:c-shard-0-", "not a pod of shard 0"),
    ):
        try:
            managers.parse_switchover(bad, "c", 2)
        except ValueError as e:
            assert words in str(e), (bad, str(e))
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_priorities_by_pod_name_reach_the_manager_by_member_name() -> None:
    from pgshard_operator.k8s import managers
    from pgshard_operator.model import spec as specs

    spec = specs.parse_spec({"failover": {"priorities": {"c-shard-0-2": 5, "c_shard_0_1": 1}}})
    pol = managers.member_policy(spec.policy)
    assert dict(pol.failover.priorities) == {"c_shard_0_2": 5, "c_shard_0_1": 1}
    assert pol.failover.priority("c_shard_0_2") == 5
    assert pol.replication == spec.policy.replication


def test_the_sync_set_round_trips_through_the_status_by_pod_name() -> None:
    record = topology.Shard(
        index=0,
        epoch=3,
        primary=topology.Member("c_shard_0_0", "10.0.0.1:5432", ""),
        sync_standbys=("c_shard_0_1",),
    )
    entry = kp.status_entry(record, "wal")
    assert entry["syncStandbys"] == ["c-shard-0-1"]
    again = kp.stored_record(entry, 0, 1, "wal", CREDS, None, "x:1")
    assert again.sync_standbys == ("c_shard_0_1",)
    assert kp.record_version(again) == kp.record_version(record)


def test_a_blocked_shard_names_the_annotation_that_forces_a_failover() -> None:
    from pgshard_operator.k8s import managers
    from pgshard_operator.k8s.objects import ClusterRef

    assert managers.force_command(ClusterRef("c", "ns", "u"), 1) == (
        "kubectl annotate shardedcluster c -n ns pgshard.io/failover=1"
    )


def test_a_re_created_pod_is_not_probed_until_its_agent_answers() -> None:
    # Issue 15: the re-created primary pod came back on the old IP, where connects hung
    # for the whole probe timeout until its agent started; with the agent-status wait
    # that made the manager's next cycle ~5 s late, and the new primary (whose sync set
    # starts empty when a follower is a few bytes behind) kept every commit waiting.
    record = topology.Shard(
        index=0,
        epoch=3,
        primary=topology.Member("c_shard_0_0", "10.0.0.7:5432", ""),
        hash_range=RANGE,
    )
    new = {"metadata": {"name": "c-shard-0-0", "uid": "u2"}, "status": {"podIP": "10.0.0.7"}}
    pods = [kp.pod_state("c-shard-0-0", new, None), kp.pod_state("c-shard-0-1", None, None)]
    infos = kp.members("c", "ns", 0, pods, record, CREDS, {"c-shard-0-0": "u1"})
    assert [m.process for m in infos] == [state.ProcessState.REPLACED] * 2
    # Its PostgreSQL is started by its agent, which does not answer yet: nothing there.
    assert infos[0].unprobed is not None and "agent" in infos[0].unprobed
    # A pod that is missing may still run (forced deletion, lost node): probed where it was.
    assert infos[1].unprobed is None
    # Unknown (its agent does not answer, same pod): probed.
    same = kp.members("c", "ns", 0, pods[:1], record, CREDS, {"c-shard-0-0": "u2"})
    assert same[0].unprobed is None


def test_a_member_s_zone_is_its_node_s_and_reads_back_from_the_status() -> None:
    scheduled = {"metadata": {"name": "c-shard-1-0"}, "spec": {"nodeName": "n1"},
                 "status": {"podIP": "10.0.0.1"}}  # fmt: skip
    pending = {"metadata": {"name": "c-shard-1-1"}, "spec": {}, "status": {}}
    pods = [
        kp.pod_state("c-shard-1-0", scheduled, None),
        kp.pod_state("c-shard-1-1", pending, None),
    ]
    assert [p.node for p in pods] == ["n1", None]
    pods[0] = dataclasses.replace(pods[0], zone="eu-1a")  # what the platform's lookup adds
    record = topology.Shard(index=1, epoch=1, primary=None, hash_range=RANGE)
    infos = kp.members("c", "ns", 1, pods, record, CREDS)
    assert [m.zone for m in infos] == ["eu-1a", None]
    shard = dataclasses.replace(
        _manager_record(),
        followers=(dataclasses.replace(_manager_record().followers[0], zone="eu-1a"),),
    )
    entry = kp.status_entry(shard, "wal")
    assert entry["followers"][0]["zone"] == "eu-1a"
    assert "zone" not in entry["primary"]  # unknown: no field, not null
    back = kp.stored_record(entry, 1, 2, "wal", CREDS, None, "unused:0")
    assert back.followers[0].zone == "eu-1a" and back.primary is not None
    assert back.primary.zone is None
    # ... and what the proxy reads carries it.
    assert topology.from_dict({"shards": [entry]}).shards[0].followers[0].zone == "eu-1a"


def test_statement_mode_publishes_seq_positions_and_the_applier_s_state() -> None:
    def member(name: str, position: int | None, state: str = "catching-up") -> topology.Member:
        return topology.Member(name, f"{name}:5432", "", position=position, state=state)

    shard = topology.Shard(
        index=1,
        epoch=2,
        primary=member("c_shard_1_0", 40),
        followers=(
            dataclasses.replace(member("c_shard_1_1", 40), lag_bytes=0),
            member("c_shard_1_2", 31),
            member("c_shard_1_3", None, state="down"),
        ),
        hash_range=RANGE,
    )
    applying = {"role": "follower", "pgRunning": True, "healthy": True}
    agents = {
        "c_shard_1_1": {**applying, "position": 40, "applier": {"state": "applying"}},
        "c_shard_1_2": {**applying, "position": 31, "applier": {"state": "diverged"}},
        "c_shard_1_3": None,
    }
    entry = kp.status_entry(kp.statement_states(shard, agents), "statement")
    assert entry["primary"]["position"] == 40
    assert [(f.get("position"), f["state"]) for f in entry["followers"]] == [
        (40, "streaming"),
        (31, "diverged"),
        (None, "down"),
    ]
    assert not any("lagBytes" in f for f in entry["followers"])
    parsed = topology.from_dict({"method": "statement", "shards": [entry]})
    assert parsed.shards[0].followers[0].position == 40
