"""Card transactions as events: per customer, how many and how much in the last hour, fresh within seconds.

`transactions_push` is a Feast PushSource; keel's stream consumer (`keel stream consume transactions_push`)
reads the events from a Redis Stream, computes `customer_live`'s aggregations as of each event and pushes
them; the same rows land in `data/transactions_live.parquet`, the offline side training sets join.
"""

from datetime import timedelta

from feast import Entity, FeatureService, Field, FileSource, PushSource, ValueType
from feast.aggregation import Aggregation
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float64, Int64

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)

transactions_push = PushSource(
    name="transactions_push",
    batch_source=FileSource(name="transactions_live", path="data/transactions_live.parquet",
                            timestamp_field="event_timestamp"),
)

customer_live = StreamFeatureView(
    name="customer_live",
    entities=[customer],
    ttl=timedelta(hours=1),
    schema=[Field(name="txn_count_1h_live", dtype=Int64), Field(name="amount_sum_1h_live", dtype=Float64)],
    source=transactions_push,
    aggregations=[
        Aggregation(column="amount", function="count", time_window=timedelta(hours=1), name="txn_count_1h_live"),
        Aggregation(column="amount", function="sum", time_window=timedelta(hours=1), name="amount_sum_1h_live"),
    ],
    timestamp_field="event_timestamp",
    online=True,
)

live_v1 = FeatureService(name="live_v1", features=[customer_live])
