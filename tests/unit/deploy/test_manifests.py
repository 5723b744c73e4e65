"""Every manifest under deploy/ is valid Kubernetes (offline schemas) and keeps the invariants."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.config.limits import load_default_limits
from gateway.config.pools import DeploymentSpec
from gateway.config.prices import load_prices
from gateway.metering.pricing import PriceBook

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
KUBERNETES_VERSION = "1.33.0"  # the oldest release the manifests must apply to
SECRET_ENV = {
    "GATEWAY_ADMIN_TOKEN",
    "GATEWAY_METRICS_TOKEN",
    "GATEWAY_DATABASE_URL",
    "GATEWAY_REDIS_URL",
    "HF_TOKEN",
}
# Credentials in a URL (scheme://user:password@), tokens, keys: never in a ConfigMap.
SECRET_VALUE = re.compile(r"://[^/\s:@]*:[^/\s@]+@|sk-gw-|hf_[A-Za-z0-9]{10,}|BEGIN [A-Z ]*PRIVATE KEY")
SECRET_KEY = re.compile(r"token|password|secret|database[-_]url|redis[-_]url", re.IGNORECASE)

Manifest = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[Path, Manifest]]:
    return [(path, doc) for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(*kinds: str) -> list[Manifest]:
    return [doc for _, doc in documents() if doc["kind"] in kinds]


def one(kind: str, name: str) -> Manifest:
    (found,) = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    return found


def containers(workload: Manifest) -> Iterator[Manifest]:
    pod = workload["spec"]["template"]["spec"]
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def test_there_are_manifests() -> None:
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler"} <= kinds
    assert {"ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget", "Namespace"} <= kinds


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicas": "3"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    root = DEPLOY / "kubernetes"
    listed = {root / name for name in yaml.safe_load((root / "kustomization.yaml").read_text())["resources"]}
    assert all(path.exists() for path in listed)
    assert set(manifest_files()) - listed == {root / "gateway-secrets.example.yaml"}


def test_gateway_is_ready_on_health_and_has_several_replicas() -> None:
    gateway = one("Deployment", "model-gateway")
    assert gateway["spec"]["replicas"] >= 2
    (container,) = containers(gateway)
    # Ready while the process serves: plain /health is 503 whenever any one model has no engine.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health?scope=gateway"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health?scope=gateway"
    hpa = one("HorizontalPodAutoscaler", "model-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "model-gateway"
    assert hpa["spec"]["minReplicas"] >= 2


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_workloads_run_as_non_root_with_resources(kind: str) -> None:
    for workload in of_kind(kind):
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in containers(workload):
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), container["name"]
            assert {"cpu", "memory"} <= resources["limits"].keys(), container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_engine_gpus_equal_tensor_parallel_size() -> None:
    engines = of_kind("StatefulSet")
    assert {e["metadata"]["name"] for e in engines} >= {"llama-3-1-8b-instruct-engine"}
    sizes = set()
    for engine in engines:
        (container,) = containers(engine)
        args = dict(arg.removeprefix("--").partition("=")[::2] for arg in container["args"])
        size = int(args.get("tensor-parallel-size", "1"))
        sizes.add(size)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == size, engine["metadata"]["name"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == size
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert 1 in sizes and max(sizes) >= 4  # one single-GPU pool, one tensor-parallel pool


def test_engines_report_cached_prompt_tokens() -> None:
    """vLLM leaves ``prompt_tokens_details`` out of usage unless told: cached tokens would be billed
    at the full input price."""
    for engine in of_kind("StatefulSet"):
        (container,) = containers(engine)
        assert "--enable-prompt-tokens-details" in container["args"], engine["metadata"]["name"]


def test_secrets_come_from_secrets_never_from_config_maps() -> None:
    for config_map in of_kind("ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            assert not SECRET_KEY.search(key), key
            assert not SECRET_VALUE.search(value), key
    for workload in of_kind("Deployment", "StatefulSet"):
        for container in containers(workload):
            for env in container.get("env", []):
                if env["name"] in SECRET_ENV:
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
                else:
                    assert not SECRET_VALUE.search(str(env.get("value", ""))), env["name"]


def test_gateway_config_loads_and_each_pool_discovers_a_headless_engine_service(tmp_path: Path) -> None:
    data = one("ConfigMap", "gateway-config")["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    spec = DeploymentSpec.model_validate(yaml.safe_load(data["pools.yaml"]))
    prices = PriceBook.from_table(load_prices(tmp_path / "prices.yaml"))
    assert load_default_limits(tmp_path / "limits.yaml") is not None
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    engines = {e["spec"]["serviceName"]: e for e in of_kind("StatefulSet")}
    for pool in spec.pools:
        assert pool.discovery is not None and pool.discovery.kubernetes is not None, pool.served_name
        name = pool.discovery.kubernetes.service
        service = services[name]
        assert service["spec"]["clusterIP"] == "None"
        assert pool.discovery.kubernetes.port in {p["name"] for p in service["spec"]["ports"]}
        (container,) = containers(engines[name])
        assert f"--served-model-name={pool.served_name}" in container["args"]
        assert prices.price_at(pool.served_name, time.time()) is not None, pool.served_name


def test_gateway_may_read_endpoint_slices() -> None:
    gateway = one("Deployment", "model-gateway")
    account = gateway["spec"]["template"]["spec"]["serviceAccountName"]
    binding = one("RoleBinding", "model-gateway-discovery")
    assert {"kind": "ServiceAccount", "name": account, "namespace": "llm"} in binding["subjects"]
    role = one("Role", binding["roleRef"]["name"])
    assert any(
        "discovery.k8s.io" in rule["apiGroups"]
        and "endpointslices" in rule["resources"]
        and {"get", "list"} <= set(rule["verbs"])
        for rule in role["rules"]
    )


def env_source(container: Manifest, name: str) -> tuple[str, str] | None:
    """The (Secret, key) an environment variable comes from, or None."""
    for env in container.get("env", []):
        if env["name"] == name:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            return (ref["name"], ref["key"]) if ref and not ref.get("optional") else None
    return None


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and not selector.get(
        "matchExpressions"
    )


def test_engines_require_the_key_the_gateway_sends() -> None:
    """An engine without a key answered anyone who reached its port (issue 18, item 5)."""
    (gateway,) = containers(one("Deployment", "model-gateway"))
    sent = env_source(gateway, "GATEWAY_ENGINE_API_KEY")
    assert sent is not None
    for engine in of_kind("StatefulSet"):
        for container in containers(engine):
            assert env_source(container, "VLLM_API_KEY") == sent, engine["metadata"]["name"]
            assert not [arg for arg in container.get("args", []) if arg.startswith(("--api-key", "--host"))]


def test_only_gateway_pods_reach_the_engines() -> None:
    gateway = pod_labels(one("Deployment", "model-gateway"))
    policies = of_kind("NetworkPolicy")
    for engine in of_kind("StatefulSet"):
        labels = pod_labels(engine)
        guarding = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert guarding, f"no NetworkPolicy selects {engine['metadata']['name']}"
        for policy in guarding:
            assert "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), "a rule without 'from' admits every source"
                for source in rule["from"]:
                    assert "ipBlock" not in source
                    pods = source.get("podSelector")
                    if pods is not None and "namespaceSelector" not in source:
                        assert selects(pods, gateway), source  # from this namespace: gateways only
                    else:
                        assert source["namespaceSelector"]["matchLabels"] == {
                            "kubernetes.io/metadata.name": "monitoring"
                        }
        assert any(
            selects(source.get("podSelector", {"matchLabels": {"-": "-"}}), gateway)
            for policy in guarding
            for rule in policy["spec"]["ingress"]
            for source in rule["from"]
        ), "the gateway itself must still get in"
