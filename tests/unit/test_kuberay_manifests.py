"""The KubeRay manifests (ray_configs/kuberay/) against the CRDs' own openAPIV3Schema (copies of KubeRay's, in
../shared/reference/kuberay-crds/), their serveConfigV2 through Ray Serve's ServeDeploySchema, and against
ray_configs/maas.yaml: the RayService must deploy the same applications `maas up` does. The CRDs are copied in
tests/data/kuberay-crds/ (with their licence and the commit they come from)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers import ROOT

KUBERAY = ROOT / "ray_configs" / "kuberay"
CRDS = ROOT / "tests" / "data" / "kuberay-crds"  # unchanged copies of KubeRay's CRDs, with their licence


@lru_cache(maxsize=None)
def _schema(kind: str) -> dict:
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader",
                                                                                        yaml.SafeLoader))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def _strict(schema: dict) -> dict:
    """Kubernetes prunes unknown fields; here an unknown field (a typo) must fail instead."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def _kubernetes_formats() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()
    checker.checks("int-or-string")(lambda value: isinstance(value, (int, str)))
    return checker


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob-finetune.yaml", "rayjob-compress.yaml"])
def test_manifests_validate_against_the_crds(name):
    resources = [d for d in _documents(name) if d["apiVersion"] == "ray.io/v1"]
    assert resources
    for resource in resources:
        validator = jsonschema.Draft7Validator(_strict(_schema(resource["kind"])), format_checker=_kubernetes_formats())
        errors = sorted(validator.iter_errors(resource), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_a_typo_in_a_manifest_is_caught():
    [service, *_] = _documents("rayservice.yaml")
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParms"] = {}
    validator = jsonschema.Draft7Validator(_strict(_schema("RayService")))
    assert any("rayStartParms" in e.message for e in validator.iter_errors(service))


def test_the_rayservice_deploys_what_maas_up_deploys():
    from ray.serve.schema import ServeDeploySchema

    [service, *_] = _documents("rayservice.yaml")
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served) if hasattr(ServeDeploySchema, "model_validate") else \
        ServeDeploySchema.parse_obj(served)
    local = yaml.safe_load((ROOT / "ray_configs" / "maas.yaml").read_text())
    assert served["applications"] == local["applications"]
    assert served["proxy_location"] == "EveryNode" and served["http_options"]["host"] == "0.0.0.0"


def test_secrets_and_shared_storage_are_wired_in_every_pod():
    [service, claim] = _documents("rayservice.yaml")
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"]
                                                             for g in cluster["workerGroupSpecs"]]
    assert {g["groupName"] for g in cluster["workerGroupSpecs"]} == {"cpu", "gpu"}
    for pod in pods:
        [container] = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["MAAS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "maas-secrets"
        assert env["MAAS_STORAGE"]["value"] == "/mnt/maas-storage"
        assert {"name": "maas-storage", "mountPath": "/mnt/maas-storage"} in container["volumeMounts"]
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_jobs_run_the_readme_entrypoints():
    assert _documents("rayjob-finetune.yaml")[0]["spec"]["entrypoint"].startswith("python -m train_jobs.finetune ")
    assert "-m quantize.compress --config" in _documents("rayjob-compress.yaml")[0]["spec"]["entrypoint"]
    assert "RUN make install ENGINE=" in Path(KUBERAY / "Dockerfile").read_text()


def test_every_ray_container_of_the_rayservice_starts_with_the_platforms_ray_node_env():
    """Serve's proxy reads RAY_NODE_ENV (X-Forwarded-For left alone, calls to the gateway over gRPC) when it starts,
    on every node: the manifests must set what `maas up` and `maas join` set."""
    from serve_apps.settings import RAY_NODE_ENV

    [service] = [d for d in _documents("rayservice.yaml") if d["kind"] == "RayService"]
    spec = service["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            expected = RAY_NODE_ENV | {"RAY_SERVE_HAPROXY_BINARY_PATH": "/app/.venv/bin/maas-haproxy"}  # the image's
            assert {k: env.get(k) for k in expected} == expected, (group.get("groupName", "head"), env)


RAY_TOKEN = {"name": "maas-ray-token", "key": "auth_token"}  # KubeRay's key name for an authOptions Secret


def _ray_clusters(name: str) -> list[dict]:
    return [d["spec"].get("rayClusterConfig") or d["spec"]["rayClusterSpec"] for d in _documents(name)
            if d["apiVersion"] == "ray.io/v1"]


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob-finetune.yaml", "rayjob-compress.yaml"])
def test_every_ray_container_needs_rays_token_from_the_secret(name):
    """The dashboard listens on the pod network (dashboard-host 0.0.0.0, for the operator): without Ray's token, job
    submission there runs any code with MAAS_ADMIN_KEY in its environment. Every cluster asks KubeRay for token
    auth with the platform's Secret (the operator's own dashboard client and the containers it adds use it), and
    every Ray container sets the mode and reads the token from that Secret, never from a literal."""
    clusters = _ray_clusters(name)
    assert clusters
    for cluster in clusters:
        assert cluster["authOptions"] == {"mode": "token", "secretName": RAY_TOKEN["name"]}
        assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
        for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
            for container in group["template"]["spec"]["containers"]:
                env = {e["name"]: e for e in container["env"]}
                assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, group
                assert env["RAY_AUTH_TOKEN"] == {"name": "RAY_AUTH_TOKEN",
                                                 "valueFrom": {"secretKeyRef": RAY_TOKEN}}, group
    assert not [d for d in _documents(name) if d["kind"] == "Secret"]  # a token is never committed


def test_the_rayservice_says_how_to_make_the_token_secret():
    text = (KUBERAY / "rayservice.yaml").read_text()
    assert "kubectl create secret generic maas-ray-token --from-literal=auth_token=$(openssl rand -hex 32)" in text
