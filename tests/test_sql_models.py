from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.lakes import build_small_lake, hand_built_trees, node_row, run_sql_models
from widen_dag.datasets import sql as sqlmodels
from widen_dag.search.store import NODE_SCHEMA
from widen_dag.storage.lake import Lake


# ---- the layer ----------------------------------------------------------------------------
def test_models_deps_descriptions_and_code_versions_come_from_the_sql_files():
    models = sqlmodels.load_models()
    assert set(models) == {"tree_paths", "path_stats", "length_profile", "sft_dataset", "preference_pairs"}
    assert models["tree_paths"].deps == ("node_lengths", "search_trees")  # CTEs (nodes, walk) are not deps
    assert models["preference_pairs"].deps == ("stg_problems", "tree_paths")
    assert models["tree_paths"].description.startswith("One row per root -> terminal path")
    assert sqlmodels.order(models, list(models))[0] == "tree_paths"
    checks = sqlmodels.load_checks(models)
    assert {c.model for c in checks} == {"sft_dataset", "preference_pairs"} and all(c.blocking for c in checks)


def _write(dir_: Path, name: str, sql: str) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / f"{name}.sql").write_text(sql)


def test_code_version_follows_the_sql(tmp_path):
    _write(tmp_path, "a", "-- first\nSELECT 1 AS x")
    v1 = sqlmodels.load_models(tmp_path)["a"].code_version
    _write(tmp_path, "a", "-- first\nSELECT 2 AS x")
    assert sqlmodels.load_models(tmp_path)["a"].code_version != v1


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 1; SELECT 2", "a.sql: must hold exactly one SELECT"),
        ("DELETE FROM t", "a.sql: must hold exactly one SELECT"),
        ("SELEC 1 FROM", "a.sql: not valid SQL"),
    ],
)
def test_a_file_that_is_not_one_select_is_rejected_by_name(tmp_path, sql, message):
    _write(tmp_path, "a", sql)
    with pytest.raises(sqlmodels.SqlModelError, match=message):
        sqlmodels.load_models(tmp_path)


def test_cycles_and_checks_without_a_model_are_rejected(tmp_path):
    _write(tmp_path, "a", "SELECT * FROM b")
    _write(tmp_path, "b", "SELECT * FROM a")
    with pytest.raises(sqlmodels.SqlModelError, match="cycle"):
        sqlmodels.load_models(tmp_path)
    (tmp_path / "b.sql").write_text("SELECT 1 AS x")
    _write(tmp_path / "checks", "c", "SELECT 1")
    with pytest.raises(sqlmodels.SqlModelError, match="needs a '-- model: <name>' header"):
        sqlmodels.load_checks(sqlmodels.load_models(tmp_path), tmp_path)


def test_cte_named_like_a_table_is_not_a_dependency(tmp_path):
    _write(tmp_path, "a", "WITH stg_problems AS (SELECT 1 AS x) SELECT * FROM stg_problems JOIN search_trees ON true")
    assert sqlmodels.load_models(tmp_path)["a"].deps == ("search_trees",)


def test_a_failing_model_still_lands_the_models_computed_before_it(tmp_path):
    sql_dir = tmp_path / "sql"
    _write(sql_dir, "a", "SELECT * FROM src")
    _write(sql_dir, "b", "SELECT CAST(name AS INTEGER) AS n FROM a")  # fails at run time, not at parse
    lake = Lake(str(tmp_path / "lake"))
    lake.write_table("src", pl.DataFrame({"name": ["x", "y"]}))
    lake.write_table("a", pl.DataFrame({"name": ["stale"]}))  # an older version of a, replaced by this run
    models = sqlmodels.load_models(sql_dir)
    landed = []
    with pytest.raises(Exception, match="Conversion Error"):
        for run in sqlmodels.run_models(lake, models, ["a", "b"]):
            landed.append((run.name, run.df.height, run.written.rows))
    assert landed == [("a", 2, 2)]
    assert lake.read_table("a")["name"].to_list() == ["x", "y"]


# ---- the rules on hand-built trees --------------------------------------------------------
@pytest.fixture()
def small_lake(tmp_path) -> Lake:
    return build_small_lake(tmp_path)


def test_tree_paths_rebuild_every_root_to_terminal_path(small_lake):
    paths = run_sql_models(small_lake)["tree_paths"]
    p1 = {r["path_id"]: r for r in paths.filter(pl.col("problem_id") == "P1").iter_rows(named=True)}
    assert set(p1) == {"P1-s0/3", "P1-s0/4", "P1-s0/6", "P1-s0/8", "P1-s0/9"}
    assert p1["P1-s0/6"]["node_ids"] == ["P1-s0/0", "P1-s0/1", "P1-s0/5", "P1-s0/6"]
    assert p1["P1-s0/6"]["path_text"] == "<sub_task>P1-s0:1</sub_task><thinking>P1-s0:5</thinking><answer>P1-s0:6</answer>"
    assert p1["P1-s0/6"]["tokens"] == 90 and p1["P1-s0/6"]["depth"] == 3  # student tokens (x2)
    assert p1["P1-s0/6"]["correct"] and not p1["P1-s0/4"]["correct"]
    assert p1["P1-s0/9"]["no_answer"] and not p1["P1-s0/8"]["no_answer"]


def test_sft_takes_the_longest_correct_path_per_train_problem(small_lake):
    sft = run_sql_models(small_lake)["sft_dataset"].sort("problem_id")
    assert sft["path_id"].to_list() == ["P1-s0/6", "P2-s0/2", "P5-s0/2"]  # P2: tie -> smaller id; P3 is eval
    msgs = sft.row(0, named=True)["messages"]
    assert msgs[0] == {"role": "user", "content": "solve P1"} and msgs[1]["role"] == "assistant"
    assert run_sql_models(small_lake, "shortest")["sft_dataset"].sort("problem_id")["path_id"].to_list() == [
        "P1-s0/3",
        "P2-s0/2",
        "P5-s0/2",
    ]
    assert run_sql_models(small_lake, "all_correct")["sft_dataset"].height == 5


def test_pairs_take_the_shortest_correct_and_the_earliest_diverging_shortest_wrong(small_lake):
    pairs = run_sql_models(small_lake)["preference_pairs"].filter(pl.col("pairing") == "balanced").sort("problem_id")
    assert pairs["problem_id"].to_list() == ["P1", "P5"]  # P2 has no wrong path, P3 is eval
    p1, p5 = pairs.row(0, named=True), pairs.row(1, named=True)
    assert p1["chosen_path_id"] == "P1-s0/3"
    # P1-s0/8 and /9 both share only the root with the chosen path; /8 is shorter.
    assert p1["rejected_path_id"] == "P1-s0/8"
    assert (p1["common_prefix_nodes"], p1["common_prefix_tokens"], p1["common_prefix_chars"]) == (0, 0, 0)
    assert p5["rejected_path_id"] == "P5-s0/3"
    assert p5["common_prefix_nodes"] == 1 and p5["common_prefix_tokens"] == 20
    assert p5["common_prefix_chars"] == len("<sub_task>P5-s0:1</sub_task>")
    assert p1["prompt"] == [{"role": "user", "content": "solve P1"}]
    assert p1["chosen"][0]["content"].endswith("<answer>P1-s0:3</answer>")


def test_exports_load_with_hf_datasets(small_lake):
    import datasets

    run_sql_models(small_lake)
    sft = datasets.load_dataset("parquet", data_files=small_lake.table_path("sft_dataset"), split="train")
    pairs = datasets.load_dataset("parquet", data_files=small_lake.table_path("preference_pairs"), split="train")
    assert sft[0]["messages"][1]["role"] == "assistant"
    assert {"prompt", "chosen", "rejected", "problem_id", "tree_id", "chosen_node_ids"} <= set(pairs.column_names)


def test_checks_pass_on_good_data_and_catch_a_poisoned_pair(small_lake):
    run_sql_models(small_lake)
    models = sqlmodels.load_models()
    con = small_lake.connect()
    for check in sqlmodels.load_checks(models):
        assert sqlmodels.run_check(con, check).height == 0, check.name
    pairs = small_lake.read_table("preference_pairs")
    poisoned = pairs.with_columns(pl.col("chosen").alias("rejected"), pl.col("chosen_path_id").alias("rejected_path_id"))
    small_lake.write_table("preference_pairs", poisoned)
    con = small_lake.connect()
    failing = {c.name: sqlmodels.run_check(con, c).height for c in sqlmodels.load_checks(models)}
    assert failing["preference_pairs__distinct_nonempty"] == pairs.height
    assert failing["preference_pairs__labels"] == pairs.height


def test_dagster_multi_asset_materializes_a_subset_with_its_checks(small_lake):
    from widen_dag.defs.assets.datasets import dbt_like_sql
    from widen_dag.defs.resources import PipelineResource

    res = {"pipeline": PipelineResource(profile="tiny", lake_root=small_lake.root)}
    result = dg.materialize([dbt_like_sql], resources=res, selection=["tree_paths", "preference_pairs"])
    assert result.success
    events = {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    assert set(events) == {"tree_paths", "preference_pairs"}
    meta = events["tree_paths"].metadata
    assert meta["dagster/row_count"].value == 11 and meta["query_seconds"].value > 0 and meta["rows_per_s"].value > 0
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "preference_pairs__distinct_nonempty": True,
        "preference_pairs__labels": True,
        "preference_pairs__no_eval_problems": True,
    }


def test_the_rejected_path_comes_from_the_chosen_paths_tree(tmp_path):
    # P6 was searched twice (two trees). Node numbers restart per tree, so a problem-wide
    # comparison would see s1's wrong answer as sharing the sub_task of s0's chosen path.
    extra = [
        node_row("P6-s0", 0, None, "root", 0),
        node_row("P6-s0", 1, 0, "sub_task", 10),
        node_row("P6-s0", 2, 1, "answer", 5, reward=1.0, terminal=True),
        node_row("P6-s0", 3, 1, "answer", 9, reward=0.0, terminal=True),
        node_row("P6-s1", 0, None, "root", 0),
        node_row("P6-s1", 1, 0, "answer", 2, reward=0.0, terminal=True),
    ]
    lake = build_small_lake(tmp_path)
    lake.write_table("search_trees", pl.DataFrame(extra, schema=NODE_SCHEMA), "hand-001")
    nodes = lake.read_all("search_trees")
    lake.write_table("node_lengths", nodes.select("node_id", pl.col("n_tokens").alias("student_tokens")))
    stg = lake.read_table("stg_problems")
    lake.write_table(
        "stg_problems", pl.concat([stg, stg.head(1).with_columns(problem_id=pl.lit("P6"), prompt=pl.lit("solve P6"))])
    )
    pairs = run_sql_models(lake)["preference_pairs"].filter(pl.col("problem_id") == "P6")
    assert pairs["rejected_path_id"].to_list() == ["P6-s0/3", "P6-s0/3"]  # balanced and default
    assert pairs["common_prefix_nodes"].to_list() == [1, 1] and pairs["tree_id"].to_list() == ["P6-s0", "P6-s0"]


# ---- at scale: batches, a memory limit and spilling change nothing -------------------------
def _many_trees_lake(tmp_path, copies: int) -> Lake:
    """The hand-built problems (P6 with two trees included) repeated ``copies`` times under new ids."""
    base = pl.concat(
        [
            hand_built_trees(),
            pl.DataFrame(
                [
                    node_row("P6-s0", 0, None, "root", 0),
                    node_row("P6-s0", 1, 0, "sub_task", 10),
                    node_row("P6-s0", 2, 1, "answer", 5, reward=1.0, terminal=True),
                    node_row("P6-s0", 3, 1, "answer", 9, reward=0.0, terminal=True),
                    node_row("P6-s1", 0, None, "root", 0),
                    node_row("P6-s1", 1, 0, "answer", 2, reward=0.0, terminal=True),
                ],
                schema=NODE_SCHEMA,
            ),
        ]
    )
    lake = Lake(str(tmp_path / "lake"))
    shards = []
    for c in range(copies):
        tag = pl.lit(f"{c:04d}")
        shards.append(
            base.with_columns(  # P1-s0/3 -> P1x0007-s0/3: the copy's problem, tree and node ids
                *(
                    pl.col(k).str.replace(r"^(P\d)", "${1}x" + f"{c:04d}")
                    for k in ("tree_id", "problem_id", "node_id", "parent_id")
                ),
                pl.concat_str(pl.col("text"), tag),
            )
        )
    nodes = pl.concat(shards)
    half = nodes.height // 2
    lake.write_table("search_trees", nodes.head(half), "many-000")  # a problem may straddle shards
    lake.write_table("search_trees", nodes.tail(nodes.height - half), "many-001")
    lake.write_table("node_lengths", nodes.select("node_id", (pl.col("n_tokens") * 2).cast(pl.Int32).alias("student_tokens")))
    problems = nodes.select("problem_id").unique().sort("problem_id")
    lake.write_table(
        "stg_problems",
        problems.with_columns(
            domain=pl.lit("arithmetic"),
            split=pl.when(pl.col("problem_id").str.starts_with("P3")).then(pl.lit("eval")).otherwise(pl.lit("train")),
            prompt=pl.concat_str(pl.lit("solve "), "problem_id"),
        ),
    )
    return lake


def _tables(lake: Lake, settings=None, progress=None) -> dict[str, tuple[pl.DataFrame, str, int]]:
    models = sqlmodels.load_models()
    runs = list(
        sqlmodels.run_models(lake, models, list(models), {"sft_selection": "longest"}, settings=settings, progress=progress)
    )
    return {r.name: (lake.read_table(r.name), r.written.sha256, r.batches) for r in runs}


def test_a_tiny_memory_limit_and_many_batches_give_the_same_tables(tmp_path):
    lake = _many_trees_lake(tmp_path / "a", copies=400)  # 10,800 nodes, 2,000 problems
    whole = _tables(lake)
    assert {b for _, _, b in whole.values()} == {1}
    batches = []
    # 32MB: about DuckDB's floor for these queries on one thread (16MB fails to allocate)
    tight = sqlmodels.DuckDBSettings(memory_limit="32MB", threads=1, temp_directory=str(tmp_path / "spill"), batch_rows=1_500)
    batched = _tables(lake, tight, batches.append)
    in_one_piece = _tables(lake, dataclasses.replace(tight, batch_rows=10**9))
    assert len(batches) > 5 and all(b for _, _, b in batched.values())
    assert sum(b.input_rows for b in batches) == lake.read_all("search_trees").height + lake.read_table("stg_problems").height
    for name, (df, _, _) in whole.items():
        assert df.height > 0 and batched[name][0].equals(df), name  # every column, every row, same order
        assert in_one_piece[name][0].equals(df) and in_one_piece[name][1] == whole[name][1], name  # same bytes too
    # preference_pairs is ordered by (pairing, problem_id): its batches were merged by a sort
    assert batched["preference_pairs"][0]["pairing"].to_list() == sorted(batched["preference_pairs"][0]["pairing"].to_list())
    # a no-op rerun publishes the same bytes (the data version), and nothing is left staged
    again = _tables(lake, tight)
    assert {n: h for n, (_, h, _) in again.items()} == {n: h for n, (_, h, _) in batched.items()}
    assert not [p for p in Path(lake.root).rglob(".*") if p.is_file()]


def test_a_failing_batch_publishes_nothing(tmp_path):
    lake = _many_trees_lake(tmp_path, copies=20)
    before = {name: lake.table_sha256(name) for name in ("tree_paths", "sft_dataset")}
    sql_dir = tmp_path / "sql"
    _write(sql_dir, "tree_paths", "-- batch_by: problem_id\nSELECT problem_id, node_id FROM search_trees ORDER BY node_id")
    # fails only on the batch holding P5x0019's rows, after earlier batches were staged
    _write(
        sql_dir,
        "sft_dataset",
        "-- batch_by: problem_id\nSELECT problem_id, CAST(CASE WHEN problem_id = 'P5x0019' "
        "THEN 'x' ELSE '1' END AS INTEGER) AS n FROM tree_paths ORDER BY problem_id",
    )
    models = sqlmodels.load_models(sql_dir)
    with pytest.raises(Exception, match="Conversion Error"):
        list(sqlmodels.run_models(lake, models, list(models), settings=sqlmodels.DuckDBSettings(batch_rows=50)))
    assert {name: lake.table_sha256(name) for name in before} == before == {"tree_paths": None, "sft_dataset": None}
    assert not [p for p in Path(lake.root).rglob(".*") if p.is_file()]


def test_the_dagster_asset_runs_in_batches_from_the_profile(tmp_path):
    from widen_dag.defs.assets.datasets import dbt_like_sql
    from widen_dag.defs.resources import PipelineResource

    lake = _many_trees_lake(tmp_path, copies=10)
    profile = tmp_path / "batched.yaml"
    profile.write_text("extends: tiny\ndata:\n  duckdb:\n    batch_rows: 40\n    memory_limit: 64MB\n")
    res = {"pipeline": PipelineResource(profile=str(profile), lake_root=lake.root)}
    result = dg.materialize([dbt_like_sql], resources=res, selection=["tree_paths", "preference_pairs"])
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["tree_paths"]["batches"].value > 1
    assert meta["tree_paths"]["dagster/row_count"].value == lake.read_table("tree_paths").height == 10 * 14
    assert meta["preference_pairs"]["pairs_by_pairing"].value == {"balanced": 30, "default": 30}
