"""The node agent: ``python -m tests.kube.agent CONFIG.json`` (started by tests.kube.cluster).

Wires the parts together: the bridge (network), Node registration and heartbeat (node),
the pods bound to this node (pods), the Service proxy (services), the volume provisioner
(provisioner), NetworkPolicy egress as pod routes (policies) and the failure-injection
socket (control). With ``pod_image`` in the config, containers of that image run with
podman (imagepods); ``image_env`` gives process-mode containers of the images it names
their environment. On SIGTERM it stops every pod's processes, removes network
namespaces and the bridge, and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web
from tests.kube.agent import control, kubelet_api, network
from tests.kube.agent.api import Api, Informer
from tests.kube.agent.imagepods import PodImage
from tests.kube.agent.node import NodeHeartbeat
from tests.kube.agent.pods import NodeContext, PodManager
from tests.kube.agent.policies import Enforcer
from tests.kube.agent.provisioner import Provisioner
from tests.kube.agent.services import ServiceProxy

log = logging.getLogger("agent")


async def run(config: dict[str, object]) -> None:
    index = int(str(config["index"]))
    state_dir = Path(str(config["state_dir"]))
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    api = Api(Path(str(config["kubeconfig"])))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    network.setup_node(index)
    services = Informer(api, "/api/v1/services")
    slices = Informer(api, "/apis/discovery.k8s.io/v1/endpointslices")
    proxy = ServiceProxy(services, slices, int(str(config["api_port"])))
    node = NodeHeartbeat(
        api,
        str(config["node"]),
        network.gateway_ip(index),
        str(config["kubernetes_version"]),
        int(str(config["kubelet_port"])),
    )
    pod_image = PodImage(str(config["pod_image"]), state_dir) if config.get("pod_image") else None
    image_env = {str(k): dict(v) for k, v in dict(config.get("image_env") or {}).items()}
    ctx = NodeContext(
        api, node.name, index, state_dir, services, slices, node.enabled, pod_image, image_env
    )
    pods = PodManager(ctx)
    policies = Informer(api, "/apis/networking.k8s.io/v1/networkpolicies")
    enforcer = Enforcer(index, policies, pods.informer, pods.network_of)
    for informer in (services, slices):
        informer.on_change(lambda _k, _o: pods.refresh_hosts())
    provisioner = Provisioner(api, state_dir / "volumes")
    runner = web.AppRunner(control.make_app(pods, node))
    await runner.setup()
    socket_path = str(config["control_socket"])
    await asyncio.to_thread(Path(socket_path).unlink, missing_ok=True)
    await web.UnixSite(runner, socket_path).start()
    kubelet = web.AppRunner(kubelet_api.make_app(pods))
    await kubelet.setup()
    tls = kubelet_api.ssl_context(
        Path(str(config["kubelet_cert"])), Path(str(config["kubelet_key"])), Path(str(config["ca"]))
    )
    await web.TCPSite(
        kubelet, ctx.host_ip, int(str(config["kubelet_port"])), ssl_context=tls
    ).start()
    tasks = [
        asyncio.create_task(services.run()),
        asyncio.create_task(slices.run()),
        asyncio.create_task(provisioner.run()),
        asyncio.create_task(policies.run()),
        asyncio.create_task(enforcer.run()),
    ]
    try:
        await asyncio.wait_for(asyncio.gather(services.synced.wait(), slices.synced.wait()), 30)
        await node.register()
        tasks += [asyncio.create_task(node.run()), asyncio.create_task(pods.informer.run())]
        log.info("node %s ready; pods on %s", ctx.node, network.pod_cidr(index))
        await stop.wait()
    finally:
        log.info("stopping: pods, proxy, network")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pods.shutdown()
        await proxy.close()
        await runner.cleanup()
        await kubelet.cleanup()
        await api.close()
        network.teardown_node(index)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(run(config))


if __name__ == "__main__":
    main()
