"""Pure functions that turn a pod spec into what a container process gets.

``expand`` is Kubernetes' ``$(VAR)`` expansion (used for env values, command and args);
``field_ref`` resolves downward-API field paths; ``service_env`` builds the
``<NAME>_SERVICE_HOST``/``_PORT`` variables a kubelet injects. The node agent's pod
runner calls these; unit tests cover them without a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]


class PodSpecError(ValueError):
    """The pod asks for something this node cannot give; the message says what."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes a ``$``,
    and references to undefined names (or unclosed ones) are left as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_ref(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    """Resolve a downward-API ``fieldRef.fieldPath`` against ``pod``."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    if m := _SUBSCRIPT.match(path):
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise PodSpecError(f"unsupported downward-API fieldPath {path!r}")


def _env_name(service_name: str) -> str:
    return service_name.upper().replace("-", "_")


def service_env(services: list[Obj], namespace: str, kubernetes_ip: str) -> dict[str, str]:
    """Service link variables for ``namespace`` and the ``kubernetes`` Service (as a kubelet)."""
    env: dict[str, str] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc["spec"]
        cluster_ip = spec.get("clusterIP")
        if meta.get("namespace") != namespace or not cluster_ip or cluster_ip == "None":
            continue
        ports = spec.get("ports", [])
        if not ports:
            continue
        prefix = _env_name(meta["name"])
        env[f"{prefix}_SERVICE_HOST"] = cluster_ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
    env["KUBERNETES_SERVICE_HOST"] = kubernetes_ip
    env["KUBERNETES_SERVICE_PORT"] = "443"
    env["KUBERNETES_SERVICE_PORT_HTTPS"] = "443"
    return env


def container_port(container: Obj, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise PodSpecError(f"container {container['name']!r} has no port named {port!r}")


def argv(container: Obj, env: Mapping[str, str]) -> list[str]:
    """The process argv: ``command`` + ``args`` after ``$(VAR)`` expansion.

    Images are not run here, so a container without ``command`` cannot start."""
    command = container.get("command") or []
    if not command:
        raise PodSpecError(
            f"container {container['name']!r} has no command: this node runs each container's "
            "command as a local process and cannot use an image's entrypoint; set command"
        )
    return [expand(a, env) for a in [*command, *(container.get("args") or [])]]


def hosts_file(
    pod: Obj, pod_ip: str, services: list[Obj], slices: list[Obj], domain: str = "cluster.local"
) -> str:
    """The pod's /etc/hosts: itself, every Service's ClusterIP, and headless Services' pods."""
    meta, spec = pod["metadata"], pod["spec"]
    ns = meta.get("namespace", "default")
    hostname = spec.get("hostname") or meta["name"]
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    own = [hostname]
    if spec.get("subdomain"):
        own.insert(0, f"{hostname}.{spec['subdomain']}.{ns}.svc.{domain}")
    lines.append(f"{pod_ip}\t{' '.join(own)}")
    headless: set[tuple[str, str]] = set()
    for svc in services:
        smeta = svc["metadata"]
        name, sns = smeta["name"], smeta.get("namespace", "default")
        names = [f"{name}.{sns}.svc.{domain}", f"{name}.{sns}.svc"]
        if sns == ns:
            names.append(name)
        cluster_ip = svc["spec"].get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            lines.append(f"{cluster_ip}\t{' '.join(names)}")
        else:
            headless.add((sns, name))
    for eps in slices:
        smeta = eps["metadata"]
        sns = smeta.get("namespace", "default")
        name = smeta.get("labels", {}).get("kubernetes.io/service-name", "")
        if (sns, name) not in headless:
            continue
        for ep in eps.get("endpoints") or []:
            if ep.get("conditions", {}).get("ready") is False or not ep.get("addresses"):
                continue
            address = ep["addresses"][0]
            names = [f"{name}.{sns}.svc.{domain}"]
            if ep.get("hostname"):
                host = ep["hostname"]
                names = [f"{host}.{name}.{sns}.svc.{domain}", f"{host}.{name}.{sns}.svc", *names]
                if sns == ns:
                    names.append(f"{host}.{name}")
            lines.append(f"{address}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"
