"""NetworkPolicy egress, enforced with each pod's routes (a network plugin's job on a real
cluster; ``pgshard verify --kube``'s ``partition`` fault relies on it).

A subset, enough for the policies pgshard and its tests create:

- only policies with ``Egress`` in ``policyTypes`` are enforced (Ingress rules are not,
  as before);
- a pod selected by one or more of them may send only to what their rules allow (the
  union): a rule without ``to`` allows everything; a ``podSelector`` peer (``matchLabels``,
  the policy's namespace, or every namespace with ``namespaceSelector: {}``) allows those
  pods' IPs; an ``ipBlock`` of 0.0.0.0/0 allows everything but its ``except`` blocks;
- ports are not looked at (routes cannot see them), and any other peer (other
  ipBlocks, ``matchExpressions``, a non-empty ``namespaceSelector``) is logged and
  allows everything: enforcement fails open, never silently closed;
- the node (the gateway: kubelet probes, ``kubectl`` clients on the node) stays
  reachable, and since routes are stateless, replies to peers the pod may not reach
  are dropped too (a real plugin lets replies to allowed ingress through).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from tests.kube.agent import network
from tests.kube.agent.api import Informer, Obj

log = logging.getLogger(__name__)

Routes = tuple[tuple[str, ...] | None, tuple[str, ...]]
"""(``only`` addresses or None for all, ``blocked`` addresses): network.set_pod_routes."""

OPEN: Routes = (None, ())


class UnsupportedPeer(ValueError):
    """A peer this subset does not enforce: the rule allows everything (logged)."""


def _labels_match(selector: Obj, labels: dict[str, str]) -> bool:
    if selector.get("matchExpressions"):
        raise UnsupportedPeer(f"matchExpressions in {selector}")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _pod_ns(pod: Obj) -> str:
    return str(pod["metadata"].get("namespace", "default"))


def routes_for(pod: Obj, policies: Iterable[Obj], pods: Iterable[Obj]) -> Routes:
    """What ``pod`` may reach under ``policies`` (pure; ``pods``: every pod, for peers)."""
    labels = pod["metadata"].get("labels") or {}
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace") == _pod_ns(pod)
        and "Egress" in (p["spec"].get("policyTypes") or ())
        and _selects(p["spec"].get("podSelector") or {}, labels)
    ]
    if not selecting:
        return OPEN
    only: set[str] = set()
    blocked: set[str] | None = None  # None: no ipBlock 0.0.0.0/0 rule (yet)
    for policy in selecting:
        for rule in policy["spec"].get("egress") or ():
            if not rule.get("to"):
                return OPEN
            for peer in rule["to"]:
                try:
                    if "ipBlock" in peer:
                        excepts = _everything_but(peer["ipBlock"])
                        blocked = excepts if blocked is None else blocked & excepts
                    else:
                        only |= _pod_peer(peer, _pod_ns(pod), pods)
                except UnsupportedPeer as e:
                    log.warning("policy %s: %s: not enforced", policy["metadata"]["name"], e)
                    return OPEN
    if blocked is not None:
        return None, tuple(sorted(b for b in blocked if b.removesuffix("/32") not in only))
    return tuple(sorted(only)), ()


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    try:
        return _labels_match(selector, labels)
    except UnsupportedPeer:
        return False


def _everything_but(block: Obj) -> set[str]:
    if block.get("cidr") != "0.0.0.0/0":
        raise UnsupportedPeer(f"ipBlock {block.get('cidr')} (only 0.0.0.0/0 with except)")
    return set(block.get("except") or ())


def _pod_peer(peer: Obj, namespace: str, pods: Iterable[Obj]) -> set[str]:
    if "podSelector" not in peer and "namespaceSelector" not in peer:
        raise UnsupportedPeer(f"peer {peer}")
    ns_selector = peer.get("namespaceSelector")
    if ns_selector and (ns_selector.get("matchLabels") or ns_selector.get("matchExpressions")):
        raise UnsupportedPeer(f"namespaceSelector {ns_selector}")
    selector = peer.get("podSelector") or {}
    return {
        str(p["status"]["podIP"])
        for p in pods
        if (p.get("status") or {}).get("podIP")
        and (ns_selector is not None or _pod_ns(p) == namespace)
        and _labels_match(selector, p["metadata"].get("labels") or {})
    }


class Enforcer:
    """Keeps every local pod's routes as its policies say: recomputed on any change of a
    NetworkPolicy or a pod, applied only where they changed."""

    def __init__(
        self,
        index: int,
        policies: Informer,
        pods: Informer,
        netns_of: Callable[[str], tuple[str, str] | None],
    ) -> None:
        self.index = index
        self.policies = policies
        self.pods = pods
        self.netns_of = netns_of  # pod uid -> (its network namespace, its IP), if running
        self.applied: dict[str, Routes] = {}
        self._dirty = asyncio.Event()
        for informer in (policies, pods):
            informer.on_change(lambda _k, _o: self._dirty.set())

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._apply()
            except network.NetworkError as e:  # the pod went away meanwhile: retry later
                log.warning("network policy: %s", e)
                await asyncio.sleep(0.5)
                self._dirty.set()

    async def _apply(self) -> None:
        pods = list(self.pods.items.values())
        policies = list(self.policies.items.values())
        running: set[str] = set()
        for pod in pods:
            where = self.netns_of(pod["metadata"]["uid"])
            if where is None:
                continue
            netns, address = where
            running.add(netns)
            want = routes_for(pod, policies, pods)
            if self.applied.get(netns, OPEN) != want:
                only, blocked = want
                await asyncio.to_thread(
                    network.set_pod_routes,
                    self.index,
                    netns,
                    address,
                    None if only is None else list(only),
                    list(blocked),
                )
                log.info("pod %s: egress %s", netns, "open" if want == OPEN else want)
                self.applied[netns] = want
        for gone in set(self.applied) - running:
            del self.applied[gone]

    def forget(self, netns: str) -> None:
        """A new pod starts with the usual routes."""
        self.applied.pop(netns, None)
        self._dirty.set()
