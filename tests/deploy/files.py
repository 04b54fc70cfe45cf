"""Readers of the deployment files in deploy/ for the tests beside this module."""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
#: the Kubernetes version the manifests are written for and validated against
KUBERNETES_VERSION = "1.33.0"
#: Grafana's interval variables, replaced by a duration before a query is parsed
GRAFANA_INTERVALS = re.compile(r"\$\{?__(rate_interval|interval|range)\b\}?")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "docker-compose.yml")


def k8s_files() -> list[Path]:
    """The manifests kubectl applies (kustomization.yaml's resources), in its order."""
    resources = load_yaml(K8S / "kustomization.yaml")["resources"]
    return [K8S / name for name in resources]


@functools.cache
def k8s_documents() -> list[dict[str, Any]]:
    """Every object of the manifests (read once per test session: do not change them)."""
    return [d for path in k8s_files() for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind by name."""
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == kind}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a workload's pod template (a Deployment, or a RayCluster group)."""
    template = workload["spec"]["template"] if "spec" in workload else workload["template"]
    return list(template["spec"]["containers"])


def flag(args: list[str], name: str) -> str:
    """The value after `name` in a command line (KeyError when it is absent)."""
    if name not in args:
        raise KeyError(f"{name} not in {shlex.join(args)}")
    return args[args.index(name) + 1]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "boothstudio.json").read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, Grafana's interval variables made durations."""
    return [
        GRAFANA_INTERVALS.sub("5m", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def alert_queries() -> list[str]:
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter's custom rules (deploy/prometheus/adapter-values.yaml)."""
    return list(load_yaml(PROMETHEUS / "adapter-values.yaml")["rules"]["custom"])


def metric_names(expr: str) -> set[str]:
    """The metric names that a PromQL expression selects (parsed, not pattern-matched)."""
    import promql_parser

    names: set[str] = set()
    nameless: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                nameless.append(str(node))

    promql_parser.walk(promql_parser.parse(expr), visit)
    assert not nameless, f"{expr!r} selects series without a metric name: {nameless}"
    return names
