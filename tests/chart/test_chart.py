"""The Helm chart, rendered with real helm and checked against real Kubernetes and CRD schemas."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT

CHART = ROOT / "charts" / "keel"
CRDS = ROOT.parent / "shared" / "crds"
HELM = shutil.which("helm") or str(ROOT / ".keel" / "bin" / "helm")
K8S_VERSIONS = ("1.32.0", "1.33.0", "1.34.0")
ONE_MODEL = ["--set", "models[0].name=fraud", "--set", "models[0].minReplicas=0", "--set", "models[0].maxReplicas=3"]


def helm(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"HELM_CACHE_HOME": str(tmp / "c"), "HELM_CONFIG_HOME": str(tmp / "g"), "HELM_DATA_HOME": str(tmp / "d"),
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def render(tmp: Path, *args: str) -> list[dict[str, Any]]:
    proc = helm("template", "keel", str(CHART), "--namespace", "ml", *args, tmp=tmp)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_lint_strict(tmp_path: Path) -> None:
    proc = helm("lint", "--strict", str(CHART), tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_native_objects_validate_against_kubernetes_schemas(tmp_path: Path) -> None:
    docs = render(tmp_path, *ONE_MODEL)
    custom = ("serving.kserve.io/", "ray.io/", "keda.sh/", "monitoring.coreos.com/")
    native = [d for d in docs if not d["apiVersion"].startswith(custom)]
    assert {d["kind"] for d in native} == {"PersistentVolumeClaim", "Deployment", "Service", "StatefulSet",
                                           "NetworkPolicy"}
    path = tmp_path / "native.yaml"
    path.write_text(yaml.safe_dump_all(native))
    exe = str(Path(shutil.which("kubernetes-validate") or ROOT / ".venv" / "bin" / "kubernetes-validate"))
    for version in K8S_VERSIONS:
        proc = subprocess.run([exe, "-k", version, "--strict", str(path)], capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, f"{version}: {proc.stdout}{proc.stderr}"


def _crd_schema(group_plural: str, version: str) -> dict[str, Any]:
    if not CRDS.is_dir():
        pytest.skip("upstream CRDs not found at ../shared/crds; see shared/crds/README.md")
    crd = yaml.safe_load((CRDS / f"{group_plural}.yaml").read_text())
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    return entry["schema"]["openAPIV3Schema"]


def test_inference_service_validates_against_the_kserve_crd(tmp_path: Path) -> None:
    (isvc,) = [d for d in render(tmp_path, *ONE_MODEL) if d["kind"] == "InferenceService"]
    schema = _crd_schema("serving.kserve.io_inferenceservices", isvc["apiVersion"].split("/")[1])
    jsonschema.validate(isvc, schema)
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"]) == (0, 3)
    spec = json.loads(pred["containers"][0]["args"][-1])
    assert spec == {"model": "fraud", "alias": "champion", "runtime": "kserve", "port": 8080}
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_every_container_is_locked_down(tmp_path: Path) -> None:
    docs = render(tmp_path, *ONE_MODEL)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    pods += [d["spec"]["predictor"] for d in docs if d["kind"] == "InferenceService"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
            assert c["readinessProbe"] and c["livenessProbe"]


def test_service_names_match_the_cluster_profile(tmp_path: Path) -> None:
    from keel.config import load_settings

    docs = render(tmp_path)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    s = load_settings(profile="cluster", release="keel", namespace="ml")
    for name, url in (("keel-mlflow", s.tracking_uri), ("keel-redis", s.redis_connection)):
        port = services[name]["spec"]["ports"][0]["port"]
        assert f"{name}.ml.svc.cluster.local:{port}" in url


def _walk(values: dict[str, Any], node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key in values.yaml, each checked to have a described schema entry (maps stop the walk)."""
    missing = []
    for k, v in values.items():
        props = node.get("properties", {})
        if k not in props:
            missing.append(prefix + k)
            continue
        child = props[k]
        if "$ref" in child:
            child = root["definitions"][child["$ref"].rsplit("/", 1)[1]]
        if not child.get("description"):
            missing.append(prefix + k)
        if isinstance(v, dict) and "properties" in child:
            missing += _walk(v, child, root, f"{prefix}{k}.")
    return missing


def test_every_value_has_a_described_schema_entry() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _walk(values, schema, schema) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "models[0].name=fraud", "--set", "models[0].runtime=triton"], "runtime"),
        (["--set", "models[0].alias=champion"], "name"),
        (["--set", "mlflow.bogus=1"], "bogus"),
        (["--set", "redis.storage=lots"], "storage"),
    ],
)
def test_bad_values_fail_at_template_time_naming_the_value(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = helm("template", "keel", str(CHART), *args, tmp=tmp_path)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr


def _values_file(tmp: Path, values: dict[str, Any]) -> str:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_ray_model_renders_a_rayservice_with_fractional_gpus(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    from keel.serving.ray_runtime import app_builder

    docs = render(tmp_path, "-f", _values_file(tmp_path, {"models": [
        {"name": "fraud", "runtime": "ray", "numGpus": 0.25, "minReplicas": 0, "maxReplicas": 4}]}))
    (rs,) = [d for d in docs if d["kind"] == "RayService"]
    jsonschema.validate(rs, _crd_schema("ray.io_rayservices", "v1"))
    serve = ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
    app = serve.applications[0]
    assert app_builder(app.args) is not None
    assert app.deployments[0].ray_actor_options.num_gpus == 0.25
    workers = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (0, 4)
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert not [d for d in docs if d["kind"] in ("InferenceService", "ScaledObject")]


def test_kserve_model_with_headroom_gets_a_keda_scaledobject(tmp_path: Path) -> None:
    docs = render(tmp_path, *ONE_MODEL)
    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    jsonschema.validate(so, _crd_schema("keda.sh_scaledobjects", "v1alpha1"))
    assert so["spec"]["scaleTargetRef"]["name"] == "fraud-predictor"
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 3)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and 'keel_requests_total{model="fraud"}' in trigger["metadata"]["query"]
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    fixed = render(tmp_path, "--set", "models[0].name=fraud")
    assert not [d for d in fixed if d["kind"] == "ScaledObject"]


def test_gpu_profile_sets_limits_placement_and_the_runtime_flag(tmp_path: Path) -> None:
    gpu = {"enabled": True, "count": 1, "nodeSelector": {"nvidia.com/gpu.present": "true"},
           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    docs = render(tmp_path, "-f", _values_file(tmp_path, {"models": [{"name": "fraud", "gpu": gpu}]}))
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    jsonschema.validate(isvc, _crd_schema("serving.kserve.io_inferenceservices", "v1beta1"))
    pred = isvc["spec"]["predictor"]
    c = pred["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pred["nodeSelector"] == gpu["nodeSelector"] and pred["tolerations"] == gpu["tolerations"]
    assert json.loads(c["args"][-1])["gpu"] is True


def test_gpu_without_a_count_fails_naming_the_value(tmp_path: Path) -> None:
    values = _values_file(tmp_path, {"models": [{"name": "fraud", "gpu": {"enabled": True}}]})
    proc = helm("template", "keel", str(CHART), "-f", values, tmp=tmp_path)
    assert proc.returncode != 0
    assert "models[fraud].gpu.count is not set" in proc.stderr


def test_dockerfile_is_pinned_non_root_and_built_from_the_lock() -> None:
    text = (ROOT / "platform" / "Dockerfile").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}", "runtime", "runtime"]
    base = next(line for line in text.splitlines() if line.startswith("ARG PYTHON_IMAGE="))
    assert ":latest" not in base and base.count(".") >= 2  # a full patch-level tag
    assert "USER 10001:10001" in text and "uv pip sync" in text and "platform/locks/core.txt" in text
    assert "uv==0.13.9" in text
    for target in ("platform", "serving"):
        assert f"AS {target}" in text


def test_network_policies_deny_by_default_and_allow_what_keel_needs(tmp_path: Path) -> None:
    docs = render(tmp_path, *ONE_MODEL)
    pols = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert pols["keel-default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    redis = pols["keel-redis"]
    assert redis["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    assert redis["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "keel"}}}]
    assert redis["ingress"][0]["ports"] == [{"port": 6379, "protocol": "TCP"}]
    serving = pols["keel-serving"]["ingress"][0]
    assert {p["port"] for p in serving["ports"]} == {8080, 8000}
    assert not [d for d in render(tmp_path, "--set", "networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]
