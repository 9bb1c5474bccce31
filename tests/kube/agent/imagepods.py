"""Pod containers run from the pgshard image with podman (the agent's image mode).

When the agent's config names an image (``pod_image``; the e2e fixtures set it under
``PGSHARD_E2E_PODS=image``), a container whose ``image`` is that reference runs as a real
container of it instead of a local process: ``podman run`` (rootful, runc, vfs storage:
one writable copy of the image per container) in the pod's network namespace, its
volumes (host directories made by volumes.py) bind-mounted at their mountPaths, the pod's
/etc/hosts, the environment and command of the pod spec over the image's, and the pod's
security settings (user and groups, read-only root, dropped capabilities, no privilege
escalation). ``podman run`` stays attached: its output is the container's log and its
exit status the container's, so the pod runner supervises it as it does a process.
Every container carries the label ``pgshard.test/node=<state dir>``, by which
``remove_all`` clears what an agent left behind.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.containers import CONTAINERS_CONF

Obj = dict[str, Any]
LABEL = "pgshard.test/node"
# Variables the process mode invents for a host process; a container gets them from its
# image (PATH) and its user (HOME) instead.
HOST_ONLY_ENV = ("PATH", "HOME")


class PodImage:
    """The image pods may name, and how to run podman for this node."""

    def __init__(self, reference: str, state_dir: Path) -> None:
        self.reference = reference
        self.state_dir = state_dir
        conf = state_dir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def runs(self, container: Obj) -> bool:
        """True for a container of this image (podman resolves ``pgshard:…`` as
        ``localhost/pgshard:…``)."""
        image = container.get("image", "")
        return image in (self.reference, f"localhost/{self.reference}")

    def command(self, *args: str) -> list[str]:
        return ["podman", "--storage-driver=vfs", *args]

    def run_argv(
        self,
        name: str,
        netns_path: str,
        hostname: str,
        container: Obj,
        mounts: Sequence[Obj],
        identity: tuple[int | None, int | None, list[int]],
        env: Mapping[str, str],
        argv: Sequence[str],
    ) -> list[str]:
        """``podman run`` (attached) for one container of a pod."""
        uid, gid, groups = identity
        options = [
            f"--name={name}",
            "--replace",
            "--rm",
            "--pull=never",
            f"--label={LABEL}={self.state_dir}",
            f"--network=ns:{netns_path}",
            f"--hostname={hostname}",
            "--no-hosts",  # the pod's own /etc/hosts is one of the mounts
            "--stop-timeout=1",
        ]
        if uid is not None:
            options.append(f"--user={uid}:{gid if gid is not None else uid}")
        options += [f"--group-add={g}" for g in groups]
        if container.get("workingDir"):
            options.append(f"--workdir={container['workingDir']}")
        security = container.get("securityContext") or {}
        if security.get("readOnlyRootFilesystem"):
            options += ["--read-only", "--read-only-tmpfs=false"]
        if security.get("allowPrivilegeEscalation") is False:
            options.append("--security-opt=no-new-privileges")
        for cap in (security.get("capabilities") or {}).get("drop") or []:
            options.append(f"--cap-drop={cap}")
        for cap in (security.get("capabilities") or {}).get("add") or []:
            options.append(f"--cap-add={cap}")
        for m in mounts:
            ro = ",ro=true" if m["readOnly"] else ""
            options.append(f"--mount=type=bind,source={m['source']},destination={m['target']}{ro}")
        options += [f"--env={k}={v}" for k, v in env.items() if k not in HOST_ONLY_ENV]
        # The image has no ENTRYPOINT: the pod's command and args replace its CMD.
        return self.command("run", *options, self.reference, *argv)

    async def pid(self, name: str, running: asyncio.subprocess.Process, timeout: float) -> int:
        """The container's main pid once it runs (0 if ``podman run`` exited first)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and running.returncode is None:
            proc = await asyncio.create_subprocess_exec(
                *self.command("inspect", "--format={{.State.Pid}}", name),
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await proc.communicate()
            text = out.decode().strip()
            if proc.returncode == 0 and text.isdigit() and int(text) > 0:
                return int(text)
            await asyncio.sleep(0.2)
        if running.returncode is None:
            raise TimeoutError(f"container {name} did not start within {timeout:.0f}s")
        return 0

    async def remove(self, name: str) -> None:
        """Remove the container (after ``podman run`` ended or was killed)."""
        proc = await asyncio.create_subprocess_exec(
            *self.command("rm", "--force", "--time=0", "--ignore", name),
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(proc.wait(), 60)


def remove_all(state_dir: Path) -> None:
    """Remove every container a node agent with ``state_dir`` started (after it is gone)."""
    conf = state_dir / "containers.conf"
    if not conf.exists():
        return  # the agent never ran in image mode
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    podman = ["podman", "--storage-driver=vfs"]
    listed = subprocess.run(
        [*podman, "ps", "--all", "--quiet", f"--filter=label={LABEL}={state_dir}"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    ids = listed.stdout.split()
    if ids:
        subprocess.run([*podman, "rm", "--force", "--time=0", *ids], capture_output=True,
                       env=env, timeout=120, check=False)  # fmt: skip
