"""Batch scoring: a table of entity rows (each with the time it is to be scored as of) in, one score per
row out, computed by the serving code itself.

Why the same code as online: a batch score that differs from what the endpoint would have answered for
the same entity at the same instant is a silent training/serving skew of its own. So the model is loaded
by ``Predictor.from_registry`` (same plan, flavor, device and null handling) and scored through
``Predictor.score``; only the features' source differs: point-in-time values from the offline store, as
of each row's timestamp (keel's DuckDB engine, Feast's semantics), instead of the online store's latest.
A version registered without keel (raw-feature mode) scores the inputs the rows carry.

Rows are scored in chunks, so memory is bounded by the chunk, not the table; with a Ray cluster the
chunks are Ray Data blocks scored by actors across its nodes (``keel.batch_ray``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from keel.config import Settings
from keel.errors import KeelError
from keel.features.training import TIMESTAMP

ROW = "_keel_row"
FORMATS = (".parquet", ".csv")
ENGINES = ("auto", "local", "ray")


@dataclass
class BatchResult:
    frame: pd.DataFrame  # the input rows, in order, with score, degraded, model, version, request_id
    model: str
    version: str
    batch_id: str
    nodes: int = 1  # Ray nodes that scored (1: this process)

    @property
    def degraded(self) -> int:
        return int(self.frame["degraded"].sum())


def read_entities(source: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    where = str(source)
    if not where.endswith(FORMATS):
        raise KeelError(f"entities '{where}': expected a .parquet or .csv file (or URI)")
    if "://" not in where and not Path(where).is_file():
        raise KeelError(f"entities '{where}': no such file")
    return pd.read_parquet(where) if where.endswith(".parquet") else pd.read_csv(where)


def check_output(out: str | Path) -> str:
    """Checked before any scoring: a bad output path must not cost the whole run."""
    where = str(out)
    if not where.endswith(FORMATS):
        raise KeelError(f"--out '{where}': expected a path ending in .parquet or .csv")
    if "://" not in where:
        parent = Path(where).resolve().parent
        if not parent.is_dir():
            raise KeelError(f"--out '{where}': directory {parent} does not exist")
    return where


def write(frame: pd.DataFrame, out: str | Path) -> str:
    where = check_output(out)
    if where.endswith(".parquet"):
        frame.to_parquet(where, index=False)
    else:
        frame.to_csv(where, index=False)
    return where


def score(settings: Settings, model: str, entities: pd.DataFrame | str | Path, alias: str = "champion",
          version: str | None = None, chunk_rows: int = 50_000,
          progress: Callable[[int, int], None] | None = None, engine: str = "auto") -> BatchResult:
    """Score every row of ``entities`` with MODEL's ALIAS (or VERSION). Feature mode needs the feature
    service's entity keys, its request fields and ``event_timestamp`` (the instant each row is scored as
    of); raw-feature mode, the inputs the model's signature names.

    ``engine``: ``local`` (this process, chunk after chunk), ``ray`` (Ray Data across the cluster of
    ``Settings.ray_cluster``), or ``auto``: Ray when a cluster is configured and the rows are more than
    one chunk."""
    from keel.serving.core import Predictor

    if chunk_rows < 1:
        raise KeelError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if engine not in ENGINES:
        raise KeelError(f"unknown engine '{engine}'; valid choices: {', '.join(ENGINES)}")
    if engine == "ray" and not settings.ray_cluster:
        raise KeelError("engine 'ray' needs a Ray cluster: KEEL_RAY_ADDRESS, or KEEL_RAY_WORKERS > 0 and `keel up`")
    rows = read_entities(entities)
    if rows.empty:
        raise KeelError("entities: the table is empty; nothing to score")
    predictor = Predictor.from_registry(settings, model, alias=None if version else alias, version=version,
                                        max_batch=chunk_rows)
    online = predictor.online
    keyed = bool(online.entity_keys)
    needed = [*online.entity_keys, *online.request_fields] + ([TIMESTAMP] if keyed else [])
    missing = [c for c in needed if c not in rows.columns]
    if missing:
        raise KeelError(f"entities lack column(s) {', '.join(missing)} needed to score {model} "
                        f"v{predictor.version}; expected columns: {', '.join(needed)}")
    batch_id = uuid.uuid4().hex[:12]
    total = len(rows)
    out = rows.reset_index(drop=True).copy()
    nodes = 1
    if engine == "ray" or (engine == "auto" and settings.ray_cluster and total > chunk_rows):
        from keel import batch_ray

        scored, degraded, nodes = batch_ray.score(settings, model, predictor.version, out, chunk_rows)
    else:
        from keel.serving.core import _outputs

        parts = []
        for start in range(0, total, chunk_rows):
            chunk = rows.iloc[start:start + chunk_rows]
            parts.append(_score_chunk(settings, predictor, chunk, keyed))
            if progress is not None:
                progress(min(start + chunk_rows, total), total)
        scored = _outputs(np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0])
        degraded = np.concatenate([p[1] for p in parts])
    out["score"] = scored
    out["degraded"] = degraded
    out["model"], out["version"] = model, predictor.version
    out["request_id"] = [f"{batch_id}-{i}" for i in range(total)]
    return BatchResult(out, model, predictor.version, batch_id, nodes)


def run_scheduled(settings: Settings, model: str, date: str) -> dict[str, Any]:
    """The spec's ``batch_score`` job for one logical date (what the DAG runs): its entities scored,
    written to its ``out`` with ``{date}`` filled in; a summary for the task log."""
    spec = settings.spec()
    job = spec.model(model).batch_score
    if job is None:
        raise KeelError(f"model '{model}' has no batch_score in {spec.path}")
    out = spec.resolve(job.out.replace("{date}", date), settings.home)
    if "://" not in out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    check_output(out)
    result = score(settings, model, spec.resolve(job.entities, settings.home), alias=job.alias,
                   chunk_rows=job.chunk_rows)
    write(result.frame, out)
    return {"model": model, "version": result.version, "rows": len(result.frame), "degraded": result.degraded,
            "out": out, "batch_id": result.batch_id}


def _score_chunk(settings: Settings, predictor: Any, chunk: pd.DataFrame, keyed: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    from keel.serving.features import Lookup

    if not keyed:  # raw-feature mode: the rows are the model's inputs, checked as a request's would be
        from keel.serving.core import InputError

        records = [{k: _plain(v) for k, v in r.items()} for r in
                   chunk[predictor.online.request_fields].to_dict(orient="records")]
        try:
            lookup = predictor.online.fetch(predictor.validate(records))
        except InputError as exc:
            raise KeelError(f"entities: {exc}") from None
        scores, lookup = predictor.score(lookup)
        return np.asarray(scores), lookup.degraded
    frame = _point_in_time(settings, predictor, chunk)
    numeric = predictor.online.numeric
    columns = {f: (pd.to_numeric(frame[f], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
                   if f in numeric else _objects(frame[f])) for f in predictor.features}
    scores, lookup = predictor.score(Lookup(columns, np.zeros(len(frame), dtype=bool), None))
    return np.asarray(scores), lookup.degraded


def _point_in_time(settings: Settings, predictor: Any, chunk: pd.DataFrame) -> pd.DataFrame:
    """The feature service's values as of each row's timestamp, back in the rows' order."""
    from keel.features import pit
    from keel.features import store as fstore

    online = predictor.online
    events = chunk[[*online.entity_keys, *online.request_fields, TIMESTAMP]].copy()
    events[TIMESTAMP] = pd.to_datetime(events[TIMESTAMP], utc=True)
    events[ROW] = np.arange(len(events))
    with fstore.in_repo(settings):
        df = pit.get_historical_features(online.store, events, online.service).to_df()
    if len(df) != len(events):
        raise KeelError(f"point-in-time join returned {len(df)} rows for {len(events)}")
    return df.sort_values(ROW, kind="mergesort").reset_index(drop=True)


def _objects(col: pd.Series) -> np.ndarray:
    out = np.empty(len(col), dtype=object)
    for i, v in enumerate(col.tolist()):
        out[i] = v
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
