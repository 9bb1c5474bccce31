"""Startup, liveness and readiness probes (exec, tcpSocket, httpGet) for one container.

Called by ``ContainerRunner.run_once`` while the container's process runs. Semantics as a
kubelet's: ``initialDelaySeconds``, ``periodSeconds`` [10], ``timeoutSeconds`` [1],
``successThreshold`` [1], ``failureThreshold`` [3]; liveness and readiness wait for the
startup probe to succeed; a failed startup or liveness probe stops the container (which
is then restarted per ``restartPolicy``). exec probes run inside the container's own
namespaces (nsenter into its main process; ``podman exec`` in image mode) as its user;
tcpSocket and httpGet probes connect to the pod's IP from the node, as a kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import aiohttp
from tests.kube.agent import podenv

if TYPE_CHECKING:
    from tests.kube.agent.pods import ContainerRunner

Obj = dict[str, Any]


async def check(runner: ContainerRunner, probe: Obj) -> bool:
    """One probe attempt; True on success."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "exec" in probe:
            argv, env = runner.exec_command(probe["exec"]["command"])
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                return await asyncio.wait_for(proc.wait(), timeout) == 0
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return False
        if "tcpSocket" in probe:
            port = podenv.container_port(runner.spec, probe["tcpSocket"]["port"])
            host = probe["tcpSocket"].get("host") or runner.worker.ip
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = podenv.container_port(runner.spec, get["port"])
            host = get.get("host") or runner.worker.ip
            scheme = get.get("scheme", "HTTP").lower()
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"{scheme}://{host}:{port}{get.get('path', '/')}",
                    headers=headers,
                    ssl=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False,
                ) as resp,
            ):
                return 200 <= resp.status < 400
        if "grpc" in probe:
            raise podenv.PodSpecError("grpc probes are not supported by this node")
    except (OSError, TimeoutError, aiohttp.ClientError):
        return False
    raise podenv.PodSpecError(f"probe without a handler: {sorted(probe)}")


async def _loop(runner: ContainerRunner, kind: str, probe: Obj, started: asyncio.Event) -> None:
    period = float(probe.get("periodSeconds", 10))
    success_needed = int(probe.get("successThreshold", 1))
    failures_allowed = int(probe.get("failureThreshold", 3))
    if kind != "startup":
        await started.wait()
    await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
    successes = failures = 0
    while True:
        ok = await check(runner, probe)
        successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
        if kind == "startup":
            if successes >= 1:
                runner.started = True
                runner.worker.changed()
                started.set()
                return
            if failures >= failures_allowed:
                runner.kill_for_probe("startup probe failed")
                return
        elif kind == "liveness":
            if failures >= failures_allowed:
                runner.kill_for_probe("liveness probe failed")
                return
        else:
            ready = runner.ready
            if successes >= success_needed:
                ready = True
            elif failures >= failures_allowed:
                ready = False
            if ready != runner.ready:
                runner.ready = ready
                runner.worker.changed()
        await asyncio.sleep(period)


async def run_all(runner: ContainerRunner) -> None:
    """Run the container's probes until cancelled (when its process exits)."""
    spec = runner.spec
    started = asyncio.Event()
    if "startupProbe" not in spec:
        started.set()
    tasks = []
    for kind in ("startup", "liveness", "readiness"):
        probe = spec.get(f"{kind}Probe")
        if probe:
            tasks.append(asyncio.create_task(_loop(runner, kind, probe, started)))
    if "readinessProbe" not in spec:
        await started.wait()
        runner.ready = True
        runner.worker.changed()
    try:
        await asyncio.gather(*tasks)
        await asyncio.Event().wait()  # stay until cancelled so readiness state holds
    finally:
        for t in tasks:
            t.cancel()
