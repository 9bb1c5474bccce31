"""The test node's pod network: a pod re-created on its predecessor's address is
reachable from the other pods at once (issue 15: connects to it hung for seconds while
peers still cached the old pod's MAC, delaying the failover's repoint and probes); a
pod's routes restricted as NetworkPolicy egress says (policies.py) cut it off from
everything but its allowed peers and the node, at once and undone the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.agent import network

PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[2]))
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as e:
    print("unreachable", e.errno)
"""


@pytest.fixture
def node() -> Iterator[int]:
    if os.geteuid() != 0:
        pytest.skip("pod networking needs root (network namespaces, a bridge)")
    with tempfile.TemporaryDirectory(prefix="pgshard-net-") as d:
        owner = Path(d)
        index = network.claim_index(owner)
        try:
            network.setup_node(index)
            yield index
        finally:
            network.teardown_node(index)
            network.release_index(index, owner)


def connect_from(space: str, address: str, timeout: float) -> str:
    """What a TCP connect from namespace ``space`` to ``address`` (a closed port) gets."""
    done = subprocess.run(
        ["ip", "netns", "exec", space, sys.executable, "-c", PROBE, address, str(timeout)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_a_pod_re_created_on_the_same_address_answers_its_peers_at_once(node: int) -> None:
    prefix = network.netns_prefix(node)
    client, server = f"{prefix}{uuid.uuid4().hex[:8]}", f"{prefix}{uuid.uuid4().hex[:8]}"
    pool = network.AddressPool(node)
    a, b = pool.take(), pool.take()
    try:
        network.setup_pod(node, client, a)
        network.setup_pod(node, server, b)
        assert connect_from(client, b, 3) == "refused"  # the peer caches b's MAC now
        network.teardown_pod(server)
        network.setup_pod(node, server, b)  # a new veth: another MAC, the same address
        assert connect_from(client, b, 2) == "refused"
    finally:
        for space in (client, server):
            network.teardown_pod(space)


def test_restricted_routes_cut_a_pod_off_and_heal(node: int) -> None:
    prefix = network.netns_prefix(node)
    spaces = [f"{prefix}{uuid.uuid4().hex[:8]}" for _ in range(3)]
    pool = network.AddressPool(node)
    addresses = [pool.take() for _ in spaces]
    cut, allowed, other = addresses
    service = network.kubernetes_service_ip(node)
    try:
        for space, address in zip(spaces, addresses, strict=True):
            network.setup_pod(node, space, address)
        assert connect_from(spaces[0], service, 3) == "refused"  # a local address, port 9
        network.set_pod_routes(node, spaces[0], cut, [allowed], [])
        assert connect_from(spaces[0], allowed, 3) == "refused"
        assert connect_from(spaces[0], network.gateway_ip(node), 3) == "refused"
        assert connect_from(spaces[0], other, 3).startswith("unreachable")
        assert connect_from(spaces[0], service, 3).startswith("unreachable")
        assert connect_from(spaces[2], cut, 3) == "timeout"  # its answers have no way back
        network.set_pod_routes(node, spaces[0], cut, None, [f"{other}/32"])
        assert connect_from(spaces[0], service, 3) == "refused"
        assert connect_from(spaces[0], other, 3).startswith("unreachable")
        network.set_pod_routes(node, spaces[0], cut, None, [])
        assert connect_from(spaces[0], other, 3) == "refused"
        assert connect_from(spaces[2], cut, 3) == "refused"
    finally:
        for space in spaces:
            network.teardown_pod(space)
