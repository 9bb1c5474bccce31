"""Runs the pods bound to this node as local processes, and reports their status.

``PodManager`` watches pods with ``spec.nodeName`` = this node and keeps one ``PodWorker``
per pod UID. A worker gives the pod a network namespace and address (network.py), sets up
its volumes (volumes.py), runs init containers in order, then supervises each container
(``ContainerRunner``): start through the launcher (launch.py), probes (probes.py),
restarts per ``restartPolicy`` with exponential back-off (1 s doubling to 30 s: shorter
than a kubelet's 10 s..5 min so tests stay fast), and patches ``status`` (phase,
conditions, container states, podIP) after every change. When the pod is deleted it sends
SIGTERM to each container's main process, waits the grace period, SIGKILLs what is left of
the container's process group, removes the namespace and the pod's directory, and deletes
the pod object (grace 0) as a kubelet does. Processes are signalled by pid only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import pwd
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from tests.kube.agent import network, podenv, probes, procutil
from tests.kube.agent.api import Api, ApiError, Informer
from tests.kube.agent.imagepods import PodImage
from tests.kube.agent.volumes import VolumeNotReady, Volumes

log = logging.getLogger(__name__)
Obj = dict[str, Any]

LAUNCHER = str(Path(__file__).with_name("launch.py"))
# What stands for a container image here: this checkout's sources and the interpreter with
# its packages (e.g. a virtualenv). A pod's volume must not hide them, as a volume on /tmp
# would when the checkout or the virtualenv lives under the host's /tmp.
_CHECKOUT = Path(__file__).resolve().parents[3]
IMAGE_PATHS = tuple(dict.fromkeys(str(p) for p in (_CHECKOUT, sys.prefix, sys.base_prefix)))
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeContext:
    """What every pod worker needs from the agent."""

    def __init__(
        self,
        api: Api,
        node: str,
        index: int,
        state_dir: Path,
        services: Informer,
        slices: Informer,
        connected: asyncio.Event,
        pod_image: PodImage | None = None,
        image_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.api = api
        # Image mode (imagepods.py): containers of this image run with podman.
        self.pod_image = pod_image
        # Process mode: what a container of each named image gets in its environment, as
        # the image's ENV would (cluster.up(image_env=...)).
        self.image_env = image_env or {}
        # Cleared while a stopped-heartbeat fault simulates a node cut off from the API
        # server: then pod status is not reported either.
        self.connected = connected
        self.node = node
        self.index = index
        self.state_dir = state_dir
        self.host_ip = network.gateway_ip(index)
        self.kubernetes_ip = network.kubernetes_service_ip(index)
        self.addresses = network.AddressPool(index)
        self.services = services
        self.slices = slices


def _summary(status: Obj) -> tuple[object, ...]:
    """The parts of a pod status this node owns and re-asserts when they differ."""
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    ready = [c.get("ready") for c in status.get("containerStatuses") or []]
    return (status.get("phase"), conditions.get("Ready"), status.get("podIP"), ready)


class ContainerRunner:
    """One container of a pod: its process, probes, restarts and reported state."""

    def __init__(self, worker: PodWorker, spec: Obj, init: bool) -> None:
        self.worker = worker
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.restart_count = 0
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.ready = False
        self.started = False
        self.proc: asyncio.subprocess.Process | None = None
        self.ident: procutil.Identity | None = None
        self.exit_code: int | None = None
        self._killed_by_probe = asyncio.Event()
        self.pid_file = worker.dir / f"{self.name}.pid.json"
        self.container_name = f"{worker.netns}-{self.name}"  # image mode: unique per node

    def status(self) -> Obj:
        s: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
        }
        if self.ident:
            s["containerID"] = f"process://{self.ident.pid}"
        if self.last_state:
            s["lastState"] = self.last_state
        return s

    def _identity(self) -> tuple[int | None, int | None, list[int]]:
        pod_ctx = self.worker.pod["spec"].get("securityContext") or {}
        ctx = self.spec.get("securityContext") or {}
        uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) and not uid:
            raise podenv.PodSpecError(
                f"container {self.name!r} has runAsNonRoot but no non-zero runAsUser; "
                "this node has no image user to fall back on: set runAsUser"
            )
        if uid is not None and gid is None:
            try:
                gid = pwd.getpwuid(int(uid)).pw_gid
            except KeyError:
                gid = 0
        groups = [int(g) for g in pod_ctx.get("supplementalGroups") or []]
        if pod_ctx.get("fsGroup") is not None:
            groups.append(int(pod_ctx["fsGroup"]))
        return uid, gid, groups

    async def _environment(self, uid: int | None) -> dict[str, str]:
        w = self.worker
        env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": w.hostname}
        try:
            env["HOME"] = pwd.getpwuid(uid if uid is not None else 0).pw_dir
        except KeyError:
            env["HOME"] = "/"
        services = list(w.ctx.services.items.values())
        if w.pod["spec"].get("enableServiceLinks", True) is False:
            services = []
        env.update(podenv.service_env(services, w.ns, w.ctx.kubernetes_ip))
        env.update(w.ctx.image_env.get(self.spec.get("image", ""), {}))
        for source in self.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = await w.volumes._configmap(ref["name"], bool(ref.get("optional")))
            else:
                ref = source["secretRef"]
                data = await w.volumes._secret(ref["name"], bool(ref.get("optional")))
            env.update({prefix + k: v.decode() for k, v in (data or {}).items()})
        for var in self.spec.get("env") or []:
            name = var["name"]
            if "value" in var:
                env[name] = podenv.expand(var["value"], env)
            elif "valueFrom" in var:
                env[name] = await self._value_from(var["valueFrom"], name)
            else:
                env[name] = ""
        return env

    async def _value_from(self, source: Obj, name: str) -> str:
        w = self.worker
        if "fieldRef" in source:
            return podenv.field_ref(w.pod, source["fieldRef"]["fieldPath"], w.ip, w.ctx.host_ip)
        for kind in ("configMapKeyRef", "secretKeyRef"):
            if kind in source:
                ref = source[kind]
                optional = bool(ref.get("optional"))
                getter = w.volumes._configmap if kind == "configMapKeyRef" else w.volumes._secret
                data = await getter(ref["name"], optional) or {}
                if ref["key"] not in data:
                    if optional:
                        return ""
                    raise VolumeNotReady(f"env {name}: key {ref['key']!r} not in {ref['name']}")
                return data[ref["key"]].decode()
        if "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            kind, _, what = resource.partition(".")
            return str((self.spec.get("resources") or {}).get(kind, {}).get(what, "0"))
        raise podenv.PodSpecError(f"env {name}: unsupported valueFrom {sorted(source)}")

    def _mounts(self) -> list[Obj]:
        w = self.worker
        mounts: list[Obj] = []
        own_hosts = False
        for m in self.spec.get("volumeMounts") or []:
            if m["name"] not in w.volumes.paths:
                raise podenv.PodSpecError(f"volumeMount {m['name']!r} names no volume of the pod")
            source = w.volumes.paths[m["name"]]
            if m.get("subPath"):
                source = source / m["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
                    shutil.copystat(w.volumes.paths[m["name"]], source)
                    st = w.volumes.paths[m["name"]].stat()
                    os.chown(source, st.st_uid, st.st_gid)
            own_hosts |= m["mountPath"] == "/etc/hosts"
            mounts.append(
                {
                    "source": str(source),
                    "target": m["mountPath"],
                    "readOnly": bool(m.get("readOnly")),
                }
            )
        if not own_hosts:
            mounts.append({"source": str(w.hosts_path), "target": "/etc/hosts", "readOnly": True})
        return mounts

    async def start(self) -> None:
        uid, gid, groups = self._identity()
        env = await self._environment(uid)
        image = self.worker.ctx.pod_image
        if image is not None and image.runs(self.spec):
            await self._start_container(image, (uid, gid, groups), env)
            return
        argv = podenv.argv(self.spec, env)
        spec = {
            "netns": network.netns_path(self.worker.netns),
            "hostname": self.worker.hostname,
            "mounts": self._mounts(),
            "image": IMAGE_PATHS,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "workdir": self.spec.get("workingDir") or "/",
            "argv": argv,
        }
        # A local file open is quick; the event loop can afford it.
        with open(self.worker.dir / f"{self.name}.log", "ab") as logf:  # noqa: ASYNC230
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                LAUNCHER,
                json.dumps(spec),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group, to stop the whole container
            )
        self._started(self.proc.pid, env, uid, gid)

    async def _start_container(
        self, image: PodImage, ident: tuple[int | None, int | None, list[int]], env: dict[str, str]
    ) -> None:
        """Run the container from the image (``podman run``, attached); its main process
        (the container's pid 1, seen from the host) stands for it as a process does."""
        words = [*(self.spec.get("command") or []), *(self.spec.get("args") or [])]
        argv = [podenv.expand(a, env) for a in words]
        run = image.run_argv(
            self.container_name, network.netns_path(self.worker.netns), self.worker.hostname,
            self.spec, self._mounts(), ident, env, argv,
        )  # fmt: skip
        with open(self.worker.dir / f"{self.name}.log", "ab") as logf:  # noqa: ASYNC230
            self.proc = await asyncio.create_subprocess_exec(
                *run,
                env=image.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            pid = await image.pid(self.container_name, self.proc, timeout=120)
        except (TimeoutError, asyncio.CancelledError) as e:
            # Not started in time, or the pod is going away while it starts: nothing of
            # the container may stay behind.
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
            await image.remove(self.container_name)
            if isinstance(e, TimeoutError):
                raise podenv.PodSpecError(f"{e}; see {self.worker.dir / self.name}.log") from e
            raise
        self._started(pid or self.proc.pid, env, ident[0], ident[1])

    def _started(self, pid: int, env: dict[str, str], uid: int | None, gid: int | None) -> None:
        self.ident = procutil.Identity(**procutil.identity(pid))
        self.pid_file.write_text(json.dumps(procutil.identity(pid)))
        self.env = env
        self.uid, self.gid = uid, gid
        self.exit_code = None
        self.state = {"running": {"startedAt": now()}}
        self.ready = False
        self.started = "startupProbe" not in self.spec
        self.worker.changed()

    async def run_once(self) -> int:
        """Start the process, run its probes, wait for it to exit; returns its exit code."""
        try:
            await self.start()
        except (podenv.PodSpecError, VolumeNotReady, ApiError) as e:
            reason = "CreateContainerConfigError"
            self.state = {"waiting": {"reason": reason, "message": str(e)}}
            self.worker.changed()
            log.warning("pod %s container %s: %s", self.worker.key, self.name, e)
            return 128
        assert self.proc is not None
        probe_task = None
        if not self.init:
            probe_task = asyncio.create_task(probes.run_all(self))
        code = await self.proc.wait()
        if probe_task:
            probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe_task
        # As a container runtime does when a container's main process dies: nothing of it
        # may survive (PostgreSQL backends of a killed postmaster, for example).
        if self.ident:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.ident.pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        image = self.worker.ctx.pod_image
        if image is not None and image.runs(self.spec):
            await image.remove(self.container_name)  # if ``podman run`` itself was killed
        code = code if code >= 0 else 128 - code
        self.exit_code = code
        started = self.state.get("running", {}).get("startedAt", now())
        reason = "Completed" if code == 0 else "Error"
        self.state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": now(),
            }
        }
        self.ready = False
        self.started = False
        self.worker.changed()
        return code

    async def supervise(self) -> None:
        backoff = BACKOFF_START
        while not self.worker.terminating.is_set():
            code = await self.run_once()
            if self.worker.terminating.is_set():
                return
            policy = self.worker.pod["spec"].get("restartPolicy", "Always")
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            self.last_state = self.state if "terminated" in self.state else self.last_state
            self.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {backoff:.0f}s restarting failed container",
                }
            }
            self.worker.changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.worker.terminating.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            self.restart_count += 1

    def exec_command(self, command: list[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run ``command`` inside the running container."""
        image = self.worker.ctx.pod_image
        if image is not None and image.runs(self.spec):
            return image.command("exec", self.container_name, *command), image.env
        assert self.ident is not None
        argv = ["nsenter", f"--target={self.ident.pid}", "--net", "--mount", "--uts"]
        if self.uid is not None:
            argv += [f"--setuid={self.uid}", f"--setgid={self.gid or 0}"]
        return [*argv, "--", *command], self.env

    def kill_for_probe(self, why: str) -> None:
        """A failed liveness/startup probe: stop the container; supervise() restarts it."""
        log.info("pod %s container %s: %s; restarting", self.worker.key, self.name, why)
        if self.ident:
            asyncio.get_running_loop().create_task(self.stop(self.worker.grace_seconds()))

    async def stop(self, grace: float) -> None:
        """SIGTERM the main process, wait ``grace`` seconds, then SIGKILL its process group."""
        if self.proc is None or self.proc.returncode is not None or self.ident is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.ident.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
            os.kill(self.ident.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            procutil.signal_group(self.ident, signal.SIGKILL)
            await self.proc.wait()


class PodWorker:
    """Everything this node does for one pod (one UID)."""

    def __init__(self, ctx: NodeContext, pod: Obj) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta.get("namespace", "default")
        self.name: str = meta["name"]
        self.key = f"{self.ns}/{self.name}"
        self.dir = ctx.state_dir / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.netns = f"{network.netns_prefix(ctx.index)}{self.uid[:8]}"
        self.hostname: str = pod["spec"].get("hostname") or self.name
        self.hosts_path = self.dir / "hosts"
        self.ip = ""
        self.network_ready = False  # its namespace and routes are set up
        self.start_time = now()
        self.terminating = asyncio.Event()
        self.gone = False  # the API object is already deleted
        self.init_done = False
        self.pending_message = ""
        self.init_runners = [
            ContainerRunner(self, c, True) for c in pod["spec"].get("initContainers") or []
        ]
        self.runners = [ContainerRunner(self, c, False) for c in pod["spec"]["containers"]]
        self._changed = asyncio.Event()
        self.volumes = Volumes(ctx.api, pod, self.dir, "", ctx.host_ip)
        self.task = asyncio.create_task(self.run(), name=f"pod {self.key}")
        self.status_task = asyncio.create_task(self._publish(), name=f"status {self.key}")

    def changed(self) -> None:
        self._changed.set()

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.terminating.set()
        elif self.ctx.connected.is_set() and _summary(pod.get("status") or {}) != _summary(
            self.status()
        ):
            # Someone else changed the status (the node lifecycle controller marks pods
            # NotReady while the node is unreachable): report ours again, as a kubelet does.
            self.changed()

    def grace_seconds(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return float(spec.get("terminationGracePeriodSeconds", 30))

    def write_hosts(self) -> None:
        if not self.ip or not self.dir.exists():
            return
        text = podenv.hosts_file(
            self.pod,
            self.ip,
            list(self.ctx.services.items.values()),
            list(self.ctx.slices.items.values()),
        )
        # Rewritten in place (same inode), so the bind mounts in running containers see it.
        with open(self.hosts_path, "w") as f:
            f.write(text)

    async def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.ip = self.ctx.addresses.take()
        self.volumes.pod_ip = self.ip
        await asyncio.to_thread(network.setup_pod, self.ctx.index, self.netns, self.ip)
        self.network_ready = True
        self.hosts_path.touch()
        self.write_hosts()
        self.changed()
        while not self.terminating.is_set():
            try:
                await self.volumes.setup()
                self.pending_message = ""
                return
            except VolumeNotReady as e:
                self.pending_message = str(e)
                self.changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.terminating.wait(), 1)

    async def run(self) -> None:
        life = asyncio.create_task(self._live())
        await self.terminating.wait()
        await self._shutdown()
        life.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await life
        # A container may have been starting while we stopped the others.
        await asyncio.gather(*(r.stop(1) for r in [*self.init_runners, *self.runners]))
        await self._finish()

    async def _live(self) -> None:
        try:
            await self._prepare()
            if not self.terminating.is_set():
                await self._run_containers()
        except podenv.PodSpecError as e:
            self.pending_message = str(e)
            self.changed()
            log.warning("pod %s cannot run: %s", self.key, e)
        except Exception:
            log.exception("pod %s failed", self.key)

    async def _run_containers(self) -> None:
        for runner in self.init_runners:
            while not self.terminating.is_set():
                code = await runner.run_once()
                if code == 0:
                    break
                if self.pod["spec"].get("restartPolicy", "Always") == "Never":
                    self.changed()
                    return
                runner.restart_count += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.terminating.wait(), BACKOFF_START)
        self.init_done = True
        self.changed()
        await asyncio.gather(*(r.supervise() for r in self.runners))
        self.changed()

    async def _shutdown(self) -> None:
        grace = 2.0 if self.gone else self.grace_seconds()
        await asyncio.gather(*(r.stop(grace) for r in [*self.init_runners, *self.runners]))

    async def _finish(self) -> None:
        self.network_ready = False
        await asyncio.to_thread(network.teardown_pod, self.netns)
        if self.ip:
            self.ctx.addresses.give_back(self.ip)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)
        self.status_task.cancel()
        if not self.gone:
            with contextlib.suppress(ApiError):
                await self.ctx.api.delete(
                    f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                )

    def status(self) -> Obj:
        spec = self.pod["spec"]
        policy = spec.get("restartPolicy", "Always")
        running = [r for r in self.runners if "running" in r.state]
        terminated = [r for r in self.runners if "terminated" in r.state]
        all_ready = bool(self.runners) and all(r.ready for r in self.runners)
        phase = "Pending"
        if self.init_done and (running or terminated):
            phase = "Running"
            if len(terminated) == len(self.runners) and policy != "Always":
                failed = any(r.exit_code for r in self.runners)
                if not failed:
                    phase = "Succeeded"
                elif policy == "Never":
                    phase = "Failed"
        init_failed = policy == "Never" and any(r.exit_code for r in self.init_runners)
        if init_failed:
            phase = "Failed"

        def cond(kind: str, ok: bool, reason: str = "") -> Obj:
            c: Obj = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": None}
            if reason and not ok:
                c["reason"] = reason
            return c

        conditions = [
            cond("PodReadyToStartContainers", bool(self.ip)),
            cond("Initialized", self.init_done, "ContainersNotInitialized"),
            cond("ContainersReady", all_ready, "ContainersNotReady"),
            cond("Ready", all_ready and not self.terminating.is_set(), "ContainersNotReady"),
            cond("PodScheduled", True),
        ]
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.ctx.host_ip,
            "hostIPs": [{"ip": self.ctx.host_ip}],
            "startTime": self.start_time,
            "containerStatuses": [r.status() for r in self.runners],
        }
        if self.init_runners:
            status["initContainerStatuses"] = [r.status() for r in self.init_runners]
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.pending_message:
            status["message"] = self.pending_message
            status["reason"] = "ContainerCreating"
        return status

    async def _publish(self) -> None:
        """Patch the pod's status after changes (coalesced); transition times kept stable."""
        last: dict[str, Obj] = {}
        while True:
            await self._changed.wait()
            await self.ctx.connected.wait()
            self._changed.clear()
            status = self.status()
            for c in status["conditions"]:
                prev = last.get(c["type"])
                same = prev is not None and prev["status"] == c["status"]
                c["lastTransitionTime"] = prev["lastTransitionTime"] if same and prev else now()
                last[c["type"]] = c
            try:
                await self.ctx.api.merge_patch(
                    f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
                    {"metadata": {"uid": self.uid}, "status": status},
                )
            except ApiError as e:
                if e.status in (404, 409):
                    return
                log.warning("pod %s status: %s", self.key, e)
                self._changed.set()
            except Exception as e:  # API unreachable for a moment: retry
                log.warning("pod %s status: %s", self.key, e)
                self._changed.set()
            await asyncio.sleep(0.1)


class PodManager:
    """Keeps one worker per pod bound to this node."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.workers: dict[str, PodWorker] = {}
        # Pods already run and stopped here: a late watch event must not start them again.
        self.finished: set[str] = set()
        self.informer = Informer(
            ctx.api, "/api/v1/pods", {"fieldSelector": f"spec.nodeName={ctx.node}"}
        )
        self.informer.on_change(self.handle)

    def handle(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker:
                worker.gone = True
                worker.terminating.set()
            return
        if worker is None:
            if uid in self.finished:
                return
            if pod["status"].get("phase") in ("Succeeded", "Failed") and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                return  # finished before this agent started; nothing to run
            worker = PodWorker(self.ctx, pod)
            self.workers[uid] = worker
            worker.task.add_done_callback(lambda _t, uid=uid: self._done(uid))
        worker.update(pod)

    def _done(self, uid: str) -> None:
        self.workers.pop(uid, None)
        self.finished.add(uid)

    def report_all(self) -> None:
        """Report every pod's status again (after the node was cut off)."""
        for worker in self.workers.values():
            worker.changed()

    def refresh_hosts(self) -> None:
        for worker in self.workers.values():
            worker.write_hosts()

    def network_of(self, uid: str) -> tuple[str, str] | None:
        """The pod's network namespace and IP once set up (policies.Enforcer)."""
        worker = self.workers.get(uid)
        if worker is None or not worker.network_ready:
            return None
        return worker.netns, worker.ip

    def find(self, namespace: str, name: str) -> PodWorker:
        for worker in self.workers.values():
            if worker.ns == namespace and worker.name == name and not worker.terminating.is_set():
                return worker
        raise KeyError(f"no running pod {namespace}/{name} on this node")

    async def shutdown(self, grace: float = 5) -> None:
        """Stop every pod (agent exit): processes and namespaces; API objects are left."""
        workers = list(self.workers.values())
        for w in workers:
            w.gone = True
            w.pod["metadata"]["deletionGracePeriodSeconds"] = grace
            w.terminating.set()
        await asyncio.gather(*(w.task for w in workers), return_exceptions=True)
