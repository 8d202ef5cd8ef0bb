"""Training-set snapshots go where every pod of a release reaches them: a directory (a shared volume) or
an fsspec URI (fsspec's own in-memory filesystem stands in for s3:// here: the same code path)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pandas as pd
import pytest

from keel.errors import KeelError
from keel.features.training import write_snapshot


def test_a_directory_gets_the_snapshot_once_under_its_hash(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1, 2, 3]})
    path = write_snapshot(df, tmp_path / "sets", "svc-abc.parquet")
    assert path == tmp_path / "sets" / "svc-abc.parquet"
    before = path.stat().st_mtime_ns
    assert write_snapshot(df, f"file://{tmp_path / 'sets'}", "svc-abc.parquet") == path
    assert path.stat().st_mtime_ns == before  # the same hash is the same bytes: not rewritten
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)


def test_a_uri_gets_the_snapshot_through_fsspec_and_names_it_in_full() -> None:
    df = pd.DataFrame({"a": [1.5, None], "b": ["x", "y"]})
    uri = write_snapshot(df, "memory://keel-test/training-sets/", "svc-def.parquet")
    assert uri == "memory://keel-test/training-sets/svc-def.parquet"
    fs = fsspec.filesystem("memory")
    assert fs.ls("/keel-test/training-sets", detail=False) == ["/keel-test/training-sets/svc-def.parquet"]
    with fsspec.open(uri, "rb") as fh:
        pd.testing.assert_frame_equal(pd.read_parquet(fh), df)


def test_a_uri_without_its_filesystem_says_what_to_install() -> None:
    with pytest.raises(KeelError, match=r"KEEL_SNAPSHOT_URI=nosuchfs://b/p: no filesystem"):
        write_snapshot(pd.DataFrame({"a": [1]}), "nosuchfs://b/p", "x.parquet")
