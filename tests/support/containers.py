"""The pgshard image, built by scripts/image-build and run as containers with podman.

Podman here runs rootful with Debian's ``runc``, vfs storage and file events; this
machine's hard ulimits are below podman's defaults, so a ``containers.conf`` written
per test session sets them (and saves repeating the flags). Containers join a network
namespace the test creates (``ip netns add``), so what they serve is reachable only
from inside it. Every container is removed by name afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support import procs

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

TOOLS = ("buildah", "podman", "runc", "debootstrap", "ip")

POD_USER = 26
"""The image's fixed non-root user (postgres, UID/GID 26)."""

# What the chart's and the operator's securityContext ask of every pod.
RESTRICTED = (
    f"--user={POD_USER}:{POD_USER}",
    "--read-only",
    "--read-only-tmpfs=false",
    "--tmpfs=/tmp:rw,size=64m",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def build_image() -> str:
    """Run scripts/image-build; returns the image reference (its last line).

    ``PGSHARD_TEST_IMAGE``: the reference of an image scripts/image-build already made of
    this checkout (scripts/test builds it once for the image and the image-mode e2e tests).
    """
    if built := os.environ.get("PGSHARD_TEST_IMAGE"):
        return built
    out = subprocess.run(
        ["bash", str(procs.ROOT / "scripts" / "image-build")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if out.returncode != 0:
        raise AssertionError(f"scripts/image-build failed:\n{out.stderr[-4000:]}")
    return out.stdout.strip().splitlines()[-1]


class Podman:
    def __init__(self, conf_dir: Path) -> None:
        conf = conf_dir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.names: list[str] = []

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["podman", "--storage-driver=vfs", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed:\n{out.stderr[-3000:]}")
        return out

    def start(self, image: str, netns: str, argv: Sequence[str], *options: str) -> str:
        """A detached container in ``netns`` running ``argv`` with the restricted settings."""
        name = f"pgshard-test-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        self("run", "--detach", f"--name={name}", f"--network=ns:/run/netns/{netns}",
             *RESTRICTED, *options, image, *argv)  # fmt: skip
        return name

    def logs(self, name: str) -> str:
        out = self("logs", name, check=False)
        return out.stdout + out.stderr

    def running(self, name: str) -> bool:
        out = self("inspect", "--format={{.State.Running}}", name, check=False)
        return out.stdout.strip() == "true"

    def remove_all(self) -> None:
        for name in self.names:
            self("rm", "--force", "--time=10", name, timeout=60, check=False)
        self.names.clear()


@contextlib.contextmanager
def network_namespace() -> Iterator[str]:
    """A fresh network namespace with only a loopback interface (up)."""
    name = f"pgshard-img-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (for clients of what the containers serve)."""
    return ["ip", "netns", "exec", netns, *argv]
