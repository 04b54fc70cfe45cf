"""deploy/prometheus and deploy/grafana: the configs and alert rules pass promtool (with the
alerts' own unit tests), and every metric the dashboard, the alerts and the autoscaler's
adapter rule query is one the real services export.

promtool comes from Debian's `prometheus` package (.ci/run installs it); without it these tests
skip, unless BOOTHSTUDIO_REQUIRE_PROMTOOL=1 (CI), where a missing promtool fails.

Rerun: `.venv/bin/pytest tests/deploy/test_monitoring.py -v`
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from boothstudio.shared.config import SERVICE_NAMES
from tests.deploy.files import (
    GRAFANA,
    PROMETHEUS,
    adapter_rules,
    alert_queries,
    dashboard,
    dashboard_queries,
    load_yaml,
    metric_names,
)

#: series Prometheus makes itself for every target
PROMETHEUS_OWN = {"up"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("BOOTHSTUDIO_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is missing (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> str:
    out = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_compose_prometheus_config_passes_promtool(promtool: str) -> None:
    out = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out


def test_kubernetes_prometheus_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery: there the discovery block is
    swapped for a static target and the rest (relabelling, rule files) is checked."""
    config = load_yaml(PROMETHEUS / "prometheus-k8s.yml")
    probe = subprocess.run([promtool, "check", "config", "prometheus-k8s.yml"], cwd=PROMETHEUS,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode == 0:
        return
    assert "kubernetes_sd_configs not found" in probe.stdout + probe.stderr, probe.stdout
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["10.0.0.1:9102"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path)
    run_promtool(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)


def test_alert_rules_pass_promtool_and_their_unit_tests(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", "alerts.yml")
    run_promtool(promtool, "test", "rules", "alerts_test.yml")
    alerts = {r["alert"] for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"]
              for r in g["rules"]}
    assert {"BoothStudioServiceDown", "BoothStudioGeneratorQueueFull",
            "BoothStudioTrainingJobFailed"} <= alerts


def test_alert_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The unit tests are not vacuous: a queue alert that waits 10 minutes fails them."""
    rules = (PROMETHEUS / "alerts.yml").read_text()
    broken = rules.replace(
        'outcome="rejected"}[1m])) > 0\n        for: 5m', 'outcome="rejected"}[1m])) > 0\n'
        '        for: 10m')
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path)
    out = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "BoothStudioGeneratorQueueFull" in out.stdout + out.stderr


def test_dashboard_shows_what_operators_need() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    source = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    uid = source["datasources"][0]["uid"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
    used = set().union(*(metric_names(q) for q in dashboard_queries()))
    # generation rate and latency, queue depth, training jobs by state, step rate, errors
    assert {
        "boothstudio_generator_requests_total", "boothstudio_generator_images_total",
        "boothstudio_generator_generation_seconds_bucket", "boothstudio_generator_queue_depth",
        "boothstudio_trainer_jobs", "boothstudio_trainer_steps_total",
        "grpc_server_handled_total",
    } <= used
    queries = dashboard_queries()
    assert any("by (state)" in q and "boothstudio_trainer_jobs" in q for q in queries)
    assert any("by (grpc_code)" in q and "grpc_server_handled_total" in q for q in queries)


def exported_names(metrics_text: str) -> set[str]:
    """Series names a scrape of this text offers, with the suffixes of each family's type (a
    labelled family with no series yet still counts)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "summary": ["", "_sum", "_count"]}
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def test_queried_metrics_are_exported_by_the_services(
        start_service: Callable[..., Any]) -> None:
    exported: set[str] = set()
    for name in SERVICE_NAMES:
        svc = start_service(name)
        with urllib.request.urlopen(svc.metrics_url, timeout=30) as response:
            exported |= exported_names(response.read().decode())
    queries = {
        **{f"dashboard: {q}": q for q in dashboard_queries()},
        **{f"alert: {q}": q for q in alert_queries()},
        **{f"adapter: {r['seriesQuery']}": r["seriesQuery"] for r in adapter_rules()},
    }
    missing = {
        where: sorted(metric_names(q) - exported - PROMETHEUS_OWN) for where, q in queries.items()
    }
    assert not {k: v for k, v in missing.items() if v}
    # and the check can fail: a name the services do not export is noticed
    assert metric_names("rate(boothstudio_generator_imagez_total[5m])") - exported
