from __future__ import annotations

import duckdb
import polars as pl
import pytest

from widen_dag.storage.lake import Lake, LakeError


def _frame(n=3):
    return pl.DataFrame({"id": list(range(n)), "text": [f"row {i}" for i in range(n)]})


def test_write_read_roundtrip_with_partitions_and_duckdb_catalog(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    w = lake.write_table("search_trees", _frame(3), "arith-000")
    lake.write_table("search_trees", _frame(2), "arith-001")
    assert w.rows == 3 and len(w.sha256) == 64 and w.uri.endswith("search_trees/arith-000.parquet")
    assert lake.partitions("search_trees") == ["arith-000", "arith-001"]
    assert lake.read_all("search_trees").height == 5
    with duckdb.connect(str(lake.catalog_path), read_only=True) as con:
        assert con.execute("select count(*) from search_trees").fetchone() == (5,)
    assert lake.connect().execute("select max(id) from search_trees").fetchone() == (2,)


def test_same_content_gives_the_same_hash(tmp_path):
    lake = Lake(str(tmp_path))
    assert lake.write_table("a", _frame()).sha256 == lake.write_table("a", _frame()).sha256
    assert lake.write_table("a", _frame(4)).sha256 != lake.write_table("a", _frame()).sha256


def test_crash_mid_write_leaves_nothing_visible_and_keeps_the_old_file(tmp_path, monkeypatch):
    lake = Lake(str(tmp_path))
    lake.write_table("t", _frame(2))

    real_open = lake.fs.__class__.open

    def crashing_open(self, path, mode="rb", **kw):
        fh = real_open(self, path, mode, **kw)
        if "w" in mode:

            def boom(data):
                fh.raw_write = True
                raise OSError("disk gone mid-write")

            fh.write = boom
        return fh

    monkeypatch.setattr(lake.fs.__class__, "open", crashing_open)
    with pytest.raises(OSError, match="mid-write"):
        lake.write_table("t", _frame(50))
    monkeypatch.undo()
    assert lake.read_table("t").height == 2  # the previous version, intact
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["__all__.parquet"]  # no temp left


def test_staged_dir_publishes_only_on_success(tmp_path):
    lake = Lake(str(tmp_path))
    with pytest.raises(RuntimeError), lake.staged_dir("checkpoints", "sft") as d:
        (d / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert not (tmp_path / "checkpoints" / "sft").exists()
    assert list((tmp_path / "checkpoints").iterdir()) == []
    with lake.staged_dir("checkpoints", "sft") as d:
        (d / "model.safetensors").write_bytes(b"full")
    assert (tmp_path / "checkpoints" / "sft" / "model.safetensors").read_bytes() == b"full"


def test_an_fsspec_filesystem_other_than_local_works_through_the_same_code():
    lake = Lake("memory://widen-test/lake")
    w = lake.write_table("stg_problems", _frame(4))
    assert w.uri == "memory://widen-test/lake/stg_problems/__all__.parquet"
    assert lake.read_table("stg_problems").equals(_frame(4))
    assert lake.assets() == ["stg_problems"]
    assert lake.connect().execute("select count(*) from stg_problems").fetchone() == (4,)


@pytest.mark.parametrize(("asset", "partition"), [("../etc", None), ("ok", "a/b"), ("drop table;", None)])
def test_unsafe_names_are_refused(tmp_path, asset, partition):
    with pytest.raises(LakeError):
        Lake(str(tmp_path)).table_path(asset, partition)


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(LakeError, match=r"stg_problems\[__all__\] has not been written"):
        Lake(str(tmp_path)).read_table("stg_problems")
