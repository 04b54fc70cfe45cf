"""deploy/docker-compose.yml: two replicas of each service on PostgreSQL and MinIO, a Ray head
and worker that the trainers join, Prometheus and Grafana, all wired to each other consistently.

Rerun: `.venv/bin/pytest tests/deploy/test_compose.py -v`
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

from boothstudio.shared.config import DEFAULT_PORTS
from tests.deploy.files import DEPLOY, GRAFANA, PROMETHEUS, compose, flag, load_yaml


def replicas(name: str) -> dict[str, dict[str, Any]]:
    """The compose services that run `python -m boothstudio.services.<name>`, by service name."""
    return {
        svc_name: svc
        for svc_name, svc in compose()["services"].items()
        if svc.get("command", [])[:3] == ["python", "-m", f"boothstudio.services.{name}"]
    }


@pytest.mark.parametrize("name", list(DEFAULT_PORTS))
def test_each_service_runs_two_replicas_on_the_shared_stores(name: str) -> None:
    port, metrics_port = DEFAULT_PORTS[name]
    services = replicas(name)
    assert len(services) == 2, services.keys()
    published = []
    for svc in services.values():
        assert flag(svc["command"], "--port") == str(port)
        assert flag(svc["command"], "--metrics-port") == str(metrics_port)
        env = svc["environment"]
        assert env["BOOTHSTUDIO_HOST"] == "0.0.0.0"
        assert env["BOOTHSTUDIO_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["BOOTHSTUDIO_STORAGE_URL"].startswith("s3://")
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        # the other services reach every replica through the shared alias, round robin
        assert name in svc["networks"]["default"]["aliases"]
        assert env[f"BOOTHSTUDIO_{name.upper()}_ADDRESS"] == f"dns:///{name}:{port}"
        assert svc["depends_on"]["minio-init"] == {"condition": "service_completed_successfully"}
        assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}
        published += svc.get("ports", [])
    # one replica publishes the usual ports on the host, so `make`-style clients work unchanged
    assert sorted(published) == sorted([f"{port}:{port}", f"{metrics_port}:{metrics_port}"])


def test_database_and_bucket_are_the_ones_the_services_are_given() -> None:
    services = compose()["services"]
    env = services["catalog-1"]["environment"]
    db = urlsplit(env["BOOTHSTUDIO_DATABASE_URL"])
    pg = services["postgres"]["environment"]
    assert (db.username, db.password, db.hostname, db.port, db.path) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], "postgres", 5432, "/" + pg["POSTGRES_DB"])
    minio = services["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    bucket = urlsplit(env["BOOTHSTUDIO_STORAGE_URL"]).netloc
    init = " ".join(services["minio-init"]["command"])
    assert f"mc mb --ignore-existing store/{bucket}" in init
    assert f"mc alias set store http://minio:9000 {minio['MINIO_ROOT_USER']} " \
           f"{minio['MINIO_ROOT_PASSWORD']}" in init


def test_replicas_have_names_of_their_own() -> None:
    trainers = replicas("trainer")
    ids = {s["environment"]["BOOTHSTUDIO_TRAINER_REPLICA_ID"] for s in trainers.values()}
    assert ids == set(trainers), "replica_id: the service name, stable across restarts"
    for svc in trainers.values():
        assert float(svc["environment"]["BOOTHSTUDIO_TRAINER_LEASE_SECONDS"]) > 0
    generators = replicas("generator")
    advertised = {s["environment"]["BOOTHSTUDIO_GENERATOR_ADVERTISE_ADDRESS"]
                  for s in generators.values()}
    assert advertised == {f"{n}:{DEFAULT_PORTS['generator'][0]}" for n in generators}


def test_trainers_join_the_ray_cluster_and_ray_runs_the_project_image() -> None:
    services = compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["image"] == worker["image"] == services["trainer-1"]["image"]
    assert "--head" in head["command"] and "--port=6379" in head["command"]
    assert "--num-cpus=0" in head["command"], "training runs on the worker, not the head"
    assert "--address=ray-head:6379" in worker["command"]
    entrypoint = DEPLOY / "ray-node.sh"
    assert os.access(entrypoint, os.X_OK)
    # the Dockerfile puts the script where the entrypoint names it
    assert "COPY deploy/ray-node.sh ./deploy/ray-node.sh" in (DEPLOY / "Dockerfile").read_text()
    for svc in replicas("trainer").values():
        assert svc["entrypoint"] == ["/app/deploy/ray-node.sh"]
        assert svc["environment"]["RAY_HEAD_ADDRESS"] == "ray-head:6379"


def test_ray_node_entrypoint_joins_without_resources_then_runs_the_service(tmp_path) -> None:
    """deploy/ray-node.sh with a stand-in `ray` on PATH that records its arguments."""
    fake_ray = tmp_path / "ray"
    fake_ray.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/ray-args\n')
    fake_ray.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "RAY_HEAD_ADDRESS": "ray-head:6379"}
    script = str(DEPLOY / "ray-node.sh")
    out = subprocess.run([script, "sh", "-c", "echo $BOOTHSTUDIO_RAY_ADDRESS"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "auto"
    assert (tmp_path / "ray-args").read_text().split() == [
        "start", "--address=ray-head:6379", "--num-cpus=0", "--num-gpus=0",
        "--disable-usage-stats"]
    env.pop("RAY_HEAD_ADDRESS")
    (tmp_path / "ray-args").unlink()
    out = subprocess.run([script, "sh", "-c", "echo ${BOOTHSTUDIO_RAY_ADDRESS:-local}"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "local" and not (tmp_path / "ray-args").exists()


def test_generators_outlive_their_longest_generation_on_stop() -> None:
    for svc in replicas("generator").values():
        grace = float(flag(svc["command"], "--grace-period"))
        stop = float(svc["stop_grace_period"].removesuffix("s"))
        assert stop > grace >= 300, "Docker must not kill a generation the service would finish"


def test_prometheus_scrapes_every_replica_and_loads_the_alerts() -> None:
    prom = load_yaml(PROMETHEUS / "prometheus.yml")
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    expected = {
        f"{svc}:{DEFAULT_PORTS[name][1]}" for name in DEFAULT_PORTS for svc in replicas(name)
    }
    assert targets == expected
    assert prom["rule_files"] == ["alerts.yml"]
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_is_provisioned_with_the_dashboard_and_the_prometheus_source() -> None:
    grafana = compose()["services"]["grafana"]
    host_dirs = dict(v.removesuffix(":ro").split(":") for v in grafana["volumes"])
    mounts = {inside: host for host, inside in host_dirs.items()}
    assert (DEPLOY / mounts["/etc/grafana/provisioning"].removeprefix("./")).is_dir()
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "boothstudio.yml")["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert mounts[dashboards_dir] == "./grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / home.removeprefix(dashboards_dir + "/")).is_file()
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"


def test_compose_file_follows_the_compose_specification() -> None:
    """Parsed by the compose_spec crate (its Python binding), which refuses unknown keys and
    malformed values (ports, durations, depends_on conditions); YAML anchors are resolved
    first, and the x- extension blocks they come from are dropped."""
    from compose_spec import PyCompose

    document = {k: v for k, v in compose().items() if not k.startswith("x-")}
    parsed = PyCompose.from_json(json.dumps(document))
    assert set(parsed.service_names()) == set(document["services"])
    broken = json.loads(json.dumps(document))
    broken["services"]["catalog-1"]["stop_grace_period"] = "half a minute"
    with pytest.raises(ValueError, match="duration"):
        PyCompose.from_json(json.dumps(broken))


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config`, where Docker's compose plugin is installed (not on CI here)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"],
                                        capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed")
    out = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config",
                          "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
