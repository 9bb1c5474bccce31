"""Start and stop one local Kubernetes cluster in a directory (scripts/kube-up, kube-down, fixture).

``up(DIR)`` generates certificates, starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (one multi-call binary from ``scripts/kube-build``) and the node agent
(``python -m tests.kube.agent``), writes ``DIR/kubeconfig`` and ``DIR/bin/{kubectl,helm}``
and returns once the node is Ready. Every process is recorded in ``DIR/cluster.json`` with
its pid and start time; ``down(DIR)`` stops exactly those (never by name), then removes
whatever the agent left behind (pod processes, network namespaces, the bridge).

Addresses: everything listens on 127.0.0.1 except pods. Each cluster takes an index N
(a directory under /run/pgshard-kube, taken atomically), giving pods 198.18.N.0/24 on a
bridge and Services 198.19.N.0/24; both are in 198.18.0.0/15, the range reserved for
network tests, and are reachable only on this machine (see tests/kube/agent/network.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.kube import certs
from tests.kube.agent import imagepods, network, procutil
from tests.support import net

ROOT = Path(__file__).resolve().parents[2]
NODE_NAME = "pgshard-node"
# Node lifecycle timing, shorter than a real cluster's so NotReady shows within seconds.
NODE_MONITOR_GRACE_SECONDS = 12
CLUSTER_STATE = "cluster.json"
# Processes in the order they are stopped.
STOP_ORDER = ("agent", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says which part and where its log is."""


class Kube:
    """What the e2e tests use of a cluster, local or external (tests/e2e/external.py):
    kubectl and helm bound to its kubeconfig (wrappers in ``bin``), a scratch
    ``directory``, the image pods run from ("" for process pods) and its one node."""

    directory: Path
    pod_image: str
    node: str

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def bin(self) -> Path:
        return self.directory / "bin"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run this cluster's kubectl; returns stdout, raises CalledProcessError with stderr."""
        done = subprocess.run(
            [str(self.bin / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, done.args, done.stdout, done.stderr
            )
        return done.stdout

    def helm(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.bin / "helm"), *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, done.args, done.stdout, done.stderr
            )
        return done.stdout


@dataclasses.dataclass(frozen=True)
class Cluster(Kube):
    """A running cluster as recorded in ``DIR/cluster.json``."""

    directory: Path
    index: int
    server: str
    node: str
    # Image mode (tests/kube/agent/imagepods.py): pods naming this image run from it.
    pod_image: str = ""
    # The control-plane processes when this Python process started them; held so they are
    # not garbage-collected as "still running" while the cluster is up (down() stops them).
    processes: tuple[subprocess.Popen[bytes], ...] = dataclasses.field(
        default=(), repr=False, compare=False
    )

    @property
    def control_socket(self) -> Path:
        return self.directory / "agent.sock"

    @property
    def pod_cidr(self) -> str:
        return network.pod_cidr(self.index)

    @property
    def service_cidr(self) -> str:
        return network.service_cidr(self.index)


def build() -> Path:
    """Build (or find cached) binaries with scripts/kube-build; returns their directory."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "kube-build")],
        stdout=subprocess.PIPE,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise ClusterError("scripts/kube-build failed; its output above says why")
    return Path(done.stdout.strip().splitlines()[-1])


def _kubeconfig(path: Path, server: str, ca: Path, pair: certs.KeyPair, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "pgshard", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
            }
        ],
        "contexts": [{"name": "pgshard", "context": {"cluster": "pgshard", "user": user}}],
        "current-context": "pgshard",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def _ssl_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def _get_json(url: str, ctx: ssl.SSLContext | None) -> Any:
    with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
        return json.load(resp)


def _wait(
    what: str,
    check: Any,
    timeout: float,
    log: Path | None,
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited with {proc.returncode} while waiting for {what}; "
                    f"see {log_path_hint(proc)}"
                )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise ClusterError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f"; see {log}" if log else "")
            )
        time.sleep(0.3)


def log_path_hint(proc: subprocess.Popen[bytes]) -> str:
    return str(getattr(proc, "log_path", "its log"))


def _start(
    name: str,
    argv: list[str],
    directory: Path,
    state: dict[str, Any],
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    log_path = directory / "logs" / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own process group: stopped as one, never by name
            env=env,
            cwd=directory,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    state["processes"][name] = procutil.identity(proc.pid)
    _save(directory, state)
    return proc


def _save(directory: Path, state: dict[str, Any]) -> None:
    tmp = directory / f"{CLUSTER_STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(directory / CLUSTER_STATE)


def load(directory: Path) -> Cluster:
    state = json.loads((directory / CLUSTER_STATE).read_text())
    return Cluster(
        directory=directory,
        index=state["index"],
        server=state["server"],
        node=state["node"],
        pod_image=state.get("pod_image", ""),
    )


@contextlib.contextmanager
def temporary(prefix: str = "pgshard-kube-") -> Iterator[Cluster]:
    """A cluster in a fresh world-traversable temporary directory (pods run as other
    users), stopped and its processes reaped at the end (the benches' cluster)."""
    bin_dir = build()
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        directory = Path(d)
        directory.chmod(0o755)
        kube = up(directory, bin_dir=bin_dir)
        try:
            yield kube
        finally:
            down(directory)
            for proc in kube.processes:
                proc.wait(timeout=10)


def up(
    directory: Path,
    *,
    bin_dir: Path | None = None,
    timeout: float = 120,
    pod_image: str = "",
    image_env: dict[str, dict[str, str]] | None = None,
) -> Cluster:
    """Start a cluster in ``directory`` (created; must not hold a running cluster);
    ``pod_image``: the node runs containers of that image with podman (image mode);
    ``image_env``: in process mode, the environment a container of each named image gets
    (what such an image would carry, e.g. ``PGSHARD_PG_BINDIR`` of other binaries)."""
    directory = directory.resolve()
    if (directory / CLUSTER_STATE).exists():
        raise ClusterError(
            f"{directory} already holds a cluster; run scripts/kube-down {directory} first"
        )
    bin_dir = bin_dir or build()
    kube = bin_dir / "kube"
    for sub in ("pki", "logs", "bin", "etcd", "node"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    # The node agent runs pods as other users (postgres); they must reach their volumes.
    directory.chmod(0o755)
    index = network.claim_index(directory)
    state: dict[str, Any] = {
        "index": index,
        "node": NODE_NAME,
        "processes": {},
        "bin": str(bin_dir),
        "pod_image": pod_image,
        "image_env": image_env or {},
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        return _up(directory, kube, bin_dir, index, state, procs, timeout)
    except BaseException:
        _save(directory, state)
        down(directory)
        raise


def _up(
    directory: Path,
    kube: Path,
    bin_dir: Path,
    index: int,
    state: dict[str, Any],
    procs: dict[str, subprocess.Popen[bytes]],
    timeout: float,
) -> Cluster:
    pki = directory / "pki"
    api_port = net.free_port()
    server = f"https://127.0.0.1:{api_port}"
    state["server"] = server
    kubernetes_ip = network.kubernetes_service_ip(index)
    ca = certs.Authority(pki)
    serving = ca.issue(
        "apiserver",
        "kube-apiserver",
        hosts=(
            "127.0.0.1",
            kubernetes_ip,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server=True,
    )
    sa = certs.service_account_keys(pki)
    kubelet = ca.issue("kubelet", NODE_NAME, hosts=(network.gateway_ip(index),), server=True)
    kubelet_client = ca.issue(
        "apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters"
    )
    kubelet_port = net.free_port()
    users = {
        "admin": ca.issue("admin", "kubernetes-admin", org="system:masters"),
        "controller-manager": ca.issue("controller-manager", "system:kube-controller-manager"),
        "scheduler": ca.issue("scheduler", "system:kube-scheduler"),
        # The agent is node, kube-proxy and volume provisioner at once: an admin identity.
        "agent": ca.issue("agent", f"system:node:{NODE_NAME}", org="system:masters"),
    }
    for user, pair in users.items():
        _kubeconfig(pki / f"{user}.kubeconfig", server, ca.cert, pair, user)
    shutil.copy(pki / "admin.kubeconfig", directory / "kubeconfig")

    etcd_port, peer_port = net.free_port(), net.free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    procs["etcd"] = _start(
        "etcd",
        [
            str(kube),
            "etcd",
            "--name=default",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",  # test data; durability across power loss is not needed
            "--log-level=warn",
        ],
        directory,
        state,
    )
    _wait(
        "etcd",
        lambda: _get_json(f"{etcd_url}/health", None)["health"] == "true",
        30,
        directory / "logs/etcd.log",
        procs,
    )

    procs["kube-apiserver"] = _start(
        "kube-apiserver",
        [
            str(kube),
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={api_port}",
            # Not loopback (refused) and never contacted: the `kubernetes` Service is served by
            # the agent's proxy, so the endpoint reconciler is off.
            f"--advertise-address={network.gateway_ip(index)}",
            "--endpoint-reconciler-type=none",
            f"--service-cluster-ip-range={network.service_cidr(index)}",
            f"--client-ca-file={ca.cert}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            # kubectl logs: the API server calls the agent's kubelet endpoint on the node IP.
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=0",
        ],
        directory,
        state,
    )
    ctx = _ssl_context(pki)

    def api_ready() -> bool:
        with urllib.request.urlopen(f"{server}/readyz", context=ctx, timeout=5) as resp:
            return bool(resp.status == 200)

    _wait("kube-apiserver /readyz", api_ready, 60, directory / "logs/kube-apiserver.log", procs)

    procs["kube-controller-manager"] = _start(
        "kube-controller-manager",
        [
            str(kube),
            "kube-controller-manager",
            f"--kubeconfig={pki / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={pki / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={pki / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={net.free_port()}",
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={sa.key}",
            f"--root-ca-file={ca.cert}",
            f"--cluster-signing-cert-file={ca.cert}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--node-monitor-period=2s",
            f"--node-monitor-grace-period={NODE_MONITOR_GRACE_SECONDS}s",
            "--profiling=false",
        ],
        directory,
        state,
    )
    procs["kube-scheduler"] = _start(
        "kube-scheduler",
        [
            str(kube),
            "kube-scheduler",
            f"--kubeconfig={pki / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={pki / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={pki / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={net.free_port()}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        directory,
        state,
    )
    agent_config = {
        "node": NODE_NAME,
        "index": index,
        "kubeconfig": str(pki / "agent.kubeconfig"),
        "api_port": api_port,
        "state_dir": str(directory / "node"),
        "control_socket": str(directory / "agent.sock"),
        "kubelet_port": kubelet_port,
        "kubelet_cert": str(kubelet.cert),
        "kubelet_key": str(kubelet.key),
        "ca": str(ca.cert),
        "kubernetes_version": "v1.37.2",
        "pod_image": state["pod_image"],
        "image_env": state.get("image_env", {}),
    }
    (directory / "agent.json").write_text(json.dumps(agent_config, indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    procs["agent"] = _start(
        "agent",
        [sys.executable, "-m", "tests.kube.agent", str(directory / "agent.json")],
        directory,
        state,
        env=env,
    )

    def node_ready() -> bool:
        node = _get_json(f"{server}/api/v1/nodes/{NODE_NAME}", ctx)
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        return conditions.get("Ready") == "True"

    def default_service_account() -> bool:
        _get_json(f"{server}/api/v1/namespaces/default/serviceaccounts/default", ctx)
        return True

    _wait("the node to be Ready", node_ready, timeout, directory / "logs/agent.log", procs)
    _wait(
        "the default service account",
        default_service_account,
        timeout,
        directory / "logs/kube-controller-manager.log",
        procs,
    )
    write_tools(directory, directory / "kubeconfig", bin_dir / "kubectl", bin_dir / "helm")
    return dataclasses.replace(load(directory), processes=tuple(procs.values()))


def write_tools(directory: Path, kubeconfig: Path, kubectl: Path, helm: Path) -> None:
    """DIR/bin/kubectl and DIR/bin/helm: those tools bound to ``kubeconfig`` (helm's own
    cache and config under DIR/helm)."""
    helm_home = directory / "helm"
    wrappers = {
        "kubectl": f'KUBECONFIG="{kubeconfig}" exec "{kubectl}" "$@"\n',
        "helm": (
            f'export KUBECONFIG="{kubeconfig}" HELM_CACHE_HOME="{helm_home}/cache" '
            f'HELM_CONFIG_HOME="{helm_home}/config" HELM_DATA_HOME="{helm_home}/data"\n'
            f'exec "{helm}" "$@"\n'
        ),
    }
    (directory / "bin").mkdir(exist_ok=True)
    for name, body in wrappers.items():
        path = directory / "bin" / name
        path.write_text(f"#!/bin/sh\n# {name} for the cluster of {kubeconfig}\n{body}")
        path.chmod(0o755)


def down(directory: Path, *, grace: float = 15) -> None:
    """Stop everything ``up`` started in ``directory``, by recorded pid, and clean up."""
    directory = directory.resolve()
    path = directory / CLUSTER_STATE
    if not path.exists():
        print(f"kube-down: no running cluster recorded in {path}; nothing to stop", file=sys.stderr)
        return
    state = json.loads(path.read_text())
    recorded = state.get("processes", {})
    for name in STOP_ORDER:
        ident = recorded.get(name)
        if ident:
            # The agent stops its pods on SIGTERM; give it time to do so.
            procutil.stop_group(procutil.Identity(**ident), grace=grace if name == "agent" else 10)
    # Whatever the agent could not clean (it was killed, or crashed): pods' processes,
    # network namespaces, the bridge, the service route.
    network.cleanup_leftovers(directory / "node", state["index"])
    imagepods.remove_all(directory / "node")
    network.release_index(state["index"], directory)
    path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-cluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start a cluster in DIR; returns when its node is Ready")
    p_up.add_argument("dir", type=Path)
    p_up.add_argument("--timeout", type=float, default=120)
    p_down = sub.add_parser("down", help="stop the cluster in DIR by recorded pids")
    p_down.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            cluster = up(args.dir, timeout=args.timeout)
        except ClusterError as e:
            print(f"kube-up: {e}", file=sys.stderr)
            return 1
        print(f"cluster up: export KUBECONFIG={cluster.kubeconfig}; PATH={cluster.bin}:$PATH")
        return 0
    down(args.dir)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
