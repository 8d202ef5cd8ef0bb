"""Courier features for delivery-time models: a string entity key and a categorical string feature."""

from datetime import timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

courier = Entity(name="courier", join_keys=["courier_id"], value_type=ValueType.STRING,
                 description="A courier, by its string id")

courier_stats = FeatureView(
    name="courier_stats",
    entities=[courier],
    ttl=timedelta(days=3),
    schema=[
        Field(name="avg_minutes_7d", dtype=Float64),
        Field(name="deliveries_7d", dtype=Int64),
        Field(name="vehicle", dtype=String),
    ],
    source=FileSource(name="courier_stats", path="data/courier_stats.parquet", timestamp_field="event_timestamp",
                      created_timestamp_column="created"),
    online=True,
)

order = RequestSource(name="order", schema=[Field(name="distance_km", dtype=Float64)])


@on_demand_feature_view(sources=[courier_stats, order], schema=[Field(name="expected_minutes", dtype=Float64)],
                        mode="python")
def expected(inputs: dict[str, list[Any]]) -> dict[str, list[float]]:
    out = []
    for avg, km in zip(inputs["avg_minutes_7d"], inputs["distance_km"], strict=True):
        base = 20.0 if avg is None or avg != avg else float(avg)
        out.append(base * (0.5 + float(km) / 10.0))
    return {"expected_minutes": out}


delivery_v1 = FeatureService(name="delivery_v1", features=[courier_stats, expected])
