"""Pod networking: a bridge, one network namespace + veth per pod, and the Service range.

Cluster N (an index claimed under /run/pgshard-kube) uses:
  - pods: 198.18.N.0/24 on bridge ``pgkbrN`` (gateway 198.18.N.1, in the root namespace);
  - Services: 198.19.N.0/24, routed as local addresses in the root namespace
    (``ip route add local ... dev lo``), where the agent's proxy listens on each ClusterIP.
198.18.0.0/15 is reserved for network tests (RFC 2544). Pods have no default route, only
198.18.0.0/15 via the gateway, and the root namespace does not forward (ip_forward stays
as it is: 0 on these machines), so no pod traffic can leave the machine. The test process
(root namespace) reaches pod IPs through the bridge and ClusterIPs as local addresses,
exactly like a client on a real node.

Each pod's namespace is named ``pgkN-<pod uid prefix>``; every name with the ``pgkN-``
prefix belongs to cluster N, so leftovers can be removed after a crash without guessing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

from tests.kube.agent import procutil

INDEX_DIR = Path("/run/pgshard-kube")
MAX_INDEX = 256


def pod_cidr(index: int) -> str:
    return f"198.18.{index}.0/24"


def service_cidr(index: int) -> str:
    return f"198.19.{index}.0/24"


def gateway_ip(index: int) -> str:
    return f"198.18.{index}.1"


def kubernetes_service_ip(index: int) -> str:
    """The first address of the Service range, which the API server gives ``kubernetes``."""
    return f"198.19.{index}.1"


def bridge_name(index: int) -> str:
    return f"pgkbr{index}"


def netns_prefix(index: int) -> str:
    return f"pgk{index}-"


class NetworkError(RuntimeError):
    """An ``ip`` command failed; the message holds the command and its stderr."""


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def claim_index(owner: Path) -> int:
    """Take the lowest free cluster index (atomic mkdir) and record ``owner`` in it."""
    INDEX_DIR.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_INDEX):
        slot = INDEX_DIR / f"net-{index}"
        try:
            slot.mkdir()
        except FileExistsError:
            if not _reclaim_stale(slot, index):
                continue
        if ip("link", "show", bridge_name(index), check=False):
            # A bridge of unknown origin holds this index: leave it alone.
            (slot / "owner").unlink(missing_ok=True)
            slot.rmdir()
            continue
        (slot / "owner").write_text(str(owner))
        return index
    raise NetworkError(
        f"all {MAX_INDEX} cluster indexes under {INDEX_DIR} are taken; "
        "run scripts/kube-down on clusters you no longer need"
    )


def _reclaim_stale(slot: Path, index: int, min_age: float = 300) -> bool:
    """Take over a slot whose cluster is gone (its directory lost, its agent and API server
    dead, e.g. after the test process was killed), removing what that cluster left behind.
    Young slots are never taken: their cluster may still be starting."""
    try:
        if time.time() - slot.stat().st_mtime < min_age:
            return False
        owner = Path((slot / "owner").read_text())
    except (OSError, ValueError):
        return False
    try:
        state = json.loads((owner / "cluster.json").read_text())
        recorded = state.get("processes", {})
        if any(procutil.alive(procutil.Identity(**recorded[n])) for n in recorded):
            return False
    except (OSError, ValueError, TypeError):
        pass  # no readable state: nothing of it can still be ours to wait for
    cleanup_leftovers(owner / "node", index)
    return True


def release_index(index: int, owner: Path) -> None:
    slot = INDEX_DIR / f"net-{index}"
    try:
        if (slot / "owner").read_text() != str(owner):
            return
        (slot / "owner").unlink()
        slot.rmdir()
    except FileNotFoundError:
        pass


def setup_node(index: int) -> None:
    """Create the bridge with the gateway address and make the Service range local."""
    br = bridge_name(index)
    ip("link", "add", br, "type", "bridge")
    ip("addr", "add", f"{gateway_ip(index)}/24", "dev", br)
    ip("link", "set", br, "up")
    ip("route", "add", "local", service_cidr(index), "dev", "lo", "table", "local")


def teardown_node(index: int) -> None:
    ip("route", "del", "local", service_cidr(index), "dev", "lo", "table", "local", check=False)
    ip("link", "del", bridge_name(index), check=False)


def netns_path(name: str) -> str:
    return f"/run/netns/{name}"


def setup_pod(index: int, name: str, address: str) -> None:
    """Namespace ``name`` with loopback and eth0=``address`` on the cluster's bridge."""
    host_end = f"pgk{index}h{address.rsplit('.', 1)[1]}"
    ip("link", "del", host_end, check=False)  # a leftover from a pod that held this address
    ip("netns", "add", name)
    ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name)
    ip("link", "set", host_end, "master", bridge_name(index), "up")
    ip("-n", name, "link", "set", "lo", "up")
    ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
    ip("-n", name, "link", "set", "eth0", "up")
    ip("-n", name, "route", "add", "198.18.0.0/15", "via", gateway_ip(index))
    forget_neighbour(index, address)


def forget_neighbour(index: int, address: str) -> None:
    """Drop what the node and the cluster's pods cached as ``address``'s MAC. A re-created
    pod often gets its predecessor's address; peers still holding the old MAC would lose
    every packet to it (connects hang) until their entry ages out, seconds later. A CNI
    plugin announces the new MAC (gratuitous ARP) for the same reason."""
    prefix = netns_prefix(index)
    spaces = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    ip("neigh", "flush", "to", address, check=False)
    for space in spaces:
        if space.startswith(prefix):
            ip("-n", space, "neigh", "flush", "to", address, check=False)


def set_pod_routes(
    index: int, name: str, address: str, only: list[str] | None, blocked: list[str]
) -> None:
    """Rewrite the pod's routes: ``only`` None gives the usual two (its /24 on the
    bridge, 198.18.0.0/15 via the gateway), else routes to the gateway (the node) and to
    the ``only`` addresses alone; ``blocked`` addresses get blackhole routes. Existing
    connections to an address no longer routed fail at once (how the agent enforces
    NetworkPolicy egress, policies.py)."""
    ip("-n", name, "route", "flush", "table", "main")
    if only is None:
        ip("-n", name, "route", "add", pod_cidr(index), "dev", "eth0", "proto", "kernel",
           "scope", "link", "src", address)  # fmt: skip
        ip("-n", name, "route", "add", "198.18.0.0/15", "via", gateway_ip(index))
    else:
        for peer in sorted({gateway_ip(index), *only} - {address}):
            ip("-n", name, "route", "add", f"{peer}/32", "dev", "eth0", "scope", "link")
    for target in sorted(set(blocked)):
        ip("-n", name, "route", "add", "blackhole", target)


def teardown_pod(name: str) -> None:
    """Delete the namespace (its veth pair goes with it once no process is left inside)."""
    ip("netns", "del", name, check=False)


class AddressPool:
    """Pod addresses 198.18.N.2-254, handed out lowest first."""

    def __init__(self, index: int) -> None:
        net = ipaddress.ip_network(pod_cidr(index))
        self._free = [str(a) for a in list(net.hosts())[1:]]
        self._used: set[str] = set()

    def take(self) -> str:
        for address in self._free:
            if address not in self._used:
                self._used.add(address)
                return address
        raise NetworkError("no pod address left in the cluster's /24")

    def give_back(self, address: str) -> None:
        self._used.discard(address)


def cleanup_leftovers(state_dir: Path, index: int) -> None:
    """After the agent is gone: stop recorded container processes, remove namespaces, bridge."""
    for record in state_dir.glob("pods/*/*.pid.json"):
        try:
            ident = procutil.Identity(**json.loads(record.read_text()))
        except (ValueError, TypeError, OSError):
            continue
        procutil.stop_group(ident, grace=2)
    prefix = netns_prefix(index)
    if os.path.isdir("/run/netns"):
        for name in os.listdir("/run/netns"):
            if name.startswith(prefix):
                teardown_pod(name)
    teardown_node(index)
