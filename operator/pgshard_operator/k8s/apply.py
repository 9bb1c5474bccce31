"""The operator's only writer of Kubernetes objects (kubernetes_asyncio).

``Api`` wraps a kubernetes_asyncio ``ApiClient``: :meth:`Api.apply` is
server-side apply with field manager ``pgshard-operator`` (create-or-update in
one idempotent call; owner references come from the builders in
``manifests.py``), plus the few reads, deletes and merge-patches the handlers
and the Kubernetes platform need. Resource paths come from a fixed table of the
kinds the operator owns, so no discovery round-trips are needed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from .. import naming

FIELD_MANAGER = "pgshard-operator"


@dataclasses.dataclass(frozen=True)
class Resource:
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced:
            if namespace is None:
                raise ValueError(f"{self.plural} are namespaced: give a namespace")
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base

    def every_namespace(self) -> str:
        """The collection across all namespaces (lists only)."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{base}/{self.plural}"


RESOURCES: dict[str, Resource] = {
    "ServiceAccount": Resource("v1", "serviceaccounts"),
    "Secret": Resource("v1", "secrets"),
    "ConfigMap": Resource("v1", "configmaps"),
    "Service": Resource("v1", "services"),
    "Pod": Resource("v1", "pods"),
    "Node": Resource("v1", "nodes", namespaced=False),
    "Event": Resource("v1", "events"),
    "StatefulSet": Resource("apps/v1", "statefulsets"),
    "Deployment": Resource("apps/v1", "deployments"),
    "PodDisruptionBudget": Resource("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": Resource("networking.k8s.io/v1", "networkpolicies"),
    "Role": Resource("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": Resource("coordination.k8s.io/v1", "leases"),
    naming.KIND: Resource(naming.API_VERSION, naming.PLURAL),
}


class ApiError(Exception):
    """The API server refused a request; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(e: k8s_client.ApiException, what: str) -> ApiError:
    message = str(e.reason)
    with contextlib.suppress(TypeError, ValueError):
        message = json.loads(e.body or b"{}").get("message", message)
    return ApiError(int(e.status or 0), f"{what}: {message}")


class NotConfigured(Exception):
    """Neither a pod's service account nor a usable kubeconfig says which API to use."""


async def connect() -> k8s_client.ApiClient:
    """An API client from the pod's service account, else from ``$KUBECONFIG``."""
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        try:
            await k8s_config.load_kube_config()
        # A malformed file surfaces from the library's parser as TypeError/ValueError.
        except (k8s_config.ConfigException, OSError, TypeError, ValueError) as e:
            raise NotConfigured(
                "no Kubernetes API to connect to: not in a pod with a service account, and "
                f"no usable kubeconfig ({e}); run in a pod or set KUBECONFIG"
            ) from None
    return k8s_client.ApiClient()


class Api:
    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self._client = api_client

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        body: object = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        try:
            response = await self._client.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            )
        except k8s_client.ApiException as e:
            raise _error(e, what) from None
        data = await response.read()
        parsed: dict[str, Any] = json.loads(data) if data else {}
        # Without preloading, kubernetes_asyncio returns error responses instead of raising.
        if response.status >= 400:
            raise ApiError(response.status, f"{what}: {parsed.get('message', response.reason)}")
        return parsed

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj``: creates it or updates the fields we own."""
        kind, meta = obj["kind"], obj["metadata"]
        path = RESOURCES[kind].path(meta.get("namespace"), meta["name"])
        return await self._call(
            "PATCH",
            path,
            f"applying {kind} {meta['name']}",
            body=dict(obj),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self._call(
                "GET", RESOURCES[kind].path(namespace, name), f"reading {kind} {name}"
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(
        self, kind: str, namespace: str | None, selector: str, fields: str = ""
    ) -> list[dict[str, Any]]:
        """Objects matching the label ``selector`` (and the field selector ``fields``);
        ``namespace`` None: in every namespace."""
        query = [("labelSelector", selector)] + ([("fieldSelector", fields)] if fields else [])
        what = f"listing {kind} ({selector or fields})"
        res = RESOURCES[kind]
        path = res.every_namespace() if namespace is None else res.path(namespace)
        result = await self._call("GET", path, what, query=query)
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create; raises :class:`ApiError` with status 409 if it already exists."""
        kind, meta = obj["kind"], obj["metadata"]
        return await self._call(
            "POST", RESOURCES[kind].path(meta.get("namespace")), f"creating {kind}", body=dict(obj)
        )

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Replace (PUT). With ``metadata.resourceVersion`` set this is a compare-and-set:
        status 409 when the object changed since that version was read."""
        kind, meta = obj["kind"], obj["metadata"]
        return await self._call(
            "PUT",
            RESOURCES[kind].path(meta.get("namespace"), meta["name"]),
            f"replacing {kind} {meta['name']}",
            body=dict(obj),
        )

    async def delete(
        self, kind: str, namespace: str | None, name: str, grace_seconds: int | None = None
    ) -> None:
        """Delete (``grace_seconds``: the pod's grace period instead of its own); an object
        that is already gone is fine."""
        query = [] if grace_seconds is None else [("gracePeriodSeconds", str(grace_seconds))]
        try:
            await self._call(
                "DELETE", RESOURCES[kind].path(namespace, name), f"deleting {name}", query=query
            )
        except ApiError as e:
            if e.status != 404:
                raise

    async def merge_patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        path = RESOURCES[kind].path(namespace, name)
        if subresource:
            path += f"/{subresource}"
        return await self._call(
            "PATCH",
            path,
            f"patching {kind} {name}",
            body=dict(patch),
            content_type="application/merge-patch+json",
        )


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's ``data`` decoded (``stringData`` is never returned by the API)."""
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
