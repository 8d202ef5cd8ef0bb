"""The RayJob a model with training.ray trains in, filled in from the chart's template (pure logic; the
API server's own check of it is tests/cluster/test_rayjob.py)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from keel import project, rayjob
from keel.errors import KeelError
from keel.retrain import parser
from tests.unit.test_project import MODEL, _write


def _template() -> dict:
    node = {"spec": {"containers": [{"name": "ray", "image": "img", "env": [{"name": "A", "value": "1"}]}]}}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"namespace": "ns", "labels": {"x": "y"}},
            "spec": {"entrypoint": "", "rayClusterSpec": {
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": json.loads(json.dumps(node))},
                "workerGroupSpecs": [{"groupName": "train", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                                      "rayStartParams": {}, "template": json.loads(json.dumps(node))}]}}}


@pytest.mark.parametrize("model, run_id", [("fraud", "manual__2026-12-03T10:00:00+00:00"),
                                           ("A_Very_Long_Model.Name-" * 4, "scheduled__2026-01-01T00:00:00+00:00"),
                                           ("__", "r")])
def test_one_valid_name_per_run(model: str, run_id: str) -> None:
    name = rayjob.job_name(model, run_id)
    assert len(name) <= rayjob.NAME_MAX and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    assert name == rayjob.job_name(model, run_id) and name != rayjob.job_name(model, run_id + "x")


def test_the_run_fills_entrypoint_workers_and_their_resources() -> None:
    conf = {"params": {"max_depth": 4, "note": "it's \"quoted\" $HOME"}, "labels": None}
    ray = project.RayTrainingSpec(workers=3, cpu="4", memory="12Gi", gpus=1)
    job = rayjob.build(_template(), "fraud", "manual__2026-12-03T10:00:00+00:00", conf, ray)
    assert job["metadata"]["annotations"][rayjob.RUN_ANNOTATION] == "manual__2026-12-03T10:00:00+00:00"
    assert job["metadata"]["labels"] == {"x": "y", "keel.dev/model": "fraud", "keel.dev/step": "train"}
    # the entrypoint is a shell line (Ray runs it so): it parses back to the step's own command line
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "keel.retrain"]
    parsed = parser().parse_args(argv[3:])
    assert (parsed.step, parsed.model, parsed.run_id) == ("train", "fraud", "manual__2026-12-03T10:00:00+00:00")
    assert json.loads(parsed.conf) == conf
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"] == {"requests": {"cpu": "4", "memory": "12Gi"},
                                   "limits": {"cpu": "4", "memory": "12Gi", "nvidia.com/gpu": "1"}}
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for c in (head, worker):
        assert c["env"] == [{"name": "A", "value": "1"}, {"name": "KEEL_TRAIN_WORKERS", "value": "3"}]
    assert _template()["spec"]["entrypoint"] == ""  # the template itself is left as it was


def test_a_template_keel_cannot_fill_is_refused_by_name(tmp_path: Path) -> None:
    two = _template()
    two["spec"]["rayClusterSpec"]["workerGroupSpecs"] *= 2
    with pytest.raises(KeelError, match="2 worker groups"):
        rayjob.build(two, "m", "r", {}, project.RayTrainingSpec())
    from keel.config import Settings

    missing = tmp_path / "rayjob.json"
    with pytest.raises(KeelError, match=re.escape(str(missing))):
        rayjob.load_template(Settings(home=tmp_path, rayjob_template=missing))
    missing.write_text(json.dumps({"kind": "Pod"}))
    with pytest.raises(KeelError, match="'Pod', not the chart's RayJob"):
        rayjob.load_template(Settings(home=tmp_path, rayjob_template=missing))


def test_the_spec_puts_ray_resources_in_one_place(tmp_path: Path) -> None:
    ok = {**MODEL, "training": {"ray": {"workers": 4, "cpu": "2", "memory": "8Gi"}}}
    spec = project.load(_write(tmp_path, "feature_repo: repo\nmodels:\n  m: " + json.dumps(ok) + "\n"))
    assert spec.model("m").training.ray == project.RayTrainingSpec(workers=4, cpu="2", memory="8Gi")
    both = {**MODEL, "training": {"cpu": "4", "ray": {"workers": 2}}}
    with pytest.raises(KeelError, match=r"per worker under training\.ray"):
        project.load(_write(tmp_path, "feature_repo: repo\nmodels:\n  m: " + json.dumps(both) + "\n"))
    bad = {**MODEL, "training": {"ray": {"workers": 0}}}
    with pytest.raises(KeelError, match="workers"):
        project.load(_write(tmp_path, "feature_repo: repo\nmodels:\n  m: " + json.dumps(bad) + "\n"))
