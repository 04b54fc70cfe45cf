"""Deployment files stay consistent with the ports and service names.

Rerun: `.venv/bin/pytest tests/test_deploy.py -v`
"""

from __future__ import annotations

import yaml

from boothstudio.shared.config import DEFAULT_PORTS
from tests.helpers import ROOT, SERVICE_FULL_NAMES

DEPLOY = ROOT / "deploy"


def test_compose_runs_each_service_as_its_own_container() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for name, (port, metrics_port) in DEFAULT_PORTS.items():
        svc = compose["services"][name]
        assert svc["command"][:3] == ["python", "-m", f"boothstudio.services.{name}"]
        assert f"{port}:{port}" in svc["ports"] and f"{metrics_port}:{metrics_port}" in svc["ports"]
        assert svc["environment"]["BOOTHSTUDIO_HOST"] == "0.0.0.0"


def test_prometheus_scrapes_every_metrics_port() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {f"{n}:{m}" for n, (_, m) in DEFAULT_PORTS.items()}


def test_kubernetes_generator_service_is_headless_and_probes_use_grpc_health() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "boothstudio.yaml").read_text()))
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services["generator"]["spec"]["clusterIP"] == "None"
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name, (port, _) in DEFAULT_PORTS.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["grpc"] == {
            "port": port,
            "service": SERVICE_FULL_NAMES[name],
        }
        assert f"boothstudio.services.{name}" in container["args"]
