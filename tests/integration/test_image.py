"""The image the chart names, built from the Dockerfile (scripts/image-build) and run.

Its three commands run as containers with the settings the chart and the operator give
pods (UID 26, read-only root, all capabilities dropped, no privilege escalation, a
writable data volume and /tmp): an instance agent creates and serves a primary, the
proxy serves clients from it, the operator's command starts. They share a network
namespace made for the test (clients run inside it too).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgshard_operator import control_token
from pgshard_operator.instance.credentials import Credentials
from pgshard_proxy.contract import topology
from tests.support import containers

# The first test also waits for the image build (about 3 minutes, more on a busy machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

PG_PORT = 5432
PROXY_PORT = 6432


@pytest.fixture(scope="module")
def image() -> str:
    if missing := containers.missing_tools():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the image tests, but {missing} are missing: "
                        "scripts/install-image-tools installs them")  # fmt: skip
        pytest.skip(f"{', '.join(missing)} not installed (scripts/install-image-tools)")
    if os.geteuid() != 0:
        pytest.skip("rootful podman and network namespaces need root")
    return containers.build_image()


@pytest.fixture
def podman() -> Iterator[containers.Podman]:
    with tempfile.TemporaryDirectory(prefix="pgshard-podman-") as d:
        p = containers.Podman(Path(d))
        try:
            yield p
        finally:
            p.remove_all()


@pytest.fixture
def netns() -> Iterator[str]:
    with containers.network_namespace() as name:
        yield name


@pytest.fixture
def volume() -> Iterator[Path]:
    """A writable volume owned by the pod user, as a PersistentVolume with fsGroup is."""
    with tempfile.TemporaryDirectory(prefix="pgshard-volume-") as d:
        path = Path(d)
        os.chown(path, containers.POD_USER, containers.POD_USER)
        yield path


def wait_for(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def psql(netns: str, dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        containers.in_netns(netns, ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql]),
        capture_output=True,
        text=True,
        timeout=30,
    )


def _private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chown(path, containers.POD_USER, containers.POD_USER)
    path.chmod(0o600)
    return path


def test_instance_and_proxy_serve_from_the_image(
    image: str, podman: containers.Podman, netns: str, volume: Path
) -> None:
    creds = Credentials.generate()
    config = volume / "config"
    config.mkdir()
    os.chown(config, containers.POD_USER, containers.POD_USER)
    _private_file(config / "credentials.json", json.dumps(creds.to_dict()))
    _private_file(config / "control-token", control_token.generate() + "\n")
    addr = f"127.0.0.1:{PG_PORT}"
    member = topology.Member(name="m0", address=addr, dsn=creds.app_dsn(addr))
    topo = topology.Topology(shards=(topology.Shard(index=0, epoch=1, primary=member),))
    _private_file(config / "topology.json", topology.to_json(topo))
    mounts = (f"--volume={volume}:/var/lib/pgshard", f"--volume={config}:/etc/pgshard:ro")

    instance = podman.start(image, netns, [
        "pgshard-instance", "--name", "m0", "--datadir", "/var/lib/pgshard/data",
        "--host", "127.0.0.1", "--port", str(PG_PORT), "--status-port", "8008",
        "--credentials", "/etc/pgshard/credentials.json", "--shard", "0",
        "--control-token-file", "/etc/pgshard/control-token",
        "--lease-file", "/var/lib/pgshard/lease.json", "--lease-ttl", "10",
        "--topology-file", "/etc/pgshard/topology.json", "--bootstrap-primary",
    ], *mounts)  # fmt: skip
    app = creds.app_dsn(addr)
    try:
        # The agent logs "postgres started" for the server it keeps; the one initdb's set-up
        # starts first (same port) shuts down again, and a client may have reached it.
        wait_for(
            "the primary in the container",
            lambda: (
                "postgres started" in podman.logs(instance)
                and psql(netns, app, "SELECT 1").returncode == 0
            ),
            120,
        )
    except AssertionError:
        raise AssertionError(podman.logs(instance)) from None
    out = psql(netns, app, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
    assert out.returncode == 0, f"{out.stderr}\n{podman.logs(instance)[-3000:]}"
    # PGDATA belongs to the pod user on the volume; the root filesystem stayed read-only.
    assert (volume / "data" / "PG_VERSION").stat().st_uid == containers.POD_USER
    who = podman("exec", instance, "sh", "-c", "id -u; touch /opt/x 2>&1 || true").stdout
    assert who.splitlines()[0] == str(containers.POD_USER)
    assert "Read-only file system" in who

    proxy = podman.start(image, netns, [
        "pgshard-proxy", "--host", "127.0.0.1", "--port", str(PROXY_PORT),
        "--topology-file", "/etc/pgshard/topology.json",
        "--user", f"{creds.app_user}:{creds.app_password}",
    ], *mounts)  # fmt: skip
    via_proxy = creds.app_dsn(f"127.0.0.1:{PROXY_PORT}")
    try:
        wait_for(
            "the proxy in the container", lambda: psql(netns, via_proxy, "SELECT 1").returncode == 0
        )
    except AssertionError:
        raise AssertionError(podman.logs(proxy)) from None
    out = psql(netns, via_proxy, "INSERT INTO t VALUES (8); SELECT sum(v) FROM t")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "15"

    podman("stop", "--time=20", instance, timeout=60)
    # SIGTERM stops PostgreSQL cleanly (no postmaster.pid left) and the agent exits 0.
    state = podman("inspect", "--format={{.State.ExitCode}}", instance).stdout.strip()
    assert state == "0", podman.logs(instance)[-2000:]
    assert not (volume / "data" / "postmaster.pid").exists()


def test_operator_command_runs_from_the_image(image: str, podman: containers.Podman) -> None:
    """Its dependencies (kopf, kubernetes_asyncio) load from the read-only image; with no
    Kubernetes API configured it says so and exits 2."""
    out = podman("run", "--rm", "--network=none", *containers.RESTRICTED, image,
                 "pgshard-operator", check=False)  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    assert "pgshard-operator: error: no Kubernetes API to connect to" in out.stderr
    assert "Traceback" not in out.stderr
    version = podman("run", "--rm", "--network=none", *containers.RESTRICTED, image,
                     "pgshard", "--version").stdout  # fmt: skip
    assert version.startswith("pgshard ")
