"""The node agent's image mode: which containers run from the image, and the ``podman run``
they get from a shard pod's spec as the operator writes it (the e2e image mode runs it)."""

from __future__ import annotations

from pathlib import Path

from pgshard_operator.k8s import manifests
from tests.kube.agent.imagepods import LABEL, PodImage


def test_only_containers_of_the_image_run_from_it(tmp_path: Path) -> None:
    image = PodImage("pgshard:0.1.0", tmp_path)
    assert image.runs({"image": "pgshard:0.1.0"})
    assert image.runs({"image": "localhost/pgshard:0.1.0"})
    assert not image.runs({"image": "pgshard:0.0.9"})
    assert not image.runs({"image": "busybox"})
    assert 'runtime = "runc"' in (tmp_path / "containers.conf").read_text()


def test_podman_run_follows_the_pod_spec(tmp_path: Path) -> None:
    image = PodImage("pgshard:0.1.0", tmp_path)
    container = {
        "name": "instance",
        "image": "pgshard:0.1.0",
        "command": ["pgshard-instance"],
        "securityContext": manifests.container_security(),
    }
    mounts = [
        {"source": "/state/pvc-1", "target": "/var/lib/pgshard", "readOnly": False},
        {"source": "/state/pod/hosts", "target": "/etc/hosts", "readOnly": True},
    ]
    env = {"PATH": "/usr/bin", "HOME": "/root", "POD_IP": "198.18.0.3"}
    argv = image.run_argv("pgk0-abc-instance", "/run/netns/pgk0-abc", "db-0", container,
                          mounts, (26, 26, [26]), env, ["pgshard-instance", "--x"])  # fmt: skip
    assert argv[:3] == ["podman", "--storage-driver=vfs", "run"]
    assert argv[-3:] == ["pgshard:0.1.0", "pgshard-instance", "--x"]
    options = argv[3:-3]
    for expected in (
        "--name=pgk0-abc-instance",
        "--rm",
        f"--label={LABEL}={tmp_path}",
        "--network=ns:/run/netns/pgk0-abc",
        "--hostname=db-0",
        "--no-hosts",
        "--user=26:26",
        "--group-add=26",
        "--read-only",
        "--read-only-tmpfs=false",
        "--security-opt=no-new-privileges",
        "--cap-drop=ALL",
        "--mount=type=bind,source=/state/pvc-1,destination=/var/lib/pgshard",
        "--mount=type=bind,source=/state/pod/hosts,destination=/etc/hosts,ro=true",
        "--env=POD_IP=198.18.0.3",
    ):
        assert expected in options, expected
    # PATH and HOME come from the image and its user, not from the host.
    assert not [o for o in options if o.startswith(("--env=PATH=", "--env=HOME="))]


def test_a_writable_root_when_the_pod_allows_it(tmp_path: Path) -> None:
    image = PodImage("pgshard:0.1.0", tmp_path)
    argv = image.run_argv("n", "/run/netns/x", "h", {"name": "c"}, [], (None, None, []), {}, [])
    assert argv[-1] == "pgshard:0.1.0"  # no command: the image's CMD
    assert "--read-only" not in argv
    assert not [o for o in argv if o.startswith(("--user=", "--cap-drop="))]
