"""Check ShardedCluster objects against the CRD file without an API server.

The unit tests use this to exercise ``crds/shardedclusters.pgshard.io.yaml`` the
way kube-apiserver does, as far as Python can: structural defaulting, the
OpenAPI schema (with ``jsonschema``) and the ``x-kubernetes-validations`` CEL
rules (with ``cel-python``). The e2e tests check the same file against the real
API server.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "shardedclusters.pgshard.io.yaml"


def load_crd() -> dict[str, Any]:
    with CRD_PATH.open() as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def root_schema(crd: Mapping[str, Any] | None = None) -> dict[str, Any]:
    crd = crd or load_crd()
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: absent fields with a
    ``default`` get it, then defaulting continues inside (so ``default: {}`` on an
    object fills that object's own defaults)."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str
    message: str


def _walk_rules(
    schema: Mapping[str, Any], value: Any, old: Any, path: str
) -> Iterator[tuple[str, Mapping[str, Any], Any, Any]]:
    for rule in schema.get("x-kubernetes-validations", ()):
        yield path, rule, value, old
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                old_sub = old.get(name) if isinstance(old, dict) else None
                yield from _walk_rules(sub, value[name], old_sub, f"{path}.{name}")


def cel_problems(schema: Mapping[str, Any], value: Any, old: Any = None) -> list[Problem]:
    """Evaluate every CEL rule on the value (transition rules only when ``old`` is given)."""
    env = celpy.Environment()
    problems = []
    for path, rule, val, old_val in _walk_rules(schema, value, old, ""):
        text = rule["rule"]
        activation = {"self": celpy.json_to_cel(val)}
        if "oldSelf" in text:
            if old_val is None:
                continue
            activation["oldSelf"] = celpy.json_to_cel(old_val)
        result = env.program(env.compile(text)).evaluate(activation)
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and result):
            problems.append(Problem(path.lstrip("."), rule["message"]))
    return problems


def problems(obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[Problem]:
    """What the API server would refuse in ``obj`` (after defaulting), schema first."""
    schema = root_schema()
    defaulted = apply_defaults(schema, dict(obj))
    found = [
        Problem(".".join(str(p) for p in e.absolute_path), e.message)
        for e in jsonschema.Draft7Validator(schema).iter_errors(defaulted)
    ]
    if found:
        return found
    old_defaulted = apply_defaults(schema, dict(old)) if old is not None else None
    return cel_problems(schema, defaulted, old_defaulted)


FAST_FAILOVER: Mapping[str, Any] = {
    "shards": 1,
    "replicasPerShard": 2,
    "replication": {"mode": "sync"},
    "failover": {"detectionSeconds": 2, "cooldownSeconds": 0, "leaseTtlSeconds": 5},
    "proxy": {"replicas": 1},
}
"""One sync shard with two followers that fails over within seconds, without cooldown:
the Kubernetes failover tests' and benches' cluster (copy it before changing it)."""


def cluster(spec: Mapping[str, Any], name: str = "demo") -> dict[str, Any]:
    """A ShardedCluster object around ``spec``."""
    return {
        "apiVersion": "pgshard.io/v1alpha1",
        "kind": "ShardedCluster",
        "metadata": {"name": name, "namespace": "default"},
        "spec": dict(spec),
    }
