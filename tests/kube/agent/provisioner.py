"""A local-directory volume provisioner (in the spirit of local-path-provisioner).

Installs the default StorageClass ``pgshard-local`` (provisioner ``pgshard.io/local-dir``,
binding Immediate, reclaim Delete) and, for every pending claim of that class, creates a
hostPath PersistentVolume pre-bound to the claim, backed by the directory
``<state>/volumes/<namespace>/<claim>-<claim uid>``. A StatefulSet pod that is deleted
and recreated keeps its claim, so it finds its data again. When a claim is deleted the
PV controller releases its PV; this provisioner then deletes the PV and its directory.
The uid keeps that directory the old claim's own: a StatefulSet scaled down and
straight back up makes a claim of the same name, often before the old volume's release
arrives, and that release must not delete the new claim's data.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from tests.kube.agent.api import Api, ApiError, Informer

log = logging.getLogger(__name__)
Obj = dict[str, Any]
CLASS = "pgshard-local"
PROVISIONER = "pgshard.io/local-dir"


class Provisioner:
    def __init__(self, api: Api, root: Path) -> None:
        self.api = api
        self.root = root
        self.claims = Informer(api, "/api/v1/persistentvolumeclaims")
        self.volumes = Informer(api, "/api/v1/persistentvolumes")
        self.claims.on_change(self._on_claim)
        self.volumes.on_change(self._on_volume)

    async def install_class(self) -> None:
        await self.api.ensure(
            "/apis/storage.k8s.io/v1/storageclasses",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": PROVISIONER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
            },
        )

    async def run(self) -> None:
        await self.install_class()
        await asyncio.gather(self.claims.run(), self.volumes.run())

    async def _on_claim(self, kind: str, pvc: Obj) -> None:
        if (
            kind == "DELETED"
            or pvc["spec"].get("volumeName")
            or pvc.get("status", {}).get("phase") != "Pending"
        ):
            return
        if pvc["spec"].get("storageClassName") != CLASS:
            return
        meta = pvc["metadata"]
        ns, name = meta["namespace"], meta["name"]
        path = self.root / ns / f"{name}-{meta['uid']}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        size = pvc["spec"].get("resources", {}).get("requests", {}).get("storage", "1Gi")
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"pvc-{meta['uid']}",
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": CLASS,
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": ns,
                    "name": name,
                    "uid": meta["uid"],
                },
            },
        }
        try:
            await self.api.ensure("/api/v1/persistentvolumes", pv)
        except ApiError as e:
            log.error("provisioning %s/%s: %s", ns, name, e)

    async def _on_volume(self, kind: str, pv: Obj) -> None:
        meta = pv["metadata"]
        if (
            kind == "DELETED"
            or meta.get("annotations", {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER
        ):
            return
        if (
            pv.get("status", {}).get("phase") != "Released"
            or pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete"
        ):
            return
        path = Path(pv["spec"]["hostPath"]["path"])
        if self.root in path.parents:
            await asyncio.to_thread(shutil.rmtree, path, True)
        try:
            await self.api.delete(f"/api/v1/persistentvolumes/{meta['name']}")
        except ApiError as e:
            if e.status != 404:
                log.error("deleting released volume %s: %s", meta["name"], e)
