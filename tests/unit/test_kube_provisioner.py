"""The local-directory provisioner of the test node agent: each volume its own directory.

A StatefulSet scaled down (claim deleted) and straight back up makes a claim of the
same name before the old volume's release is handled; that release must not delete
the new claim's data.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from tests.kube.agent import provisioner
from tests.kube.agent.api import Api


class RecordingApi:
    """Records the volumes created and deleted (no API server needed for this logic)."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    async def ensure(self, path: str, body: dict[str, Any]) -> None:
        self.created.append(body)

    async def delete(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        self.deleted.append(path)
        return {}


def claim(uid: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "data-pg-shard-0-2", "uid": uid},
        "spec": {"storageClassName": provisioner.CLASS, "accessModes": ["ReadWriteOnce"]},
        "status": {"phase": "Pending"},
    }


def released(pv: dict[str, Any]) -> dict[str, Any]:
    return {**pv, "status": {"phase": "Released"}}


async def scale_down_and_up(p: provisioner.Provisioner, api: RecordingApi) -> tuple[Path, Path]:
    """The old claim, a new one of the same name, then the old volume's release: the
    old and the new volume's directories."""
    await p._on_claim("ADDED", claim("old"))
    old = api.created[-1]
    await p._on_claim("ADDED", claim("new"))  # scaled back up before the release is seen
    new = api.created[-1]
    await p._on_volume("MODIFIED", released(old))
    assert api.deleted == [f"/api/v1/persistentvolumes/{old['metadata']['name']}"]
    return Path(old["spec"]["hostPath"]["path"]), Path(new["spec"]["hostPath"]["path"])


def test_a_released_volume_leaves_a_new_claim_of_the_same_name_alone(tmp_path: Path) -> None:
    api = RecordingApi()
    old, new = asyncio.run(
        scale_down_and_up(provisioner.Provisioner(cast(Api, api), tmp_path), api)
    )
    assert new.is_dir(), "the old volume's release deleted the new claim's directory"
    assert not old.exists()
