"""A real Kubernetes API server for the tests of the cluster path: ``../shared/kcp`` (kube-apiserver + etcd on
loopback), one per session, with the upstream CRDs of ``../shared/crds`` applied and Established
first, as envtest does for controller-runtime projects. Each test takes a namespace of its own."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

SHARED = ROOT.parent / "shared"
KCP = SHARED / "kcp" / "kcp"
CRDS = SHARED / "crds"


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not KCP.exists() or not CRDS.is_dir():
        pytest.skip(f"no API server for tests: {KCP} or {CRDS} is absent (see ../shared/kcp/README.md)")
    root = tmp_path_factory.mktemp("kcp")
    started = subprocess.run([str(KCP), "start", str(root)], capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        config = root / "kubeconfig"
        _apply_crds(config)
        yield config
    finally:
        subprocess.run([str(KCP), "stop", str(root)], capture_output=True, text=True, timeout=60)


def api(config: Path) -> Any:
    from kubernetes import config as kconfig

    return kconfig.new_client_from_config(config_file=str(config))


def _apply_crds(config: Path) -> None:
    import json

    from kubernetes import client

    ext = client.ApiextensionsV1Api(api(config))
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # libyaml: the CRDs are megabytes
        # raw responses: turning a multi-megabyte CRD schema into client model objects costs seconds each
        ext.create_custom_resource_definition(crd, _preload_content=False)
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + 60
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            raw = ext.read_custom_resource_definition_status(name, _preload_content=False)
            conds = json.loads(raw.data).get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                pending.discard(name)
        if pending:
            time.sleep(0.2)  # the API server establishes each CRD within a second
    assert not pending, f"CRDs not Established: {sorted(pending)}"


@pytest.fixture
def namespace(kubeconfig: Path) -> str:
    """A fresh namespace (namespaces never finish terminating here: there is no controller-manager)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api(kubeconfig)).create_namespace({"metadata": {"name": name}})
    return name
