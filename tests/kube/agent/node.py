"""Registers this Node and keeps it alive: a Lease renewed every 2 s and a status heartbeat.

The node lifecycle controller marks the node NotReady when both stop for longer than its
grace period; ``stop()``/``resume()`` are the failure-injection switch for that.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from tests.kube.agent.api import Api, ApiError

log = logging.getLogger(__name__)
LEASE_SECONDS = 10
RENEW_EVERY = 2.0
STATUS_EVERY = 5.0


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeHeartbeat:
    def __init__(self, api: Api, name: str, address: str, version: str, kubelet_port: int) -> None:
        self.api = api
        self.kubelet_port = kubelet_port
        self.name = name
        self.address = address
        self.version = version
        self.enabled = asyncio.Event()
        self.enabled.set()

    def _status(self) -> dict[str, Any]:
        t = _now()
        ok = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        capacity = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": k,
                    "status": s,
                    "reason": r,
                    "lastHeartbeatTime": t,
                    "lastTransitionTime": t,
                }
                for k, s, r in ok
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "addresses": [
                {"type": "InternalIP", "address": self.address},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "kubeletVersion": self.version,
                "kubeProxyVersion": self.version,
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "pgshard-process://0.1",
                "osImage": "pgshard test node",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    async def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node-role.kubernetes.io/pgshard-test": "",
                },
            },
        }
        await self.api.ensure("/api/v1/nodes", node)
        await self._report()

    async def _report(self) -> None:
        await self.api.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": self._status()})

    async def _renew(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _micro_now(),
        }
        try:
            await self.api.merge_patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            await self.api.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name},
                    "spec": spec,
                },
            )

    async def run(self) -> None:
        last_status = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await self.enabled.wait()
            try:
                await self._renew()
                if loop.time() - last_status >= STATUS_EVERY:
                    await self._report()
                    last_status = loop.time()
            except Exception as e:  # the API server may be briefly away; keep trying
                log.warning("heartbeat: %s", e)
            await asyncio.sleep(RENEW_EVERY)

    def stop(self) -> None:
        self.enabled.clear()

    def resume(self) -> None:
        self.enabled.set()
