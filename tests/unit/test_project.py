"""The project spec (keel.yaml): found as documented, validated with errors naming file, key and choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel import project
from keel.errors import KeelError
from tests.conftest import ROOT

MODEL = {"feature_service": "svc", "label": "y", "labels": "data/events.parquet", "task": "regression",
         "train": "train:fit"}


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "repo").mkdir(exist_ok=True)
    (tmp_path / "repo" / "feature_store.yaml").write_text("project: p\n")
    (tmp_path / "keel.yaml").write_text(text)
    return tmp_path / "keel.yaml"


def test_the_fraud_example_spec_loads() -> None:
    spec = project.load(ROOT / "examples" / "fraud")
    m = spec.model("fraud")
    assert (m.task, m.gate_metric, m.feature_service) == ("binary", "roc_auc", "fraud_model_v1")
    assert spec.feature_repo == ROOT / "examples" / "fraud" / "feature_repo"
    assert callable(spec.entry_point("fraud"))


def test_relative_paths_resolve_from_the_spec_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "feature_repo: repo\nmodels:\n  m: " + str(MODEL).replace("'", '"') + "\n")
    monkeypatch.chdir("/")
    spec = project.load(path)
    assert spec.feature_repo == tmp_path / "repo"
    assert spec.resolve(spec.model("m").labels) == str(tmp_path / "data" / "events.parquet")
    assert spec.resolve("${KEEL_HOME}/x.parquet", home=Path("/state")) == "/state/x.parquet"
    assert spec.resolve("s3://bucket/events/") == "s3://bucket/events/"
    assert spec.model("m").gate_metric == "rmse"  # the task's default, lower is better


def test_found_from_env_or_a_parent_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "feature_repo: repo\n")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    assert project.find() == tmp_path / "keel.yaml"
    monkeypatch.setenv("KEEL_PROJECT", str(tmp_path))
    assert project.find() == tmp_path / "keel.yaml"
    monkeypatch.setenv("KEEL_PROJECT", str(tmp_path / "nope"))
    with pytest.raises(KeelError, match=r"KEEL_PROJECT=.*nope: no project spec there"):
        project.find()


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("models: {m: {feature_service: x}}", ["missing key 'models.m.label'", "models.m.task"]),
        ("models: {m: {feature_service: x, label: y, labels: z, task: ranking, train: 'a:b'}}",
         ["models.m.task", "'binary', 'multiclass' or 'regression'", "'ranking'"]),
        ("models: {m: {feature_service: x, label: y, labels: z, task: regression, train: 'a:b', "
         "gate: {metric: roc_auc}}}", ["gate metric 'roc_auc' does not apply to task 'regression'", "rmse, mae, r2"]),
        ("models: {m: {feature_service: x, label: y, labels: z, task: binary, train: nocolon}}",
         ["models.m.train", "module:function"]),
        ("models: {m: {feature_service: x, label: y, labels: z, task: binary, train: 'a:b', colour: red}}",
         ["unknown key 'models.m.colour'", "valid keys: batch_score, card, drift, feature_service"]),
        ("modles: {}", ["unknown key 'modles'", "valid keys: airflow, data, demo, feature_repo, models"]),
        ("models: [1, 2]", ["models: expected a mapping"]),
        ("feature_repo: elsewhere", ["feature_repo: no feature_store.yaml in"]),
        ("models: {m: {feature_service: x, label: y, labels: z, task: binary, train: 'a:b', "
         "rollout: {canary_percent: 150}}}", ["models.m.rollout.canary_percent", "150"]),
        ("models: {m: {feature_service: x, label: y, labels: z, task: binary, train: 'a:b', "
         "serving: {cache_size: 0}}}", ["models.m.serving.cache_size", "0"]),
        ("models: {m: {feature_service: x, label: y, labels: z, task: binary, train: 'a:b', "
         "serving: {fallback: ''}}}", ["models.m.serving.fallback"]),
        (": not yaml: [", ["not valid YAML"]),
    ],
)
def test_errors_name_the_file_the_key_and_the_choices(tmp_path: Path, body: str, needles: list[str]) -> None:
    path = _write(tmp_path, ("feature_repo: repo\n" if "feature_repo" not in body else "") + body)
    with pytest.raises(KeelError) as err:
        project.load(path)
    assert str(path) in str(err.value)
    for n in needles:
        assert n in str(err.value)


def test_an_entry_point_that_cannot_load_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "feature_repo: repo\nmodels:\n  m: " + str({**MODEL, "train": "nomod:fit"})
                  .replace("'", '"') + "\n")
    with pytest.raises(KeelError, match=r"models\.m\.train: entry point 'nomod:fit' cannot be loaded"):
        project.load(path).entry_point("m")
