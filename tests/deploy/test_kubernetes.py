"""deploy/k8s: valid Kubernetes objects, and the settings that make replicas, autoscaling,
shutdown, secrets and the network policy work together.

Core objects are checked against the Kubernetes API schemas (kubernetes-validate, strict: an
unknown field fails). The KubeRay RayCluster is a custom resource whose schema no package here
ships, so its pod templates are checked as core PodTemplates and its own fields structurally:
spec.{rayVersion, enableInTreeAutoscaling, headGroupSpec, workerGroupSpecs}, a group's
{rayStartParams (strings only), template, groupName, replicas, minReplicas, maxReplicas}, and
the head Service name KubeRay derives (<name>-head-svc) that the trainers join.

Rerun: `.venv/bin/pytest tests/deploy/test_kubernetes.py -v`
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from boothstudio.shared.config import DEFAULT_PORTS
from tests.deploy.files import (
    K8S,
    KUBERNETES_VERSION,
    adapter_rules,
    containers,
    env_of,
    flag,
    k8s_files,
    k8s_objects,
    load_yaml,
    metric_names,
)
from tests.helpers import ROOT, SERVICE_FULL_NAMES

NAMESPACE = "boothstudio"
RAY_KINDS = {("ray.io/v1", "RayCluster")}


def test_kustomization_lists_every_manifest() -> None:
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert {p.name for p in k8s_files()} == files


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_core_objects_match_the_kubernetes_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if (doc["apiVersion"], doc["kind"]) in RAY_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE


def ray_cluster() -> dict[str, Any]:
    (cluster,) = k8s_objects("RayCluster").values()
    return cluster


def ray_groups() -> list[dict[str, Any]]:
    spec = ray_cluster()["spec"]
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def test_ray_cluster_pod_templates_match_the_kubernetes_schema() -> None:
    for group in ray_groups():
        template = {"apiVersion": "v1", "kind": "PodTemplate",
                    "metadata": {"name": "ray", "namespace": NAMESPACE},
                    "template": group["template"]}
        kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)


def test_ray_cluster_fields() -> None:
    cluster = ray_cluster()
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["namespace"] == NAMESPACE
    spec = cluster["spec"]
    assert set(spec) <= {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
                         "headGroupSpec", "workerGroupSpecs", "headServiceAnnotations", "suspend"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["rayVersion"])
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    ray_pins = [Requirement(r).specifier for r in extras.get("ray", [])
                if Requirement(r).name == "ray"]
    # the image installs boothstudio[ray]: the cluster must declare a version it allows
    for pin in ray_pins:
        assert pin.contains(spec["rayVersion"]), (pin, spec["rayVersion"])
    head = spec["headGroupSpec"]
    assert set(head) <= {"rayStartParams", "template", "serviceType", "headService",
                         "enableIngress"}
    assert head["rayStartParams"]["num-cpus"] == "0", "the head trains nothing"
    head_ports = {p["containerPort"] for p in containers(head)[0]["ports"]}
    assert {6379, 8265} <= head_ports
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= {"groupName", "replicas", "minReplicas", "maxReplicas",
                              "rayStartParams", "template", "scaleStrategy", "numOfHosts",
                              "idleTimeoutSeconds", "suspend"}
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", group["groupName"])
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (worker,) = containers(group)
        resources = worker["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert resources["limits"]["nvidia.com/gpu"] >= 1
    for group in ray_groups():
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), \
            "KubeRay's rayStartParams is a map of strings"
        # Ray runs from the services' image, so its workers import the same Lightning module
        assert containers(group)[0]["image"] == containers(deployment("trainer"))[0]["image"]


def deployment(name: str) -> dict[str, Any]:
    return k8s_objects("Deployment")[name]


def pod_spec(name: str) -> dict[str, Any]:
    return dict(deployment(name)["spec"]["template"]["spec"])


def container_of(name: str) -> dict[str, Any]:
    (container,) = containers(deployment(name))
    return container


def command_of(name: str) -> list[str]:
    c = container_of(name)
    return [*c.get("command", []), *c["args"]]


@pytest.mark.parametrize("name", list(DEFAULT_PORTS))
def test_services_run_with_grpc_health_probes_and_drain_before_they_are_killed(
        name: str) -> None:
    port, metrics_port = DEFAULT_PORTS[name]
    c = container_of(name)
    cmd = command_of(name)
    assert f"boothstudio.services.{name}" in cmd
    assert flag(cmd, "--port") == str(port) and flag(cmd, "--metrics-port") == str(metrics_port)
    assert c["readinessProbe"]["grpc"] == {"port": port, "service": SERVICE_FULL_NAMES[name]}
    assert c["livenessProbe"]["grpc"] == {"port": port}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": port, "metrics": metrics_port}
    annotations = deployment(name)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics_port)}
    # the kubelet waits longer than the service drains (in-flight calls finish)
    assert pod_spec(name)["terminationGracePeriodSeconds"] > float(flag(cmd, "--grace-period"))
    resources = c["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    service = k8s_objects("Service")[name]
    assert service["spec"]["clusterIP"] == "None", "headless: clients round_robin over pods"
    assert service["spec"]["selector"] == deployment(name)["spec"]["selector"]["matchLabels"]


def test_generator_grace_covers_a_long_generation() -> None:
    grace = float(flag(command_of("generator"), "--grace-period"))
    assert grace >= 300
    assert pod_spec("generator")["terminationGracePeriodSeconds"] >= grace + 30
    assert container_of("generator")["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("name", list(DEFAULT_PORTS))
def test_every_service_has_replicas_and_a_disruption_budget(name: str) -> None:
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in
            k8s_objects("HorizontalPodAutoscaler").values()}
    floor = hpas[name]["spec"]["minReplicas"] if name in hpas else deployment(name)["spec"][
        "replicas"]
    assert floor >= 2
    (pdb,) = [p for p in k8s_objects("PodDisruptionBudget").values()
              if p["spec"]["selector"] == deployment(name)["spec"]["selector"]]
    spec = pdb["spec"]
    # a drain may take one pod at a time, never all of them
    assert spec.get("maxUnavailable", 0) == 1 or 1 <= spec["minAvailable"] < floor


def test_generator_autoscales_on_queue_depth_served_by_the_adapter() -> None:
    (hpa,) = k8s_objects("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "generator"}
    assert hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "boothstudio_generator_queue_depth"
    (rule,) = [r for r in adapter_rules() if r["name"]["as"] == name]
    assert metric_names(rule["seriesQuery"]) == {name}
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    # the Prometheus config for Kubernetes puts those labels on every series
    prom = load_yaml(ROOT / "deploy" / "prometheus" / "prometheus-k8s.yml")
    relabels = prom["scrape_configs"][0]["relabel_configs"]
    targets = {r.get("target_label"): r.get("source_labels") for r in relabels}
    assert targets["pod"] == ["__meta_kubernetes_pod_name"]
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]


def test_replicas_name_themselves_from_the_downward_api() -> None:
    trainer = env_of(container_of("trainer"))
    assert trainer["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert trainer["BOOTHSTUDIO_TRAINER_REPLICA_ID"]["value"] == "$(POD_NAME)"
    assert float(trainer["BOOTHSTUDIO_TRAINER_LEASE_SECONDS"]["value"]) > 0
    generator = env_of(container_of("generator"))
    assert generator["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert generator["BOOTHSTUDIO_GENERATOR_ADVERTISE_ADDRESS"]["value"] == \
        f"$(POD_IP):{DEFAULT_PORTS['generator'][0]}"
    # $(VAR) expands only from variables defined earlier in the list
    names = [e["name"] for e in container_of("generator")["env"]]
    assert names.index("POD_IP") < names.index("BOOTHSTUDIO_GENERATOR_ADVERTISE_ADDRESS")


def test_trainers_join_the_ray_cluster_head_service() -> None:
    trainer = container_of("trainer")
    assert trainer["command"] == ["/app/deploy/ray-node.sh"]
    cluster = ray_cluster()["metadata"]
    head = f"{cluster['name']}-head-svc.{cluster['namespace']}.svc.cluster.local:6379"
    assert env_of(trainer)["RAY_HEAD_ADDRESS"]["value"] == head
    assert "nvidia.com/gpu" not in trainer["resources"]["limits"], "training runs on Ray"


def pod_templates() -> dict[str, dict[str, Any]]:
    """Every pod template: the Deployments' and the Ray groups', by a name."""
    templates = {name: d["spec"]["template"] for name, d in k8s_objects("Deployment").items()}
    for group in ray_groups():
        templates[f"ray-{group.get('groupName', 'head')}"] = group["template"]
    return templates


def test_state_lives_in_the_stores_and_pod_volumes_are_bounded_scratch() -> None:
    (config_map,) = k8s_objects("ConfigMap").values()
    config = yaml.safe_load(config_map["data"]["boothstudio.yaml"])
    assert config["storage_url"].startswith("s3://")
    assert not k8s_objects("PersistentVolumeClaim")
    for name, template in pod_templates().items():
        (c, *_) = template["spec"]["containers"]
        assert {"secretRef": {"name": "boothstudio-stores"}} in c["envFrom"], name
        env = env_of(c)
        for volume in template["spec"].get("volumes", []):
            assert set(volume) & {"emptyDir", "configMap"}, f"{name}: {volume}"
            if "emptyDir" in volume:
                limit = parse_quantity(volume["emptyDir"]["sizeLimit"])
                for setting in ("GENERATOR_MODEL_CACHE_BYTES", "TRAINER_MODEL_CACHE_BYTES"):
                    if f"BOOTHSTUDIO_{setting}" in env:
                        assert int(env[f"BOOTHSTUDIO_{setting}"]["value"]) < limit, name
    stores = k8s_objects("Secret")["boothstudio-stores"]["stringData"]
    assert stores["BOOTHSTUDIO_DATABASE_URL"].startswith("postgresql+psycopg://")


def parse_quantity(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(q[:-2]) * units[q[-2:]] if q[-2:] in units else int(q)


SECRET_WORDS = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL")


def test_credentials_come_from_secrets_that_exist() -> None:
    secrets = k8s_objects("Secret")
    for name, template in pod_templates().items():
        for c in template["spec"]["containers"]:
            for ref in c.get("envFrom", []):
                assert ref["secretRef"]["name"] in secrets
            for e in c.get("env", []):
                if SECRET_WORDS.search(e["name"]) and "BYTES" not in e["name"]:
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    assert ref, f"{name}: {e['name']} must come from a Secret"
                    assert ref["key"] in secrets[ref["name"]]["stringData"]


# ------------------------------------------------------------------ network policy
# A small evaluator of the NetworkPolicies in the manifests (podSelector, namespaceSelector,
# named and numbered ports): who may open a connection to what.


@dataclass
class Pod:
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # container port name -> number
    namespace: str = NAMESPACE


OUTSIDE = None  # a client outside the cluster (matches only rules without a `from`/`to`)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op = expr["key"], expr["operator"]
        if op == "In" and labels.get(key) not in expr["values"]:
            return False
        if op == "Exists" and key not in labels:
            return False
        assert op in ("In", "Exists"), op
    return True


def peer_matches(peer: dict[str, Any], pod: Pod | None) -> bool:
    if pod is None:
        return False
    ns_labels = {"kubernetes.io/metadata.name": pod.namespace}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif pod.namespace != NAMESPACE:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], pod.labels)


def port_matches(rule: dict[str, Any], target: Pod | None, port: int) -> bool:
    if "ports" not in rule:
        return True
    for p in rule["ports"]:
        number = p["port"] if isinstance(p["port"], int) else (target.ports.get(p["port"])
                                                               if target else None)
        if number == port:
            return True
    return False


def allowed(direction: str, pod: Pod, other: Pod | None, port: int) -> bool:
    """May `pod` receive from (Ingress) / send to (Egress) `other` on `port`?"""
    policies = [p["spec"] for p in k8s_objects("NetworkPolicy").values()
                if direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"],
                                                                     pod.labels)]
    if not policies:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    target = pod if direction == "Ingress" else other
    return any(
        port_matches(rule, target, port)
        and (peers_key not in rule or any(peer_matches(peer, other) for peer in rule[peers_key]))
        for policy in policies for rule in policy.get(key, [])
    )


def connects(source: Pod | None, dest: Pod, port: int) -> bool:
    egress_ok = source is None or source.namespace != NAMESPACE or allowed(
        "Egress", source, dest, port)
    return egress_ok and allowed("Ingress", dest, source, port)


def pods() -> dict[str, Pod]:
    out = {}
    for name, template in pod_templates().items():
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"]
                 for p in c.get("ports", []) if "name" in p}
        out[name] = Pod(template["metadata"]["labels"], ports)
    return out


def test_network_policy_exposes_only_what_clients_need() -> None:
    p = pods()
    monitoring = Pod({"app.kubernetes.io/name": "prometheus"}, namespace="monitoring")
    elsewhere = Pod({"app": "shop"}, namespace="shop")
    for name, (port, metrics_port) in DEFAULT_PORTS.items():
        for client in (OUTSIDE, elsewhere):
            assert connects(client, p[name], port), f"clients reach {name}'s gRPC port"
            assert not connects(client, p[name], metrics_port)
        assert connects(monitoring, p[name], metrics_port)
        if name != "trainer":  # a trainer pod is a Ray node: Ray's pods reach all its ports
            assert not connects(p["ray-gpu"], p[name], metrics_port)
    for ray_port in (6379, 8265, 10001):
        for stranger in (OUTSIDE, elsewhere, monitoring, p["generator"], p["catalog"]):
            assert not connects(stranger, p["ray-head"], ray_port)
        assert connects(p["trainer"], p["ray-head"], ray_port)
        assert connects(p["ray-gpu"], p["ray-head"], ray_port)
    # Ray reaches back to the driver in the trainer pod on Ray's ports
    assert connects(p["ray-head"], p["trainer"], 45000)
    assert not connects(OUTSIDE, p["trainer"], 45000)


def test_network_policy_lets_services_reach_each_other_and_the_stores() -> None:
    p = pods()
    catalog, generator, trainer = DEFAULT_PORTS["catalog"][0], DEFAULT_PORTS["generator"][0], \
        DEFAULT_PORTS["trainer"][0]
    assert connects(p["generator"], p["catalog"], catalog)
    assert connects(p["generator"], p["generator"], generator)  # cancels forwarded
    assert connects(p["trainer"], p["catalog"], catalog)
    assert connects(p["catalog"], p["trainer"], trainer)
    database = Pod({"app": "postgres"}, {"pg": 5432}, namespace="databases")
    bucket = Pod({"app": "minio"}, {"s3": 9000}, namespace="storage")
    for name in ("catalog", "generator", "trainer", "ray-head", "ray-gpu"):
        assert allowed("Egress", p[name], database, 5432), name
        assert allowed("Egress", p[name], bucket, 9000), name
        assert allowed("Egress", p[name], OUTSIDE, 443), name  # AWS S3
        assert not allowed("Egress", p[name], OUTSIDE, 25), name
    dns = Pod({"k8s-app": "kube-dns"}, namespace="kube-system")
    assert allowed("Egress", p["generator"], dns, 53)
