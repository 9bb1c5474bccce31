"""Pod volumes as host directories (called by the pod runner before containers start).

Every volume becomes a directory (or, for ``subPath``, a path inside one) that the
container launcher bind-mounts at each ``mountPath``:
  - emptyDir: ``<pod dir>/volumes/<name>``, removed with the pod (``medium: Memory`` too);
  - persistentVolumeClaim: the bound PersistentVolume's ``hostPath``/``local`` path, made
    by the provisioner per claim, so data survives pod restarts and re-creation;
  - hostPath: the path itself;
  - configMap, secret, downwardAPI, projected (incl. serviceAccountToken via TokenRequest,
    which is how pods get ``/var/run/secrets/kubernetes.io/serviceaccount``): files written
    once at pod start (not refreshed later).
Writable directories belong to the pod's ``securityContext.runAsUser`` (and ``fsGroup``)
when set, else are world-writable, so non-root processes such as PostgreSQL can use them.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from tests.kube.agent import podenv
from tests.kube.agent.api import Api, ApiError

Obj = dict[str, Any]


class VolumeNotReady(RuntimeError):
    """A volume cannot be set up yet (e.g. its claim is not bound); retry later."""


def _owner(pod: Obj) -> tuple[int, int]:
    ctx = pod["spec"].get("securityContext") or {}
    uid = ctx.get("runAsUser", -1)
    gid = ctx.get("fsGroup", ctx.get("runAsGroup", -1))
    return int(uid), int(gid)


def writable_dir(path: Path, pod: Obj) -> None:
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = _owner(pod)
    if uid >= 0 or gid >= 0:
        os.chown(path, uid, gid)
        path.chmod(0o2775 if gid >= 0 else 0o755)
    else:
        path.chmod(0o777)


def _write_files(target: Path, files: dict[str, bytes], mode: int, pod: Obj) -> None:
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o755)
    _, gid = _owner(pod)
    for rel, content in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
        if gid >= 0:
            os.chown(path, -1, gid)


def _select(
    data: dict[str, bytes], items: list[Obj] | None, what: str, default_mode: int
) -> tuple[dict[str, bytes], dict[str, int]]:
    if not items:
        return data, {}
    out: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    for item in items:
        if item["key"] not in data:
            raise podenv.PodSpecError(f"{what} has no key {item['key']!r}")
        out[item["path"]] = data[item["key"]]
        modes[item["path"]] = int(item.get("mode", default_mode))
    return out, modes


class Volumes:
    """Sets up one pod's volumes; ``paths`` maps volume name to its host path."""

    def __init__(self, api: Api, pod: Obj, pod_dir: Path, pod_ip: str, host_ip: str) -> None:
        self.api = api
        self.pod = pod
        self.ns = pod["metadata"].get("namespace", "default")
        self.pod_dir = pod_dir
        self.pod_ip = pod_ip
        self.host_ip = host_ip
        self.paths: dict[str, Path] = {}

    async def _configmap(self, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            cm = await self.api.get(f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
        except ApiError as e:
            if e.status == 404 and optional:
                return None
            if e.status == 404:
                raise VolumeNotReady(f"configmap {self.ns}/{name} not found") from e
            raise
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        return data

    async def _secret(self, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            secret = await self.api.get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
        except ApiError as e:
            if e.status == 404 and optional:
                return None
            if e.status == 404:
                raise VolumeNotReady(f"secret {self.ns}/{name} not found") from e
            raise
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    async def _token(self, source: Obj) -> bytes:
        meta = self.pod["metadata"]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": int(source.get("expirationSeconds", 3607)),
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        review = await self.api.create(
            f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(review["status"]["token"]).encode()

    def _downward(self, items: list[Obj]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for item in items:
            if "fieldRef" not in item:
                raise podenv.PodSpecError("downwardAPI volumes support fieldRef items only")
            value = podenv.field_ref(
                self.pod, item["fieldRef"]["fieldPath"], self.pod_ip, self.host_ip
            )
            out[item["path"]] = value.encode()
        return out

    async def _claim_path(self, claim: str) -> Path:
        pvc = await self.api.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
        if pvc.get("status", {}).get("phase") != "Bound":
            raise VolumeNotReady(f"persistentvolumeclaim {self.ns}/{claim} is not bound yet")
        pv = await self.api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        source = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not source:
            raise podenv.PodSpecError(
                f"persistentvolume {pv['metadata']['name']} is neither hostPath nor local; "
                "this node can only mount directories"
            )
        path = Path(source["path"])
        writable_dir(path, self.pod)
        return path

    async def setup(self) -> None:
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            target = self.pod_dir / "volumes" / name
            if "emptyDir" in vol:
                writable_dir(target, self.pod)
            elif "hostPath" in vol:
                target = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type", "") in ("", "DirectoryOrCreate"):
                    target.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in vol:
                target = await self._claim_path(vol["persistentVolumeClaim"]["claimName"])
            elif "configMap" in vol or "secret" in vol:
                src = vol.get("configMap") or vol["secret"]
                ref = src.get("name") or src.get("secretName")
                optional = bool(src.get("optional"))
                mode = int(src.get("defaultMode", 0o644))
                data = await (
                    self._configmap(ref, optional)
                    if "configMap" in vol
                    else self._secret(ref, optional)
                )
                files, modes = _select(data or {}, src.get("items"), f"volume {name}", mode)
                _write_files(target, files, mode, self.pod)
                for rel, m in modes.items():
                    (target / rel).chmod(m)
            elif "downwardAPI" in vol:
                _write_files(target, self._downward(vol["downwardAPI"]["items"]), 0o644, self.pod)
            elif "projected" in vol:
                await self._projected(target, vol["projected"])
            else:
                kinds = sorted(set(vol) - {"name"})
                raise podenv.PodSpecError(f"volume {name!r}: unsupported volume type {kinds}")
            self.paths[name] = target

    async def _projected(self, target: Path, projected: Obj) -> None:
        mode = int(projected.get("defaultMode", 0o644))
        files: dict[str, bytes] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                files[source["serviceAccountToken"]["path"]] = await self._token(
                    source["serviceAccountToken"]
                )
            elif "configMap" in source or "secret" in source:
                src = source.get("configMap") or source["secret"]
                optional = bool(src.get("optional"))
                data = await (
                    self._configmap(src["name"], optional)
                    if "configMap" in source
                    else self._secret(src["name"], optional)
                )
                chosen, _ = _select(data or {}, src.get("items"), f"projected {src['name']}", mode)
                files.update(chosen)
            elif "downwardAPI" in source:
                files.update(self._downward(source["downwardAPI"]["items"]))
            else:
                raise podenv.PodSpecError(f"unsupported projected volume source {sorted(source)}")
        _write_files(target, files, mode, self.pod)
