"""Materialization in Feast's layout: the latest row per entity from a view's parquet source, pipelined
into Redis, the interval recorded in Feast's registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.features.redis.codec import (
    _FIXED,
    _TAG,
    _U8,
    BOOL,
    DOUBLE,
    FLOAT,
    Unsupported,
    _as_arrow,
    _binary,
    _fast_kind,
    _floats,
    _ints,
    _null_mask,
    decode_timestamp_nanos,
    encode_timestamps,
    encode_values,
    entity_keys,
    timestamp_micros,
)
from keel.features.redis.layout import ViewLayout, field_name, is_cluster, redis_client, ts_field

if TYPE_CHECKING:
    import redis
    from feast import FeatureStore, FeatureView
    from feast.repo_config import RepoConfig

_CHUNK_ROWS = 4096  # entities per pipeline round trip: big enough to amortize it, small enough to bound memory


# -- writing ---------------------------------------------------------------------------------------

def _bulks(arr: pa.Array) -> pa.Array:
    """Each value as a RESP bulk string, ``$<len>\\r\\n<value>\\r\\n``."""
    lens = pc.binary_length(arr).cast(pa.string()).cast(pa.binary())
    return pc.binary_join_element_wise(b"$", lens, b"\r\n", arr, b"\r\n", b"")


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


@dataclass
class WriteStats:
    rows: int = 0        # rows offered (after keeping the latest per entity)
    written: int = 0     # entities whose hash was written
    skipped: int = 0     # entities Redis already held at the same or a newer event time


class _Pipe:
    """One pooled connection, fed packed commands; replies are drained in order, so a chunk's writes
    travel while the next chunk is encoded.

    Replies are parsed by a hiredis reader of our own straight off the connection's socket when
    hiredis is installed: redis-py's per-reply ``read_response`` costs ~2.5 µs of Python each, a
    quarter of the CPU of a 50-feature write that shares two cores with Redis. redis-py still opens
    the connection (AUTH, SELECT, TLS) and gets it back only when every reply was read."""

    def __init__(self, client: redis.Redis) -> None:
        self.pool = client.connection_pool
        self.conn = self.pool.get_connection()
        self.pending = 0  # replies of earlier writes still to read
        try:
            import hiredis

            # the pool hands out a connection only with nothing left to read, so both parsers start clean
            self.sock, self.reader = self.conn._sock, hiredis.Reader()
        except (ImportError, AttributeError):
            self.sock = self.reader = None

    def send(self, payload: Any) -> None:
        self.conn.send_packed_command([memoryview(payload)], check_health=False)

    def _replies(self, n: int) -> list[Any]:
        if self.reader is None:
            read = self.conn.read_response
            return [read() for _ in range(n)]
        import redis as redis_py

        out: list[Any] = []
        gets = self.reader.gets
        while len(out) < n:
            reply = gets()
            if reply is False:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise redis_py.ConnectionError("Redis closed the connection")
                self.reader.feed(data)
            elif isinstance(reply, Exception):
                raise redis_py.ResponseError(str(reply))
            else:
                out.append(reply)
        return out

    def drain(self) -> None:
        if self.pending:
            self._replies(self.pending)
            self.pending = 0

    def read(self, n: int) -> list[Any]:
        self.drain()
        return self._replies(n)

    def close(self, ok: bool) -> None:
        try:
            if ok:
                self.drain()
        finally:
            if not ok or self.pending or (self.reader is not None and self.reader.has_data()):
                self.conn.disconnect()  # replies may still be in flight: never hand this socket back
            self.pool.release(self.conn)


class _Pipes:
    """Where a chunk's commands go: the one connection of a single Redis; for a Redis Cluster, one
    connection per master, each chunk split by the master that owns each entity's hash slot (the
    check-then-write of an entity stays on one connection, in order)."""

    def __init__(self, client: Any) -> None:
        self.client, self.cluster = client, is_cluster(client)
        self.pipes: dict[str, _Pipe] = {} if self.cluster else {"": _Pipe(client)}

    def write(self, layout: ViewLayout, batch: pa.RecordBatch | pa.Table, stats: WriteStats) -> None:
        if not self.cluster:
            _write_chunk(self.pipes[""], layout, batch, stats)
            return
        from keel.features.redis import cluster

        keys = entity_keys(layout.project, layout.join_keys, {k: batch.column(k) for k, _ in layout.join_keys})
        for name, (node, idx) in cluster.by_node(self.client, keys.to_pylist()).items():
            pipe = self.pipes.get(name)
            if pipe is None:
                pipe = self.pipes[name] = _Pipe(cluster.node_client(self.client, node))
            _write_chunk(pipe, layout, batch.take(pa.array(idx)), stats)

    def close(self, ok: bool) -> None:
        """Every connection is released, even when draining one of them fails (that error is raised)."""
        error: BaseException | None = None
        for pipe in self.pipes.values():
            try:
                pipe.close(ok and error is None)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error


def _buffer(arr: pa.Array) -> memoryview:
    """The concatenated bytes of a binary array's values (its data buffer), without copying."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    return memoryview(arr.buffers()[2])[offsets[0]:offsets[-1]]


def write_frame(client: redis.Redis, layout: ViewLayout, frame: Any, *, latest_only: bool = False,
                chunk_rows: int = _CHUNK_ROWS) -> WriteStats:
    """Write the latest row per entity of ``frame`` (pandas or pyarrow) into Redis in Feast's layout.

    Same semantics as Feast's ``online_write_batch``: an entity whose stored ``_ts:<view>`` is the same
    instant or newer keeps what it has (checked with one pipelined HGET per entity, read while the
    values are encoded); a write sets every feature of the view and its ``_ts`` field, then EXPIREs the
    key when the store sets ``key_ttl_seconds``. Like Feast, the check and the write are not atomic: a
    concurrent writer of a newer row can lose between the two. ``latest_only`` says the frame already
    holds one row per entity (materialize_view's query ensures it).
    """
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    if not latest_only:
        table = _latest(table, [k for k, _ in layout.join_keys], layout.timestamp_field, layout.created_field)
    stats = WriteStats(rows=table.num_rows)
    if table.num_rows == 0:
        return stats
    pipes = _Pipes(client)
    ok = False
    try:
        for batch in table.to_batches(max_chunksize=chunk_rows):
            pipes.write(layout, batch, stats)
        ok = True
    finally:
        pipes.close(ok)
    return stats


def _write_batches(client: redis.Redis, layout: ViewLayout, batches: Iterator[pa.RecordBatch],
                   progress: Callable[[int], None] | None = None) -> WriteStats:
    stats = WriteStats()
    pipes = _Pipes(client)
    ok = False
    try:
        for batch in batches:
            stats.rows += batch.num_rows
            if batch.num_rows:
                pipes.write(layout, batch, stats)
                if progress is not None:
                    progress(batch.num_rows)
        ok = True
    finally:
        pipes.close(ok)
    return stats


def _write_chunk(pipe: _Pipe, layout: ViewLayout, batch: pa.RecordBatch | pa.Table, stats: WriteStats) -> None:
    n = batch.num_rows
    keys = entity_keys(layout.project, layout.join_keys, {k: batch.column(k) for k, _ in layout.join_keys})
    key_bulks = _bulks(keys)
    ts_name = ts_field(layout.name)
    # 1. ask for the stored event times; Redis answers while the values are encoded below
    pipe.send(_buffer(pc.binary_join_element_wise(b"*3\r\n$4\r\nHGET\r\n", key_bulks, _bulk(ts_name), b"")))
    micros = timestamp_micros(batch.column(layout.timestamp_field))
    parts: list[Any] = [b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(layout.features) + 1)), key_bulks]
    fixed: list[tuple[bytes, np.ndarray]] = []
    for feature, vt in layout.features:
        col = _as_arrow(batch.column(feature))
        if vt in _FIXED and _fast_kind(col, vt) and not _null_mask(col).any():
            fixed.append((field_name(layout.name, feature), _fixed_bytes(col, vt)))
        else:
            parts += [_bulk(field_name(layout.name, feature)), _bulks(encode_values(col, vt))]
    if fixed:
        parts.append(_fixed_block(fixed))
    parts += [_bulk(ts_name), _bulks(encode_timestamps(micros))]
    if layout.key_ttl_s:
        parts += [b"*3\r\n$6\r\nEXPIRE\r\n", key_bulks, _bulk(str(int(layout.key_ttl_s)).encode())]
    # 2. keep only entities whose stored time is older (Feast: skip when new <= stored, a stored 0 is none)
    stored = pipe.read(n)
    keep = np.ones(n, dtype=bool)
    new_ns = micros * 1000
    for i, b in enumerate(stored):
        if b:
            prev = decode_timestamp_nanos(b)
            if prev and new_ns[i] <= prev:
                keep[i] = False
    commands = pc.binary_join_element_wise(*parts, b"")
    kept = int(keep.sum())
    if kept < n:
        commands = commands.filter(pa.array(keep))
    stats.written += kept
    stats.skipped += n - kept
    if kept:
        pipe.send(_buffer(commands))
        pipe.pending += kept * (2 if layout.key_ttl_s else 1)


def _fixed_bytes(arr: pa.Array, vt: int) -> np.ndarray:
    """The payload bytes after the tag of a fixed-width ValueProto, one row each (no nulls)."""
    n = len(arr)
    if vt == DOUBLE:
        return _floats(arr).astype("<f8").view(_U8).reshape(n, 8)
    if vt == FLOAT:
        with np.errstate(over="ignore"):
            return _floats(arr).astype("<f4").view(_U8).reshape(n, 4)
    return (_ints(arr) != 0).astype(_U8).reshape(n, 1)


def _fixed_block(columns: list[tuple[bytes, np.ndarray]]) -> pa.Array:
    """Field/value RESP pairs of the fixed-width, null-free columns, as one byte matrix per row.

    HSET takes its field/value pairs in any order, so these columns go together: one numpy template
    row, with each row's value bytes written into it, instead of an arrow kernel per column."""
    template, slots = bytearray(), []
    for field, values in columns:
        w = values.shape[1]
        template += _bulk(field) + b"$%d\r\n" % (w + 1) + bytes([_TAG[{8: DOUBLE, 4: FLOAT, 1: BOOL}[w]]])
        slots.append(len(template))
        template += bytes(w) + b"\r\n"
    n = len(columns[0][1])
    mat = np.empty((n, len(template)), dtype=_U8)
    mat[:] = np.frombuffer(bytes(template), dtype=_U8)
    for (_, values), at in zip(columns, slots, strict=True):
        mat[:, at:at + values.shape[1]] = values
    return _binary(mat)


def _latest(table: pa.Table, join_keys: list[str], ts: str, created: str | None) -> pa.Table:
    """The latest row per entity, by event time then created time (Feast's materialization dedup)."""
    cols = [*join_keys, ts] + ([created] if created and created in table.column_names else [])
    idx = table.select(cols).to_pandas()
    if not idx.duplicated(join_keys).any():
        return table
    order = [ts, *cols[len(join_keys) + 1:]]
    idx["__row"] = np.arange(len(idx))
    last = idx.sort_values(order, kind="stable", na_position="first").drop_duplicates(join_keys, keep="last")
    return table.take(pa.array(np.sort(last["__row"].to_numpy())))


# -- materialization -------------------------------------------------------------------------------

def source_path(fv: FeatureView, root: str | Path | None = None) -> Path:
    """The local parquet file behind a view, or Unsupported (Feast materializes anything else). A relative
    path is the repo's (``root``, Feast's ``repo_path``), else the working directory's: keel runs Feast
    work from the repo directory (features.store.in_repo)."""
    from feast import FileSource
    from feast.data_format import ParquetFormat

    src = fv.batch_source
    if not isinstance(src, FileSource):
        raise Unsupported(f"view '{fv.name}': source is not a file source")
    if src.file_format is not None and not isinstance(src.file_format, ParquetFormat):
        raise Unsupported(f"view '{fv.name}': source is not parquet")
    raw = src.path.removeprefix("file://")
    path = Path(raw) if root is None or Path(raw).is_absolute() else Path(root) / raw
    path = path.resolve()
    if "://" in raw or not path.is_file():
        raise Unsupported(f"view '{fv.name}': source {src.path} is not a local parquet file")
    for attr in ("aggregations", "feature_transformation", "filter"):
        if getattr(fv, attr, None):
            raise Unsupported(f"view '{fv.name}' has {attr}")
    if getattr(fv, "enable_validation", False):
        raise Unsupported(f"view '{fv.name}' validates its input")
    return path


def check_supported(store: FeatureStore, fv: FeatureView) -> ViewLayout:
    """The view's layout when keel can materialize it itself; Unsupported says why not."""
    redis_client(store)
    return check_view(store.config, store.list_feature_services(), fv)


def check_view(config: RepoConfig, services: Iterable[Any], fv: FeatureView) -> ViewLayout:
    """As ``check_supported``, from a repo config and the project's feature services (what a Feast
    batch engine is handed)."""
    source_path(fv, getattr(config, "repo_path", None))
    for svc in services:
        if getattr(svc, "precompute_online", False) and any(p.name == fv.name for p in svc.feature_view_projections):
            raise Unsupported(f"feature service '{svc.name}' precomputes vectors from '{fv.name}'")
    return ViewLayout.of(fv, config)


def materialize_view(store: FeatureStore, fv: FeatureView, start: datetime, end: datetime,
                     client: redis.Redis | None = None, record: bool = True,
                     progress: Callable[[int], Any] | None = None) -> WriteStats:
    """Load the latest row per entity with event time in [start, end) from the view's parquet source
    into Redis, as ``FeatureStore.materialize`` would, then record the interval in the registry (which
    incremental materialization resumes from). Raises Unsupported for views Feast must handle.

    Feast's window includes ``end`` itself, keel's stops before it, so consecutive incremental windows
    never load the same row twice. ``progress`` builds a progress bar from a row total, as Feast's
    ``tqdm_builder`` does (anything with ``update(n)`` and ``close()``).
    """
    layout = check_supported(store, fv)
    stats = load_view(layout, fv, start, end, client or redis_client(store),
                      root=store.config.repo_path, progress=progress)
    if record:
        store.registry.apply_materialization(fv, store.project, _utc(start), _utc(end))
    return stats


def load_view(layout: ViewLayout, fv: FeatureView, start: datetime, end: datetime, client: redis.Redis, *,
              root: str | Path | None = None, end_inclusive: bool = False,
              progress: Callable[[int], Any] | None = None) -> WriteStats:
    """The write itself: the latest row per entity, chosen in DuckDB by event time, then created time
    (nulls last), as Feast's materialization does, streamed to Redis in chunks. ``end_inclusive`` gives
    Feast's window (what the batch engine plug-in is asked for)."""
    import duckdb

    path = source_path(fv, root)
    src = fv.batch_source
    reverse = {v: k for k, v in (src.field_mapping or {}).items()}

    def col(name: str) -> str:
        return f'"{reverse.get(name, name)}" AS "{name}"'

    ts, created = src.timestamp_field, src.created_timestamp_column or None
    ts_src, created_src = reverse.get(ts, ts), reverse.get(created, created) if created else None
    names = [k for k, _ in layout.join_keys] + [f for f, _ in layout.features] + [ts]
    order = f'"{ts_src}" DESC' + (f', "{created_src}" DESC NULLS LAST' if created_src else "")
    partition = ", ".join(f'"{reverse.get(k, k)}"' for k, _ in layout.join_keys)
    window = f'"{ts_src}" >= ? AND "{ts_src}" {"<=" if end_inclusive else "<"} ?'
    params = [str(path), _utc(start), _utc(end)]
    query = (f"SELECT {', '.join(col(c) for c in names)} FROM read_parquet(?) WHERE {window} "
             f"QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {order}) = 1")
    bar, con = None, duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        if progress is not None:  # the total first (one row per entity), so the bar can show it
            total = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {partition} FROM read_parquet(?) "
                                f"WHERE {window})", params).fetchall()  # all: the connection is reused
            bar = progress(int(total[0][0]))
        reader = con.sql(query, params=params).to_arrow_reader(_CHUNK_ROWS)
        return _write_batches(client, layout, iter(reader), bar.update if bar is not None else None)
    finally:
        con.close()
        if bar is not None:
            bar.close()


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
