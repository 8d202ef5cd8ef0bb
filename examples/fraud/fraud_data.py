"""A seeded generator of card transactions, labels and feature snapshots for the fraud domain.

Customers and merchants have hidden traits (usual spend, riskiness); feature snapshots are noisy,
time-stamped views of those traits, and a transaction's fraud label depends on the same traits plus
how unusual its amount is. So a model trained on point-in-time features learns something real, and
drift injected on a feature after ``drift_start`` is visible to a drift job without touching labels.
Everything is vectorised numpy: a million transactions take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from keel.errors import KeelError

SPEND_FEATURES = ("txn_count_1h", "amount_sum_1h", "txn_count_24h", "amount_sum_24h", "amount_mean_24h",
                  "amount_mean_7d", "amount_std_7d")
PROFILE_FEATURES = ("account_age_days", "credit_limit", "chargebacks_90d")
MERCHANT_FEATURES = ("merchant_fraud_rate_30d", "merchant_txn_count_24h", "merchant_avg_amount_7d")
TABLE_OF = {**dict.fromkeys(SPEND_FEATURES, "customer_spend"),
            **dict.fromkeys(PROFILE_FEATURES, "customer_profile"),
            **dict.fromkeys(MERCHANT_FEATURES, "merchant_risk"),
            "amount": "transactions"}


def _this_hour() -> datetime:
    """Default end of the generated window: data ends "now", so Feast's first incremental
    materialization (which looks back one TTL from now) finds fresh rows, as in production."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class GenSpec:
    """What to generate. ``drift`` maps a feature (or ``amount``) to a multiplier applied after
    ``drift_start`` (a fraction of the window, 0..1)."""

    transactions: int = 50_000
    customers: int = 2_000
    merchants: int = 200
    days: int = 14
    seed: int = 7
    end: datetime = field(default_factory=lambda: _this_hour())
    spend_every_hours: int = 6
    drift: dict[str, float] = field(default_factory=dict)
    drift_start: float = 0.8

    def __post_init__(self) -> None:
        for name in ("transactions", "customers", "merchants", "days", "spend_every_hours"):
            if getattr(self, name) <= 0:
                raise KeelError(f"invalid {name}={getattr(self, name)}: expected a positive integer")
        for feat in self.drift:
            if feat not in TABLE_OF:
                raise KeelError(f"unknown feature '{feat}' in drift; valid choices: {', '.join(sorted(TABLE_OF))}")
        if not 0.0 <= self.drift_start <= 1.0:
            raise KeelError(f"invalid drift_start={self.drift_start}: expected a fraction between 0 and 1")

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


def _ts(start: datetime, seconds: np.ndarray) -> pd.Series:
    base = pd.Timestamp(start).as_unit("us")
    return pd.Series(base + pd.to_timedelta(np.asarray(seconds, dtype="int64"), unit="s"), dtype="datetime64[us, UTC]")


def _apply_drift(df: pd.DataFrame, spec: GenSpec, table: str) -> pd.DataFrame:
    cut = pd.Timestamp(spec.start + (spec.end - spec.start) * spec.drift_start)
    late = df["event_timestamp"] >= cut
    for feat, factor in spec.drift.items():
        if TABLE_OF[feat] == table:
            scaled = df.loc[late, feat] * factor
            df.loc[late, feat] = scaled.round().astype(df[feat].dtype) if df[feat].dtype.kind == "i" else scaled
    return df


def generate(spec: GenSpec) -> dict[str, pd.DataFrame]:
    """Return the four tables: transactions (labelled events) and three feature-snapshot tables."""
    rng = np.random.default_rng(spec.seed)
    window = spec.days * 86_400
    n_c, n_m = spec.customers, spec.merchants

    # hidden traits
    c_spend = rng.lognormal(3.6, 0.6, n_c)             # usual amount (~37)
    c_rate = rng.gamma(2.0, 1.5, n_c)                    # transactions per day
    c_risk = rng.beta(1.2, 12.0, n_c)
    m_risk = rng.beta(1.0, 25.0, n_m)
    m_amount = rng.lognormal(3.8, 0.5, n_m)

    # transactions (labelled events)
    n = spec.transactions
    cust = rng.choice(n_c, n, p=c_rate / c_rate.sum())
    merch = rng.integers(0, n_m, n)
    amount = np.round(c_spend[cust] * rng.lognormal(0.0, 0.5, n), 2)
    fraudish = rng.random(n) < 0.04
    amount = np.where(fraudish, np.round(amount * rng.uniform(2.0, 8.0, n), 2), amount)
    t = np.sort(rng.integers(0, window, n))
    logit = -6.0 + 12.0 * c_risk[cust] + 25.0 * m_risk[merch] + 1.6 * np.log(amount / c_spend[cust])
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype("int64")
    tx = pd.DataFrame({
        "transaction_id": np.arange(n, dtype="int64"),
        "customer_id": cust.astype("int64"),
        "merchant_id": merch.astype("int64"),
        "amount": amount,
        "event_timestamp": _ts(spec.start, t),
        "is_fraud": label,
    })

    # customer_spend: a snapshot per customer every few hours (jittered), so TTL and PIT both matter
    step = spec.spend_every_hours * 3600
    slots = np.arange(0, window, step)
    cs_c = np.repeat(np.arange(n_c), len(slots))
    cs_t = np.tile(slots, n_c) + rng.integers(0, step // 2, len(cs_c))
    keep = rng.random(len(cs_c)) > 0.1                   # some customers go quiet: stale rows expire
    cs_c, cs_t = cs_c[keep], cs_t[keep]
    m = len(cs_c)
    cnt1 = rng.poisson(c_rate[cs_c] / 24.0)
    cnt24 = rng.poisson(c_rate[cs_c]) + cnt1
    mean24 = np.round(c_spend[cs_c] * rng.lognormal(0, 0.15, m), 2)
    spend = pd.DataFrame({
        "customer_id": cs_c.astype("int64"),
        "event_timestamp": _ts(spec.start, cs_t),
        "created": _ts(spec.start, cs_t + rng.integers(1, 900, m)),
        "txn_count_1h": cnt1.astype("int64"),
        "amount_sum_1h": np.round(cnt1 * mean24, 2),
        "txn_count_24h": cnt24.astype("int64"),
        "amount_sum_24h": np.round(cnt24 * mean24, 2),
        "amount_mean_24h": mean24,
        "amount_mean_7d": np.round(c_spend[cs_c] * rng.lognormal(0, 0.05, m), 2),
        "amount_std_7d": np.round(c_spend[cs_c] * 0.5 * rng.lognormal(0, 0.1, m), 2),
    })

    # customer_profile: one row at the start of the window, a second for a third of customers
    pc = np.concatenate([np.arange(n_c), rng.choice(n_c, n_c // 3, replace=False)])
    pt = np.concatenate([np.zeros(n_c, dtype="int64"), rng.integers(0, window, n_c // 3)])
    k = len(pc)
    profile = pd.DataFrame({
        "customer_id": pc.astype("int64"),
        "event_timestamp": _ts(spec.start - timedelta(days=1), pt),
        "created": _ts(spec.start - timedelta(days=1), pt + 60),
        "account_age_days": rng.integers(30, 3650, k).astype("int64"),
        "credit_limit": np.round(c_spend[pc] * rng.uniform(40, 120, k), -1),
        "chargebacks_90d": rng.poisson(c_risk[pc] * 10).astype("int64"),
    })

    # merchant_risk: daily snapshots
    days = np.arange(-1, spec.days)
    mc = np.repeat(np.arange(n_m), len(days))
    mt = np.tile(days * 86_400, n_m) + rng.integers(0, 3600, len(mc))
    j = len(mc)
    merchant = pd.DataFrame({
        "merchant_id": mc.astype("int64"),
        "event_timestamp": _ts(spec.start, mt),
        "created": _ts(spec.start, mt + 120),
        "merchant_fraud_rate_30d": np.clip(m_risk[mc] + rng.normal(0, 0.005, j), 0, 1),
        "merchant_txn_count_24h": rng.poisson(n / spec.days / n_m, j).astype("int64"),
        "merchant_avg_amount_7d": np.round(m_amount[mc] * rng.lognormal(0, 0.05, j), 2),
    })

    return {
        "transactions": _apply_drift(tx, spec, "transactions"),
        "customer_spend": _apply_drift(spend, spec, "customer_spend"),
        "customer_profile": _apply_drift(profile, spec, "customer_profile"),
        "merchant_risk": _apply_drift(merchant, spec, "merchant_risk"),
    }


def write(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """Write parquet with microsecond timestamps (DuckDB materialization fails on nanoseconds)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, df in tables.items():
        path = out_dir / f"{name}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, coerce_timestamps="us",
                       allow_truncated_timestamps=True)
        tmp.replace(path)
        paths[name] = path
    return paths


def generate_to(out_dir: Path | None = None, rows: int = 100_000, seed: int = 7,
                drift: dict[str, float] | None = None, end: datetime | None = None) -> dict[str, Path]:
    """The project's data hook (``data.generate`` in keel.yaml), called by `keel data generate` and
    `make demo`: ``rows`` labelled transactions and the feature snapshots behind them, under ``out_dir``
    (default: keel's data directory, where this example's feature repo reads them)."""
    from keel.config import load_settings

    spec = GenSpec(transactions=rows, customers=max(500, rows // 20), seed=seed, drift=drift or {},
                   **({"end": end} if end else {}))
    return write(generate(spec), out_dir or load_settings().data_dir)
