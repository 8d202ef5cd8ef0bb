"""The Helm chart, rendered with real helm and checked against real Kubernetes and CRD schemas.

Render tests in the style of the Airflow chart's: render with values, then assert on the objects with
jmespath. Every named profile in charts/keel/ci is validated for Kubernetes 1.32, 1.33 and 1.34.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jmespath
import jsonschema
import pytest
import yaml

from tests.conftest import ROOT, isolated_settings, run_keel

CHART = ROOT / "charts" / "keel"
CRDS = ROOT.parent / "shared" / "crds"
HELM = shutil.which("helm") or str(ROOT / ".keel" / "bin" / "helm")
K8S_VERSIONS = ("1.32.0", "1.33.0", "1.34.0")
CUSTOM = ("serving.kserve.io/", "ray.io/", "keda.sh/", "monitoring.coreos.com/")
PROFILES = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))


def helm(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"HELM_CACHE_HOME": str(tmp / "c"), "HELM_CONFIG_HOME": str(tmp / "g"), "HELM_DATA_HOME": str(tmp / "d"),
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def render(tmp: Path, *args: str) -> list[dict[str, Any]]:
    proc = helm("template", "keel", str(CHART), "--namespace", "ml", *args, tmp=tmp)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def values(tmp: Path, vals: dict[str, Any]) -> list[dict[str, Any]]:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(vals))
    return render(tmp, "-f", str(path))


def fails(tmp: Path, vals: dict[str, Any]) -> str:
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(vals))
    proc = helm("template", "keel", str(CHART), "-f", str(path), tmp=tmp)
    assert proc.returncode != 0, "rendered although the values are invalid"
    return proc.stderr


def profile(tmp: Path, name: str) -> list[dict[str, Any]]:
    return render(tmp, "-f", str(CHART / "ci" / f"{name}-values.yaml"))


def kinds(docs: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in docs:
        out[d["kind"]] = out.get(d["kind"], 0) + 1
    return out


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # libyaml: the CRDs are megabytes
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = \
                    v["schema"]["openAPIV3Schema"]
    return out


def validate_custom(doc: dict[str, Any]) -> None:
    if not CRDS.is_dir():
        pytest.skip("upstream CRDs not found at ../shared/crds (see its README); custom resources unchecked")
    schema = crd_schemas().get((doc["apiVersion"], doc["kind"]))
    assert schema is not None, f"no CRD for {doc['apiVersion']} {doc['kind']} in {CRDS}"
    # Draft7Validator without check_schema: some CRDs carry Go-only regex syntax in unrelated patterns.
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors[:3]}"


# -- every profile, every Kubernetes version ---------------------------------------------------------
def test_there_are_five_named_profiles() -> None:
    assert PROFILES == ["gpu", "minimal", "multi-tenant", "production-ha", "rayserve"]


@pytest.mark.parametrize("name", PROFILES)
def test_profile_validates_against_kubernetes_and_crd_schemas(tmp_path: Path, name: str) -> None:
    docs = profile(tmp_path, name)
    native = [d for d in docs if not d["apiVersion"].startswith(CUSTOM)]
    path = tmp_path / "native.yaml"
    path.write_text(yaml.safe_dump_all(native))
    exe = str(Path(shutil.which("kubernetes-validate") or ROOT / ".venv" / "bin" / "kubernetes-validate"))
    for version in K8S_VERSIONS:
        proc = subprocess.run([exe, "-k", version, "--strict", str(path)], capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, f"{name} on {version}: {proc.stdout}{proc.stderr}"
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM):
            validate_custom(doc)


EXPECTED_KINDS = {
    "minimal": {"InferenceService": 1, "StatefulSet": 2, "CronJob": 2, "Job": 1},  # drift + performance
    "production-ha": {"InferenceService": 2, "ScaledObject": 1, "PodDisruptionBudget": 3, "PriorityClass": 2,
                      "Role": 3, "RoleBinding": 3, "ServiceAccount": 2, "CronJob": 4},
    "gpu": {"InferenceService": 2, "ScaledObject": 1, "CronJob": 2},
    "rayserve": {"RayService": 2, "CronJob": 4},
    "multi-tenant": {"Namespace": 2, "ResourceQuota": 2, "LimitRange": 2, "RoleBinding": 6, "PriorityClass": 2},
}


@pytest.mark.parametrize("name", PROFILES)
def test_profile_renders_what_it_promises(tmp_path: Path, name: str) -> None:
    got = kinds(profile(tmp_path, name))
    for kind, count in EXPECTED_KINDS[name].items():
        assert got.get(kind, 0) == count, f"{name}: {kind} {got.get(kind, 0)} != {count} ({got})"


def test_lint_strict(tmp_path: Path) -> None:
    for name in ("", *PROFILES):
        extra = ["-f", str(CHART / "ci" / f"{name}-values.yaml")] if name else []
        proc = helm("lint", "--strict", str(CHART), *extra, tmp=tmp_path)
        assert proc.returncode == 0, name + proc.stdout + proc.stderr


def test_every_container_is_locked_down(tmp_path: Path) -> None:
    for name in PROFILES:
        docs = profile(tmp_path, name)
        pods = jmespath.search("[?kind=='Deployment' || kind=='StatefulSet' || kind=='Job'].spec.template.spec", docs)
        pods += jmespath.search("[?kind=='CronJob'].spec.jobTemplate.spec.template.spec", docs)
        pods += jmespath.search("[?kind=='InferenceService'].spec.predictor", docs)
        for ray in jmespath.search("[?kind=='RayService'].spec.rayClusterConfig", docs):
            pods += [ray["headGroupSpec"]["template"]["spec"]]
            pods += [g["template"]["spec"] for g in ray["workerGroupSpecs"]]
        assert pods, name
        for pod in pods:
            assert pod["securityContext"]["runAsNonRoot"] is True
            containers = pod.get("containers") or [pod["model"]]
            for c in containers:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert c["resources"]["requests"] and c["resources"]["limits"], f"{name}: {c.get('name')}"
                if "restartPolicy" not in pod and "ray-" not in c.get("name", ""):  # long-running servers
                    assert c["readinessProbe"] and c["livenessProbe"], f"{name}: {c.get('name')}"


def test_secrets_are_only_referenced(tmp_path: Path) -> None:
    for name in PROFILES:
        docs = profile(tmp_path, name)
        assert not [d for d in docs if d["kind"] == "Secret"]
        text = yaml.safe_dump_all(docs)
        assert not re.search(r"(?i)password\s*[:=]\s*['\"]?\w", text.replace("password}", "")), name


# -- platform services ---------------------------------------------------------------------------------
def test_service_names_match_the_cluster_profile(tmp_path: Path) -> None:
    """For a release named like the chart and one that is not: the settings a pod derives from KEEL_RELEASE
    (and the KEEL_FULLNAME the chart hands it) name the chart's Services."""
    from keel.config import load_settings

    for release, prefix in (("keel", "keel"), ("team-a", "team-a-keel")):
        proc = helm("template", release, str(CHART), "--namespace", "ml", tmp=tmp_path)
        assert proc.returncode == 0, proc.stderr
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        feast = one(docs, "Deployment", f"{prefix}-feast")
        handed = env_of(feast["spec"]["template"]["spec"]["containers"][0])["KEEL_FULLNAME"]
        assert handed == prefix
        for s in (load_settings(profile="cluster", release=release, namespace="ml"),
                  load_settings(profile="cluster", release=release, namespace="ml", fullname=handed)):
            for name, url in ((f"{prefix}-mlflow", s.tracking_uri), (f"{prefix}-redis", s.redis_connection),
                              (f"{prefix}-pushgateway", s.pushgateway_url)):
                port = services[name]["spec"]["ports"][0]["port"]
                assert f"{name}.ml.svc.cluster.local:{port}" in url


def test_mlflow_requires_login_with_credentials_from_a_secret(tmp_path: Path) -> None:
    docs = render(tmp_path)
    mlflow = one(docs, "Deployment", "keel-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in mlflow["args"]
    env = env_of(mlflow)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"secretKeyRef": {"name": "keel-mlflow-auth", "key": "password"}}
    assert env["KEEL_MLFLOW_DB_URI"].startswith("postgresql+psycopg://keel:$(KEEL_POSTGRES_PASSWORD)@keel-postgres.")
    assert env["KEEL_MLFLOW_AUTH_DB_URI"].endswith("/mlflow_auth")
    ini = one(docs, "ConfigMap", "keel-mlflow-auth")["data"]["basic_auth.ini"]
    assert "default_permission = READ" in ini and "admin_password" not in ini
    serving = one(values(tmp_path, {"models": [{"name": "fraud"}]}), "InferenceService")
    senv = env_of(serving["spec"]["predictor"]["containers"][0])
    assert senv["MLFLOW_TRACKING_PASSWORD"] == {"secretKeyRef": {"name": "keel-mlflow-auth", "key": "password"}}
    off = values(tmp_path, {"mlflow": {"auth": {"enabled": False}}})
    assert "--app-name=basic-auth" not in one(off, "Deployment", "keel-mlflow")["spec"]["template"]["spec"][
        "containers"][0]["args"]


def test_external_database_and_redis_replace_the_bundled_ones(tmp_path: Path) -> None:
    docs = profile(tmp_path, "production-ha")
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    feast = one(docs, "Deployment", "keel-feast")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(feast)
    assert env["KEEL_FEAST_REGISTRY"] == {"secretKeyRef": {"name": "keel-database", "key": "feast"}}
    assert env["KEEL_REDIS_ADDRESS"] == "redis-master.data.svc.cluster.local:6379"
    assert "KEEL_POSTGRES_PASSWORD" not in env
    assert fails(tmp_path, {"postgres": {"enabled": False}}).count("externalDatabase.secret is required")
    assert "redis.externalAddress is required" in fails(tmp_path, {"redis": {"enabled": False}})


def test_an_external_redis_cluster_is_named_to_every_pod(tmp_path: Path) -> None:
    nodes = "rc-0.data.svc:6379,rc-1.data.svc:6379,rc-2.data.svc:6379"
    docs = values(tmp_path, {"redis": {"enabled": False, "cluster": True, "externalAddress": nodes}})
    assert not [d for d in docs if d["kind"] == "StatefulSet" and "redis" in d["metadata"]["name"]]
    env = env_of(one(docs, "Deployment", "keel-feast")["spec"]["template"]["spec"]["containers"][0])
    assert (env["KEEL_REDIS_TYPE"], env["KEEL_REDIS_ADDRESS"]) == ("redis_cluster", nodes)
    assert env_of(one(profile(tmp_path, "production-ha"), "Deployment", "keel-feast")["spec"]["template"]["spec"][
        "containers"][0])["KEEL_REDIS_TYPE"] == "redis"
    assert "redis.cluster needs an external Redis Cluster" in fails(tmp_path, {"redis": {"cluster": True}})
    assert "externalAddress" in fails(tmp_path, {"redis": {"enabled": False, "externalAddress": "a:1,b"}})


def test_replicated_mlflow_needs_shared_storage(tmp_path: Path) -> None:
    err = fails(tmp_path, {"mlflow": {"replicas": 2}})
    assert "mlflow.replicas > 1 needs mlflow.artifacts.destination" in err
    ha = one(profile(tmp_path, "production-ha"), "Deployment", "keel-mlflow")
    assert ha["spec"]["replicas"] == 2 and "strategy" not in ha["spec"]


def test_feast_server_and_apply_hook_use_the_shared_sql_registry(tmp_path: Path) -> None:
    from keel.config import load_settings
    from keel.features.store import placeholders

    docs = render(tmp_path)
    server = one(docs, "Deployment", "keel-feast")["spec"]["template"]["spec"]["containers"][0]
    assert server["command"][:3] == ["keel", "features", "serve"]
    hook = one(docs, "Job", "keel-feast-apply")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    uri = env_of(server)["KEEL_FEAST_REGISTRY"]
    assert uri.endswith("/feast")
    s = load_settings(profile="cluster", feast_registry=uri)
    assert placeholders(s)["FEAST_REGISTRY_TYPE"] == "sql"


def test_controller_rbac_is_least_privilege(tmp_path: Path) -> None:
    docs = values(tmp_path, {"controller": {"enabled": True}})
    role = one(docs, "Role", "keel-controller")
    assert role["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "patch"]},
        {"apiGroups": ["ray.io"], "resources": ["rayservices"], "verbs": ["get", "patch"]},
    ]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = one(docs, "RoleBinding", "keel-controller")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "keel-controller", "namespace": "ml"}]
    pod = one(docs, "Deployment", "keel-controller")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "keel-controller"
    env = env_of(pod["containers"][0])
    assert env["KEEL_AIRFLOW_PASSWORD"] == {"secretKeyRef": {"name": "keel-airflow", "key": "password"}}
    assert env["KEEL_CONTROLLER_TOKEN"] == {"secretKeyRef": {"name": "keel-controller", "key": "token"}}
    assert pod["containers"][0]["command"][:2] == ["keel", "controller"]
    assert one(docs, "PersistentVolumeClaim", "keel-controller")  # the trigger queue survives restarts
    others = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment" and d is not None]
    assert all(p.get("automountServiceAccountToken") is False for p in others if p is not pod)
    rbac = [d["metadata"]["name"] for d in render(tmp_path) if d["kind"] in ("Role", "RoleBinding", "ServiceAccount")]
    assert set(rbac) == {"keel-pipeline", "keel-pipeline-launcher"}  # the DAG pods' only (below)
    off = values(tmp_path, {"airflow": {"pipelines": {"enabled": False}}})
    assert not [d for d in off if d["kind"] in ("Role", "RoleBinding", "ServiceAccount")]


def test_pod_disruption_budgets_cover_replicated_services(tmp_path: Path) -> None:
    pdbs = {d["metadata"]["name"]: d["spec"] for d in profile(tmp_path, "production-ha")
            if d["kind"] == "PodDisruptionBudget"}
    assert set(pdbs) == {"keel-mlflow", "keel-feast", "keel-fraud"}
    assert pdbs["keel-fraud"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "keel-fraud"}
    assert not [d for d in profile(tmp_path, "minimal") if d["kind"] == "PodDisruptionBudget"]


def test_pushgateway_is_optional(tmp_path: Path) -> None:
    docs = values(tmp_path, {"pushgateway": {"enabled": False, "externalUrl": "http://pg.monitoring:9091"},
                             "models": [{"name": "fraud"}]})
    assert not [d for d in docs if "pushgateway" in d["metadata"]["name"]]
    for job in ("keel-fraud-drift", "keel-fraud-performance"):  # both push their gauges there
        pod = one(docs, "CronJob", job)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert env_of(pod)["KEEL_PUSHGATEWAY"] == "http://pg.monitoring:9091"


# -- models ------------------------------------------------------------------------------------------------
def test_inference_service_carries_a_valid_serve_spec(tmp_path: Path) -> None:
    from keel.serving.spec import ServeSpec

    docs = profile(tmp_path, "production-ha")
    isvc = one(docs, "InferenceService", "keel-fraud")
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"], pred["priorityClassName"]) == (2, 10, "keel-serving")
    spec = ServeSpec.from_json(pred["containers"][0]["args"][-1])
    assert (spec.model, spec.alias, spec.runtime, spec.port) == ("fraud", "champion", "kserve", 8080)
    assert (spec.canary_alias, spec.canary_weight) == ("challenger", 0.1)
    assert (spec.predlog_uri, spec.sample_rate) == ("s3://ml-artifacts/predictions", 0.2)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    churn = one(docs, "InferenceService", "keel-churn-score")
    pinned = ServeSpec.from_json(churn["spec"]["predictor"]["containers"][0]["args"][-1])
    assert pinned.version == "7"
    assert pred["imagePullSecrets"] == [{"name": "registry-credentials"}]


def test_kserve_model_with_headroom_gets_a_keda_scaledobject(tmp_path: Path) -> None:
    docs = values(tmp_path, {"models": [{"name": "fraud", "minReplicas": 1, "maxReplicas": 3}]})
    so = one(docs, "ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == "keel-fraud-predictor"
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 3)
    queries = jmespath.search("spec.triggers[].metadata.query", so)
    assert queries == ['sum(rate(keel_requests_total{namespace="ml",model="fraud"}[1m])) + '
                       'sum(rate(keel_requests_shed_total{namespace="ml",model="fraud"}[1m]))',
                       'sum(keel_inflight_requests{namespace="ml",model="fraud"})']
    assert one(docs, "InferenceService")["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    assert not [d for d in render(tmp_path, "--set", "models[0].name=fraud") if d["kind"] == "ScaledObject"]


def test_scale_to_zero_needs_a_component_that_holds_requests(tmp_path: Path) -> None:
    """minReplicas 0 is refused unless something holds the first request while a replica starts: KServe's
    Serverless mode (Knative's activator) or Ray Serve's proxy. A KEDA ScaledObject can't: its metrics
    come from the model's own pods, which a model at zero replicas does not have."""
    err = fails(tmp_path, {"models": [{"name": "fraud", "minReplicas": 0, "maxReplicas": 3}]})
    assert "/models/0" in err and "missing property 'serverless'" in err
    docs = values(tmp_path, {"models": [{"name": "fraud", "minReplicas": 0, "maxReplicas": 3, "serverless": True},
                                        {"name": "churn", "runtime": "ray", "minReplicas": 0, "maxReplicas": 2}]})
    isvc = one(docs, "InferenceService")
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Serverless",
                                               "autoscaling.knative.dev/target-burst-capacity": "0"}
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"]) == (0, 3)
    assert (pred["scaleMetric"], pred["scaleTarget"]) == ("concurrency", 8)
    assert [p["name"] for p in pred["containers"][0]["ports"]] == ["http1"]  # Knative takes one port
    assert not [d for d in docs if d["kind"] in ("ScaledObject", "PodDisruptionBudget")]
    serve = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])
    assert serve["applications"][0]["deployments"][0]["autoscaling_config"]["min_replicas"] == 0


def test_ray_model_renders_a_rayservice_with_fractional_gpus(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    from keel.serving.ray_runtime import app_builder
    from keel.serving.spec import ServeSpec

    rs = one(profile(tmp_path, "rayserve"), "RayService", "keel-fraud")
    serve = ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
    app = serve.applications[0]
    assert app_builder(app.args) is not None
    assert ServeSpec(**app.args).num_gpus == 0.25
    assert app.deployments[0].ray_actor_options.num_gpus == 0.25
    workers = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (0, 8)
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_gpu_profile_sets_limits_placement_and_the_runtime_flag(tmp_path: Path) -> None:
    docs = profile(tmp_path, "gpu")
    pred = one(docs, "InferenceService", "keel-fraud-mlp")["spec"]["predictor"]
    c = pred["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pred["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pred["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert json.loads(c["args"][-1])["gpu"] is True


def test_llm_profile_uses_kserves_hugging_face_runtime(tmp_path: Path) -> None:
    docs = profile(tmp_path, "gpu")
    model = one(docs, "InferenceService", "keel-support-llm")["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["storageUri"] == "hf://Qwen/Qwen2.5-0.5B-Instruct"
    assert "--backend=vllm" in model["args"] and "--max-model-len=4096" in model["args"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(model)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert not [d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "support-llm-drift"]


def test_every_serving_model_gets_a_drift_cronjob_reading_the_shared_log(tmp_path: Path) -> None:
    docs = profile(tmp_path, "production-ha")
    job = one(docs, "CronJob", "keel-fraud-drift")
    assert job["spec"]["schedule"] == "*/30 * * * *"
    c = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["keel", "drift", "run", "fraud", "--window", "30m", "--predictions",
                            "s3://ml-artifacts/predictions"]
    local = values(tmp_path, {"models": [{"name": "fraud"}]})
    pvc = one(local, "PersistentVolumeClaim", "keel-predictions")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    isvc_mounts = one(local, "InferenceService")["spec"]["predictor"]["containers"][0]["volumeMounts"]
    assert {"name": "predictions", "mountPath": "/var/lib/keel/predictions"} in isvc_mounts


@pytest.mark.parametrize(
    ("vals", "needle"),
    [
        ({"models": [{"name": "fraud", "runtime": "triton"}]}, "runtime"),
        ({"models": [{"alias": "champion"}]}, "name"),
        ({"mlflow": {"bogus": 1}}, "bogus"),
        ({"redis": {"storage": "lots"}}, "storage"),
        ({"models": [{"name": "fraud", "gpu": {"enabled": True}}]}, "models[fraud].gpu.count is not set"),
        ({"models": [{"name": "llm", "runtime": "huggingface"}]}, "models[llm].llm.modelId is not set"),
        ({"tenants": [{"name": "Team_A"}]}, "name"),
    ],
)
def test_bad_values_fail_at_template_time_naming_the_value(tmp_path: Path, vals: dict[str, Any], needle: str) -> None:
    assert needle in fails(tmp_path, vals)


# -- tenancy -----------------------------------------------------------------------------------------------
def test_multi_tenant_profile_gives_each_team_quota_limits_and_bindings(tmp_path: Path) -> None:
    docs = profile(tmp_path, "multi-tenant")
    ns = one(docs, "Namespace", "team-fraud")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    quota = [d for d in docs if d["kind"] == "ResourceQuota" and d["metadata"]["namespace"] == "team-fraud"]
    assert quota[0]["spec"]["hard"]["requests.nvidia.com/gpu"] == "2"
    bindings = {(d["metadata"]["namespace"], d["roleRef"]["name"]): [s["name"] for s in d["subjects"]]
                for d in docs if d["kind"] == "RoleBinding" and "namespace" in d["metadata"]}
    assert bindings == {("team-fraud", "admin"): ["fraud-leads"], ("team-fraud", "edit"): ["fraud-ds"],
                        ("team-fraud", "view"): ["sre"], ("team-risk", "edit"): ["risk-ds"]}
    pcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PriorityClass"}
    assert pcs["keel-serving"]["value"] > pcs["keel-experiments"]["value"]
    assert pcs["keel-experiments"]["preemptionPolicy"] == "Never"
    for job in [d for d in docs if d["kind"] == "CronJob"]:
        assert job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["priorityClassName"] == "keel-experiments"


# -- monitoring and DAGs -----------------------------------------------------------------------------------
def test_prometheus_rule_ships_the_monitoring_rule_files(tmp_path: Path) -> None:
    rule = one(render(tmp_path), "PrometheusRule")
    shipped = [g["name"] for g in rule["spec"]["groups"]]
    files = sorted((ROOT / "monitoring" / "rules").glob("*.yml"))
    expected = [g["name"] for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    assert shipped == expected and shipped
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_ship_as_labelled_configmaps(tmp_path: Path) -> None:
    docs = render(tmp_path)
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    files = {p.name: p.read_text() for p in (ROOT / "monitoring" / "dashboards").glob("*.json")}
    assert files and {k: v for cm in cms for k, v in cm["data"].items()} == files


def test_monitors_scrape_serving_and_the_pushgateway(tmp_path: Path) -> None:
    docs = render(tmp_path)
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "serving"
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} == {"http1", "serve"}
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True


def test_dags_configmap_carries_the_dags_their_spec_and_the_pod_template(tmp_path: Path) -> None:
    dags = {p.name: p.read_text() for p in (ROOT / "dags").glob("*.py")}
    (cm,) = [d for d in render(tmp_path) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "keel-dags"]
    data = dict(cm["data"])
    pod = json.loads(data.pop("keel_pod.json"))
    assert data.pop("keel.yaml") == (ROOT / "examples" / "fraud" / "keel.yaml").read_text()  # the image's project
    assert data == dags and dags
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "keel-pipeline" and spec["automountServiceAccountToken"] is True
    (base,) = spec["containers"]
    assert base["name"] == "base" and base["image"] == "ghcr.io/keel-ml/keel-platform:0.1.0"
    assert base["envFrom"] == [{"configMapRef": {"name": "keel-env"}}]
    env = env_of(base)
    assert env["KEEL_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "keel-redis", "key": "password"}}
    assert env["MLFLOW_TRACKING_PASSWORD"] == {"secretKeyRef": {"name": "keel-mlflow-auth", "key": "password"}}
    assert env["KEEL_AUDIT_DB"].endswith("@keel-postgres.ml.svc.cluster.local:5432/keel")
    assert base["securityContext"]["readOnlyRootFilesystem"] is True and spec["securityContext"]["runAsNonRoot"]

    s3 = json.loads(one(values(tmp_path, {"trainingSets": {"uri": "s3://ml/sets", "s3Secret": "ml-s3"}}),
                        "ConfigMap", "keel-dags")["data"]["keel_pod.json"])["spec"]
    assert env_of(s3["containers"][0])["KEEL_SNAPSHOT_URI"] == "s3://ml/sets"
    assert {"secretRef": {"name": "ml-s3"}} in s3["containers"][0]["envFrom"]
    assert all("persistentVolumeClaim" not in v for v in s3["volumes"])

    own = values(tmp_path, {"airflow": {"spec": "name: mine\nmodels: {}\n"}})
    assert one(own, "ConfigMap", "keel-dags")["data"]["keel.yaml"] == "name: mine\nmodels: {}\n"


def test_the_env_configmap_has_the_plain_settings_and_no_secret(tmp_path: Path) -> None:
    docs = render(tmp_path)
    data = one(docs, "ConfigMap", "keel-env")["data"]
    assert data["KEEL_PROFILE"] == "cluster" and data["KEEL_DEPLOY_TARGET"] == "cluster"
    assert data["KEEL_REDIS_ADDRESS"] == "keel-redis.ml.svc.cluster.local:6379"
    assert not [k for k in data if "PASSWORD" in k or k in ("KEEL_FEAST_REGISTRY", "KEEL_AUDIT_DB")]
    # the chart's own pods list the same settings one by one
    env = env_of(one(docs, "Deployment", "keel-feast")["spec"]["template"]["spec"]["containers"][0])
    assert {k: env[k] for k in data} == data
    launcher = one(docs, "RoleBinding", "keel-pipeline-launcher")
    assert launcher["subjects"] == [{"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"}]


def test_network_policies_deny_by_default_and_allow_what_keel_needs(tmp_path: Path) -> None:
    docs = values(tmp_path, {"models": [{"name": "fraud"}], "controller": {"enabled": True}})
    pols = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert pols["keel-default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for internal, port in (("keel-redis", 6379), ("keel-postgres", 5432), ("keel-mlflow", 5000)):
        rule = pols[internal]["ingress"][0]
        assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "keel"}}}]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
    assert {p["port"] for p in pols["keel-serving"]["ingress"][0]["ports"]} == {8080, 8000}
    assert {"keel-feast", "keel-pushgateway", "keel-controller"} <= set(pols)
    # every Ray cluster's nodes reach each other; the KubeRay operator reaches the head's dashboard only
    ray = pols.pop("keel-ray")
    assert ray["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "keel", "ray.io/is-ray-node": "yes"}
    assert ray["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "keel"}}}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}}],
         "ports": [{"port": 8265, "protocol": "TCP"}]}]
    # every pod the chart runs is selected by some policy besides default deny
    selected = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for n, p in pols.items()
                if n != "keel-default-deny"}
    components = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for d in docs
                  if d["kind"] in ("Deployment", "StatefulSet")}
    assert components <= selected
    assert not [d for d in render(tmp_path, "--set", "networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]


# -- docs, schema, images ------------------------------------------------------------------------------------
def _walk(vals: dict[str, Any], node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key in values.yaml, each checked to have a described schema entry (maps stop the walk)."""
    missing = []
    for k, v in vals.items():
        props = node.get("properties", {})
        if k not in props:
            missing.append(prefix + k)
            continue
        child = props[k]
        if "$ref" in child:
            child = {**root["definitions"][child["$ref"].rsplit("/", 1)[1]], **child}
        if not child.get("description"):
            missing.append(prefix + k)
        if isinstance(v, dict) and "properties" in child:
            missing += _walk(v, child, root, f"{prefix}{k}.")
    return missing


def test_every_value_has_a_described_schema_entry_and_unknown_keys_are_rejected(tmp_path: Path) -> None:
    vals = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _walk(vals, schema, schema) == []
    for name in PROFILES:
        assert _walk(yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()), schema, schema) == []
    assert "additional properties 'surprise' not allowed" in fails(tmp_path, {"surprise": 1})
    assert "'extra'" in fails(tmp_path, {"models": [{"name": "fraud", "extra": True}]})


def test_readme_parameter_table_is_generated_from_the_schema() -> None:
    from keel.chartdocs import parameter_table

    readme = (CHART / "README.md").read_text()
    table = parameter_table(json.loads((CHART / "values.schema.json").read_text()),
                            yaml.safe_load((CHART / "values.yaml").read_text()))
    assert table in readme, "charts/keel/README.md is stale: run `python -m keel.chartdocs`"
    assert "| `mlflow.auth.secret` |" in table and "| `models[].runtime` |" in table


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


def test_chart_images_are_pinned(tmp_path: Path) -> None:
    for name in PROFILES:
        images = jmespath.search("[].spec.template.spec.containers[].image", profile(tmp_path, name)) or []
        assert images and all(":" in i and not i.endswith(":latest") for i in images), images


# -- the SDK's cluster targets are the chart -------------------------------------------------------------------
@pytest.mark.parametrize(("target", "model", "flags"), [
    ("kserve", "fraud", ["--min-replicas", "2", "--max-replicas", "10", "--canary", "challenger:10",
                         "--priority-class", "keel-serving"]),
    ("rayserve", "fraud", ["--min-replicas", "0", "--max-replicas", "8", "--num-gpus", "0.25"]),
])
def test_keel_deploy_dry_run_prints_the_charts_objects(tmp_path: Path, target: str, model: str,
                                                       flags: list[str]) -> None:
    chart_profile = {"kserve": "production-ha", "rayserve": "rayserve"}[target]
    release_values = CHART / "ci" / f"{chart_profile}-values.yaml"
    proc = run_keel(["deploy", model, "--target", target, "--dry-run", "--values", str(release_values), *flags],
                    isolated_settings(tmp_path / "k"), KEEL_RELEASE="keel", KEEL_NAMESPACE="ml")
    assert proc.returncode == 0, proc.stderr
    printed = [d for d in yaml.safe_load_all(proc.stdout) if d]
    from_chart = [d for d in profile(tmp_path, chart_profile)
                  if d["metadata"].get("labels", {}).get("keel.dev/model") == model]
    if target == "kserve":  # the profile pins a drift schedule the CLI has no flag for
        from_chart = [d for d in from_chart if d["kind"] != "CronJob"]
        printed = [d for d in printed if d["kind"] != "CronJob"]
    assert printed == from_chart and {d["kind"] for d in printed} >= {"InferenceService" if target == "kserve"
                                                                     else "RayService"}


def test_keel_deploy_to_a_cluster_target_rejects_shadow(tmp_path: Path) -> None:
    proc = run_keel(["deploy", "fraud", "--target", "kserve", "--dry-run", "--shadow", "challenger"],
                    isolated_settings(tmp_path / "k"))
    assert proc.returncode == 2 and "--shadow is served by the local target only" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_chart_values_from_a_project_spec_serve_and_watch_each_model(tmp_path: Path) -> None:
    """`keel chart-values` turns the spec's models into the chart's `models:`; the chart renders a
    serving object and a drift CronJob for each, and the values pass the schema."""
    s = isolated_settings(tmp_path / "keel", project=ROOT / "examples" / "delivery")
    proc = run_keel(["chart-values"], s)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "models.yaml"
    path.write_text(proc.stdout)
    docs = render(tmp_path, "-f", str(path))
    isvcs = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "InferenceService")
    crons = [d["metadata"]["name"] for d in docs if d["kind"] == "CronJob"]
    assert isvcs == ["keel-delivery-speed", "keel-delivery-time"]
    assert sorted(crons) == ["keel-delivery-speed-drift", "keel-delivery-speed-performance",
                             "keel-delivery-time-drift", "keel-delivery-time-performance"]
