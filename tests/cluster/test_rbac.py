"""RBAC proven, not just rendered: SubjectAccessReviews against a real API server (kcp), after `helm
install`. Each identity the chart creates or binds is allowed exactly what it needs and denied the rest:
other namespaces, Secrets it does not own, creating and deleting what it only patches."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.chart.test_chart import CHART
from tests.cluster.test_helm_lifecycle import install
from tests.kubeapi import api


def allowed(config: Path, user: str, groups: list[str], verb: str, group: str, resource: str, ns: str) -> bool:
    from kubernetes import client

    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=groups, resource_attributes=client.V1ResourceAttributes(
            verb=verb, group=group, resource=resource, namespace=ns)))
    return bool(client.AuthorizationV1Api(api(config)).create_subject_access_review(review).status.allowed)


def test_the_controller_may_read_and_patch_its_releases_serving_objects_only(kubeconfig: Path, namespace: str,
                                                                              tmp_path: Path) -> None:
    install(kubeconfig, tmp_path, "keel", namespace, "production-ha")
    sa = f"system:serviceaccount:{namespace}:keel-controller"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    serving = [("serving.kserve.io", "inferenceservices"), ("ray.io", "rayservices")]
    matrix = []
    for group, resource in serving:
        for verb in ("get", "patch"):
            matrix.append((verb, group, resource, namespace, True))
        for verb in ("create", "delete", "deletecollection", "update", "list", "watch"):
            matrix.append((verb, group, resource, namespace, False))
        matrix.append(("patch", group, resource, "kube-system", False))  # another namespace
    matrix += [(verb, "", "secrets", namespace, False) for verb in ("get", "list", "watch")]
    matrix += [("create", "", "pods/exec", namespace, False), ("get", "", "configmaps", namespace, False),
               ("create", "", "pods", namespace, False), ("patch", "apps", "deployments", namespace, False),
               ("create", "rbac.authorization.k8s.io", "rolebindings", namespace, False),
               ("patch", "keda.sh", "scaledobjects", namespace, False)]
    got = [(v, g, r, ns, allowed(kubeconfig, sa, groups, v, g, r, ns)) for v, g, r, ns, _ in matrix]
    assert got == matrix, [m for m, g in zip(matrix, got, strict=True) if m != g]


def test_the_dag_pods_and_airflow_may_do_what_a_retraining_run_needs_only(kubeconfig: Path, namespace: str,
                                                                         tmp_path: Path) -> None:
    """The DAG steps' ServiceAccount rolls out (get/patch the serving objects), runs training RayJobs, and
    nothing more; Airflow's worker ServiceAccount (another namespace) may run the step pods here: create,
    watch, logs, the XCom sidecar's exec, delete — and touch nothing else of the release."""
    install(kubeconfig, tmp_path, "keel", namespace, "minimal")
    sa_groups = ["system:serviceaccounts", "system:authenticated"]
    steps = f"system:serviceaccount:{namespace}:keel-pipeline"
    matrix: list[tuple[str, str, str, str, str, bool]] = []
    for group, resource in (("serving.kserve.io", "inferenceservices"), ("ray.io", "rayservices")):
        matrix += [(steps, v, group, resource, namespace, True) for v in ("get", "patch")]
        matrix += [(steps, v, group, resource, namespace, False) for v in ("create", "delete", "list")]
        matrix.append((steps, "patch", group, resource, "default", False))
    # a model with training.ray: the train step runs its RayJob (create, follow, replace a failed one)
    matrix += [(steps, v, "ray.io", "rayjobs", namespace, True) for v in ("create", "get", "delete")]
    matrix += [(steps, v, "ray.io", "rayjobs", namespace, False) for v in ("list", "patch", "update")]
    matrix += [(steps, "create", "ray.io", "rayjobs", "default", False),
               (steps, "create", "ray.io", "rayclusters", namespace, False)]
    matrix += [(steps, v, "", "secrets", namespace, False) for v in ("get", "list")]
    matrix += [(steps, "create", "", "pods", namespace, False), (steps, "get", "", "configmaps", namespace, False),
               (steps, "patch", "apps", "deployments", namespace, False)]
    worker = "system:serviceaccount:airflow:airflow-worker"
    matrix += [(worker, v, "", "pods", namespace, True) for v in ("create", "get", "list", "watch", "delete")]
    matrix += [(worker, "get", "", "pods/log", namespace, True), (worker, "create", "", "pods/exec", namespace, True),
               (worker, "create", "", "pods", "default", False), (worker, "get", "", "secrets", namespace, False),
               (worker, "get", "", "configmaps", namespace, False),
               (worker, "patch", "serving.kserve.io", "inferenceservices", namespace, False),
               (worker, "create", "rbac.authorization.k8s.io", "rolebindings", namespace, False)]
    got = [(u, v, g, r, ns, allowed(kubeconfig, u, sa_groups, v, g, r, ns)) for u, v, g, r, ns, _ in matrix]
    assert got == matrix, [m for m, g in zip(matrix, got, strict=True) if m != g]


@pytest.mark.parametrize(("who", "verb", "resource", "ns", "expected"), [
    ("fraud-leads", "create", "rolebindings", "team-fraud", True),    # admin: manages its team's access
    ("fraud-ds", "create", "deployments", "team-fraud", True),        # edit: runs workloads
    ("fraud-ds", "create", "rolebindings", "team-fraud", False),      # ...but grants nothing
    ("fraud-ds", "get", "secrets", "team-risk", False),               # another team's namespace
    ("fraud-ds", "create", "deployments", "team-risk", False),
    ("sre", "list", "pods", "team-fraud", True),                      # view
    ("sre", "get", "secrets", "team-fraud", False),                   # view never reads Secrets
    ("sre", "delete", "pods", "team-fraud", False),
    ("risk-ds", "create", "deployments", "team-risk", True),
    ("risk-ds", "list", "pods", "team-fraud", False),
])
def test_tenant_groups_reach_their_own_namespace_only(tenant_release: Path, who: str, verb: str, resource: str,
                                                      ns: str, expected: bool) -> None:
    group = {"deployments": "apps", "rolebindings": "rbac.authorization.k8s.io"}.get(resource, "")
    assert allowed(tenant_release, f"user-in-{who}", [who, "system:authenticated"], verb, group, resource,
                   f"rbac-{ns}") is expected


def controller_manager_aggregates_cluster_roles(config: Path) -> None:
    """The clusterrole-aggregation controller's part (kube-controller-manager does not run here): fill
    each aggregated ClusterRole (admin, edit, view) with the rules of the roles its selectors match."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(api(config))
    roles = rbac.list_cluster_role().items
    for role in roles:
        if not role.aggregation_rule:
            continue
        rules = []
        for sel in role.aggregation_rule.cluster_role_selectors or []:
            want = sel.match_labels or {}
            for other in roles:
                labels = other.metadata.labels or {}
                if other.metadata.name != role.metadata.name and all(labels.get(k) == v for k, v in want.items()):
                    rules += other.rules or []
        role.rules = rules
        rbac.replace_cluster_role(role.metadata.name, role)


@pytest.fixture(scope="module")
def tenant_release(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multi-tenant profile once (its team namespaces are cluster-wide names: one owner per cluster)."""
    from kubernetes import client

    controller_manager_aggregates_cluster_roles(kubeconfig)
    tmp = tmp_path_factory.mktemp("tenants")
    client.CoreV1Api(api(kubeconfig)).create_namespace({"metadata": {"name": "tenant-platform"}})
    # the profile's teams, under names of their own: a namespace has one owning release per cluster, and
    # the lifecycle test's release of the same profile leaves its (never-terminating) namespaces behind
    teams = yaml.safe_load((CHART / "ci" / "multi-tenant-values.yaml").read_text())["tenants"]
    renamed = tmp / "teams.yaml"
    renamed.write_text(yaml.safe_dump({"tenants": [{**t, "name": f"rbac-{t['name']}"} for t in teams]}))
    install(kubeconfig, tmp, "rbac", "tenant-platform", "multi-tenant", "-f", str(renamed))
    return kubeconfig
