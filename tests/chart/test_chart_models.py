"""A model's serving knobs in the chart (``models[]``) reach its serving spec and pods, and bad ones are
refused by the chart's schema before anything is applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.chart.test_chart import env_of, fails, one, values


def test_a_models_load_shedding_bound_and_priorities_reach_its_serving_spec(tmp_path: Path) -> None:
    from keel.serving.spec import ServeSpec

    docs = values(tmp_path, {"models": [{"name": "fraud", "maxInflight": 8,
                                         "priorities": {"critical": 1.0, "default": 0.5}}]})
    isvc = one(docs, "InferenceService")
    spec = ServeSpec.from_json(isvc["spec"]["predictor"]["containers"][0]["args"][-1])
    assert (spec.max_inflight, spec.priorities) == (8, {"critical": 1.0, "default": 0.5})
    assert ServeSpec.from_json(one(values(tmp_path, {"models": [{"name": "fraud"}]}), "InferenceService")
                               ["spec"]["predictor"]["containers"][0]["args"][-1]).max_inflight == 32
    assert "priorities" in fails(tmp_path, {"models": [{"name": "fraud", "priorities": {"low": 1.5}}]})
    assert "maxInflight" in fails(tmp_path, {"models": [{"name": "fraud", "maxInflight": 0}]})


def test_a_models_feature_cache_reaches_its_serving_spec_and_bad_sizes_are_refused(tmp_path: Path) -> None:
    from keel.serving.spec import ServeSpec

    def spec_of(model: dict) -> ServeSpec:
        isvc = one(values(tmp_path, {"models": [model]}), "InferenceService")
        return ServeSpec.from_json(isvc["spec"]["predictor"]["containers"][0]["args"][-1])

    on = spec_of({"name": "fraud", "featureCache": {"ttlSeconds": 2.5, "entities": 500, "staleSeconds": 0}})
    assert (on.cache_ttl_s, on.cache_size, on.cache_stale_s) == (2.5, 500, 0.0)
    assert spec_of({"name": "fraud", "featureCache": {"ttlSeconds": 0}}).cache_ttl_s == 0.0  # off
    default = spec_of({"name": "fraud"})
    assert (default.cache_ttl_s, default.cache_size, default.cache_stale_s) == (1.0, 10_000, 300.0)
    assert "entities" in fails(tmp_path, {"models": [{"name": "fraud", "featureCache": {"entities": 0}}]})
    assert "ttl" in fails(tmp_path, {"models": [{"name": "fraud", "featureCache": {"ttl": 1}}]})


def test_a_models_fallback_version_reaches_its_serving_spec(tmp_path: Path) -> None:
    from keel.serving.spec import ServeSpec

    def spec_of(model: dict) -> ServeSpec:
        isvc = one(values(tmp_path, {"models": [model]}), "InferenceService")
        return ServeSpec.from_json(isvc["spec"]["predictor"]["containers"][0]["args"][-1])

    assert spec_of({"name": "fraud", "fallback": "baseline"}).fallback == "baseline"
    assert spec_of({"name": "fraud", "fallback": 3}).fallback == "3"  # a version number
    assert spec_of({"name": "fraud"}).fallback is None
    assert "fallback" in fails(tmp_path, {"models": [{"name": "fraud", "fallback": "two words"}]})


def test_a_ray_models_ingress_and_batching_reach_its_rayservice(tmp_path: Path) -> None:
    from keel.serving.spec import ServeSpec

    def rayservice(**model: Any) -> dict[str, Any]:
        return one(values(tmp_path, {"models": [{"name": "fraud", "runtime": "ray", **model}]}), "RayService")

    def pods(rs: dict[str, Any]) -> list[dict[str, Any]]:
        cluster = rs["spec"]["rayClusterConfig"]
        return [cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
                *(g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"])]

    def args(rs: dict[str, Any]) -> ServeSpec:
        return ServeSpec(**yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"])

    default = rayservice()
    for container in pods(default):  # HAProxy ingress on every node that may hold replicas
        env = env_of(container)
        assert (env["RAY_SERVE_THROUGHPUT_OPTIMIZED"], env["RAY_SERVE_ENABLE_HA_PROXY"]) == ("1", "1"), env
    assert (args(default).batch_max_size, args(default).batch_wait_s) == (32, 0.0)
    proxy = rayservice(rayIngress="proxy", batching={"maxSize": 8, "waitMs": 2.5})
    assert not any("RAY_SERVE_ENABLE_HA_PROXY" in env_of(c) for c in pods(proxy))
    assert (args(proxy).batch_max_size, args(proxy).batch_wait_s) == (8, 0.0025)
    assert "rayIngress" in fails(tmp_path, {"models": [{"name": "fraud", "rayIngress": "nginx"}]})
    assert "maxSize" in fails(tmp_path, {"models": [{"name": "fraud", "batching": {"maxSize": 0}}]})
    assert "wait" in fails(tmp_path, {"models": [{"name": "fraud", "batching": {"wait": 1}}]})


def test_a_sticky_canary_and_its_key_reach_the_serving_spec(tmp_path: Path) -> None:
    from keel.serving.spec import ServeSpec

    def spec_of(canary: dict) -> ServeSpec:
        isvc = one(values(tmp_path, {"models": [{"name": "fraud", "canary": canary}]}), "InferenceService")
        return ServeSpec.from_json(isvc["spec"]["predictor"]["containers"][0]["args"][-1])

    default = spec_of({"alias": "challenger", "percent": 20})
    assert (default.canary_alias, default.canary_weight, default.sticky, default.sticky_key) == \
        ("challenger", 0.2, True, None)
    keyed = spec_of({"alias": "challenger", "stickyKey": "merchant_id"})
    assert keyed.sticky and keyed.sticky_key == "merchant_id"
    assert not spec_of({"alias": "challenger", "sticky": False}).sticky
    assert "stickyKey" in fails(tmp_path, {"models": [{"name": "fraud", "canary": {"alias": "c", "stickyKey": ""}}]})


def test_each_stream_gets_one_consumer_scraped_and_reachable_by_prometheus(tmp_path: Path) -> None:
    docs = values(tmp_path, {"streams": [{"source": "transactions_push", "batch": 200}]})
    dep = one(docs, "Deployment", "keel-stream-transactions-push")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["keel", "stream", "consume", "transactions_push", "--metrics-port", "9400", "--batch",
                            "200", "--claim-idle-ms", "30000"]
    assert env_of(c)["KEEL_PROFILE"] == "cluster"  # listens on the pod's interfaces, found by the PodMonitor
    monitor = one(docs, "PodMonitor", "keel-stream")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    policy = one(docs, "NetworkPolicy", "keel-stream")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 9400, "protocol": "TCP"}]
    assert not [d for d in values(tmp_path, {}) if "stream" in d["metadata"]["name"]]
    assert "source" in fails(tmp_path, {"streams": [{"batch": 10}]})
