"""`helm install`, `upgrade` and `uninstall` of every values profile against a real API server (kcp), and
releases side by side: two in one namespace, more on one cluster. Nothing runs pods there, so hooks are
skipped (``--no-hooks``: the Feast apply Job would never finish) and nothing waits on readiness; what is
checked is what the API server does for real: validation against the built-in and CRD schemas, admission,
ownership of every object by its release, and name collisions."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.test_chart import CHART, HELM, PROFILES
from tests.conftest import ROOT
from tests.kubeapi import api

KUBECTL = shutil.which("kubectl") or str(ROOT / ".keel" / "bin" / "kubectl")


def helm(config: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"HELM_CACHE_HOME": str(tmp / "c"), "HELM_CONFIG_HOME": str(tmp / "g"), "HELM_DATA_HOME": str(tmp / "d"),
           "PATH": "/usr/bin:/bin", "HOME": str(tmp)}
    return subprocess.run([HELM, "--kubeconfig", str(config), *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False)


def install(config: Path, tmp: Path, release: str, ns: str, profile: str, *extra: str) -> list[dict[str, Any]]:
    proc = helm(config, tmp, "install", release, str(CHART), "-n", ns, "--no-hooks", "-f",
                str(CHART / "ci" / f"{profile}-values.yaml"), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return manifest(config, tmp, release, ns)


def manifest(config: Path, tmp: Path, release: str, ns: str) -> list[dict[str, Any]]:
    proc = helm(config, tmp, "get", "manifest", release, "-n", ns)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def live(config: Path, docs: list[dict[str, Any]], ns: str) -> list[dict[str, Any]]:
    """The objects as the API server holds them now (missing ones left out), asked in their own namespaces
    (a tenant's quota lives in the tenant's namespace)."""
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_ns.setdefault(d["metadata"].get("namespace", ns), []).append(d)
    found: list[dict[str, Any]] = []
    for where, group in by_ns.items():
        proc = subprocess.run([KUBECTL, "--kubeconfig", str(config), "get", "-n", where, "-f", "-", "-o", "json",
                               "--ignore-not-found"], input=yaml.safe_dump_all(group), capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout) if proc.stdout.strip() else {"items": []}
        found += out.get("items", [out] if out.get("kind") not in (None, "List") else [])
    return found


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_installs_upgrades_and_uninstalls(kubeconfig: Path, namespace: str, tmp_path: Path,
                                                  profile: str) -> None:
    release = f"r-{profile}"
    docs = install(kubeconfig, tmp_path, release, namespace, profile)
    stored = live(kubeconfig, docs, namespace)
    assert len(stored) == len(docs) > 5
    for obj in stored:  # every object is owned by this release (what lets another release sit beside it)
        notes = obj["metadata"].get("annotations", {})
        assert notes.get("meta.helm.sh/release-name") == release, obj["metadata"]["name"]
        if obj["kind"] not in ("Namespace", "PriorityClass"):
            assert obj["metadata"]["name"].startswith(f"{release}-keel"), (obj["kind"], obj["metadata"]["name"])

    up = helm(kubeconfig, tmp_path, "upgrade", release, str(CHART), "-n", namespace, "--no-hooks", "--reuse-values",
              "--set", "image.tag=0.1.1")
    assert up.returncode == 0, up.stderr[-3000:]
    images = [c["image"] for d in live(kubeconfig, docs, namespace) if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"] if c["image"].startswith("ghcr.io/keel-ml/")]
    assert images and all(i.endswith(":0.1.1") for i in images), images  # keel's images, not the peers' pins

    down = helm(kubeconfig, tmp_path, "uninstall", release, "-n", namespace, "--no-hooks")
    assert down.returncode == 0, down.stderr
    # gone, or going: a finalizer of a controller that does not run here (PVC protection, namespaces)
    left = [d for d in live(kubeconfig, docs, namespace) if not d["metadata"].get("deletionTimestamp")]
    assert left == [], [(d["kind"], d["metadata"]["name"]) for d in left]


def test_two_releases_share_a_namespace_and_more_share_the_cluster(kubeconfig: Path, namespace: str,
                                                                    tmp_path: Path) -> None:
    """production-ha creates PriorityClasses (cluster-scoped) and serves models: each release's are its own."""
    from kubernetes import client

    other = f"{namespace}-b"
    client.CoreV1Api(api(kubeconfig)).create_namespace({"metadata": {"name": other}})
    alpha = install(kubeconfig, tmp_path, "alpha", namespace, "production-ha")
    beta = install(kubeconfig, tmp_path, "beta", namespace, "production-ha")
    gamma = install(kubeconfig, tmp_path, "gamma", other, "production-ha")
    keel = install(kubeconfig, tmp_path, "keel", other, "minimal")  # a release named like the chart: "keel-*"

    def names(docs: list[dict[str, Any]], kind: str) -> set[str]:
        return {d["metadata"]["name"] for d in docs if d["kind"] == kind}

    assert names(alpha, "InferenceService") == {"alpha-keel-fraud", "alpha-keel-churn-score"}
    assert names(beta, "InferenceService") == {"beta-keel-fraud", "beta-keel-churn-score"}
    assert names(gamma, "PriorityClass") == {"gamma-keel-serving", "gamma-keel-experiments"}
    assert "keel-mlflow" in names(keel, "Deployment")
    isvc = next(d for d in live(kubeconfig, beta, namespace) if d["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["priorityClassName"] == "beta-keel-serving"
    pcs = client.SchedulingV1Api(api(kubeconfig)).list_priority_class().items
    assert {"alpha-keel-serving", "beta-keel-serving", "gamma-keel-serving"} <= {p.metadata.name for p in pcs}
    for release, ns in (("alpha", namespace), ("beta", namespace), ("gamma", other), ("keel", other)):
        assert helm(kubeconfig, tmp_path, "uninstall", release, "-n", ns, "--no-hooks").returncode == 0


def test_a_scale_to_zero_model_is_accepted_by_the_inference_service_schema(kubeconfig: Path, namespace: str,
                                                                           tmp_path: Path) -> None:
    """KServe's own CRD takes the serverless predictor (minReplicas 0, concurrency target) as keel renders it."""
    vals = tmp_path / "zero.yaml"
    vals.write_text(yaml.safe_dump({"models": [{"name": "fraud", "minReplicas": 0, "maxReplicas": 3,
                                                "serverless": True}]}))
    docs = install(kubeconfig, tmp_path, "zero", namespace, "minimal", "-f", str(vals))
    (isvc,) = [d for d in live(kubeconfig, docs, namespace) if d["kind"] == "InferenceService"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert (isvc["spec"]["predictor"]["minReplicas"], isvc["spec"]["predictor"]["scaleMetric"]) == (0, "concurrency")
