"""How a version is served (lookup or raw-feature mode) and when it is refused, from its tags and MLmodel."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from keel.features.training import frame_hash
from keel.serving.plan import ServeRefusedError, build_plan, check_requirements

KEEL_TAGS = {"keel.feature_service": "svc", "keel.features": "a,b", "keel.task": "regression",
             "keel.flavor": "sklearn"}
SIGNED = "flavors:\n  sklearn: {}\n  python_function: {}\nsignature:\n  inputs: '" + json.dumps(
    [{"type": "double", "name": "age"}, {"type": "long", "name": "n"}, {"type": "string", "name": "city"}]) + "'\n"
UNSIGNED = "flavors:\n  sklearn: {}\n  python_function: {}\n"


def test_a_keel_version_looks_its_features_up() -> None:
    plan = build_plan("m", "1", KEEL_TAGS, None, None, None)
    assert (plan.keel, plan.feature_service, plan.features, plan.task) == (True, "svc", ["a", "b"], "regression")


def test_a_plain_version_with_a_signature_serves_raw_typed_inputs() -> None:
    plan = build_plan("m", "1", {}, SIGNED, "scikit-learn\nnumpy>=1\n", None)
    assert plan.feature_service is None and plan.flavor == "sklearn"
    assert plan.inputs == {"age": "float", "n": "int", "city": "str"}


def test_a_plain_version_without_a_signature_is_refused_with_what_to_do() -> None:
    with pytest.raises(ServeRefusedError, match=r"signature names no inputs.*--feature-service"):
        build_plan("m", "1", {}, UNSIGNED, None, None)
    with pytest.raises(ServeRefusedError, match="no signature naming its inputs"):
        build_plan("m", "1", {}, UNSIGNED, None, "svc")


def test_feature_service_for_a_plain_version_takes_its_signature_inputs() -> None:
    plan = build_plan("m", "1", {}, SIGNED, None, "svc")
    assert plan.feature_service == "svc" and plan.features == ["age", "n", "city"] and plan.keel is False


def test_requirements_missing_here_are_refused_and_major_mismatches_warned() -> None:
    with pytest.raises(ServeRefusedError, match=r"needs 'no-such-package-xyz==1\.0'.*pip install"):
        check_requirements("mlflow==3.17.2\nno-such-package-xyz==1.0\n", "m", "1")
    warnings = check_requirements("numpy==1.0.0\n# a comment\n-r other.txt\n", "m", "1")
    assert len(warnings) == 1 and "numpy==1.0.0" in warnings[0]


def test_snapshots_with_map_and_struct_values_hash_and_sort() -> None:
    df = pd.DataFrame({"k": [2, 1], "m": [{"b": 1, "a": 2}, {"x": [1, 2]}], "l": [[1, 2], None]})
    same = pd.DataFrame({"k": [1, 2], "m": [{"x": [1, 2]}, {"a": 2, "b": 1}], "l": [None, [1, 2]]})
    assert frame_hash(df) == frame_hash(same)
    assert frame_hash(df) != frame_hash(df.assign(m=[{"b": 1, "a": 3}, {"x": [1, 2]}]))


def test_a_version_recorded_with_map_or_json_features_is_refused_naming_them() -> None:
    tags = {**KEEL_TAGS, "keel.unservable_features": "prefs:Map,meta:Json"}
    with pytest.raises(ServeRefusedError, match=r"'prefs' \(Map\), 'meta' \(Json\).*feature service 'svc'"):
        build_plan("m", "3", tags, None, None, None)
    assert build_plan("m", "3", {**KEEL_TAGS, "keel.unservable_features": ""}, None, None, None).keel


def test_a_training_set_names_its_unservable_features() -> None:
    from keel.features.training import TrainingSet

    ts = TrainingSet(frame=pd.DataFrame(), feature_service="svc", features=["a", "b", "c"], entity_keys=[],
                     label="y", snapshot=None, snapshot_hash="", window_start=None, window_end=None,  # type: ignore[arg-type]
                     definition_hash="", feature_views=[], engine="keel",
                     feature_types={"a": "Float64", "b": "Map", "c": "Array(Int64)"})
    assert ts.unservable == {"b": "Map", "c": "Array(Int64)"}
