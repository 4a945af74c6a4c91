"""Small hand-built lakes shared by the SQL-model, trace and worker tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from widen_dag.datasets import sql as sqlmodels
from widen_dag.domains import arithmetic
from widen_dag.domains.problems import STAGED_SCHEMA
from widen_dag.search.store import NODE_SCHEMA
from widen_dag.storage.lake import Lake


def node_row(tree, idx, parent, ntype, tokens, *, reward=None, terminal=False, no_answer=False):
    return {
        "tree_id": tree,
        "problem_id": tree.split("-")[0],
        "node_id": f"{tree}/{idx}",
        "parent_id": None if parent is None else f"{tree}/{parent}",
        "depth": 0,
        "node_type": ntype,
        "model": "policy",
        "text": f"<{ntype}>{tree}:{idx}</{ntype}>" if idx else "",
        "n_tokens": tokens,
        "visits": 1,
        "value_sum": 0.0,
        "is_terminal": terminal,
        "reward": reward,
        "answer": None,
        "no_answer": no_answer,
        "finish_reason": "stop",
    }


def hand_built_trees() -> pl.DataFrame:
    rows = [
        # P1: correct paths of 25 and 45 tokens; wrong paths sharing 3, 1 and 1 nodes with the shortest.
        node_row("P1-s0", 0, None, "root", 0),
        node_row("P1-s0", 1, 0, "sub_task", 10),
        node_row("P1-s0", 2, 1, "thinking", 10),
        node_row("P1-s0", 3, 2, "answer", 5, reward=1.0, terminal=True),
        node_row("P1-s0", 4, 2, "answer", 5, reward=0.0, terminal=True),
        node_row("P1-s0", 5, 1, "thinking", 30),
        node_row("P1-s0", 6, 5, "answer", 5, reward=1.0, terminal=True),
        node_row("P1-s0", 7, 0, "sub_task", 8),
        node_row("P1-s0", 8, 7, "answer", 4, reward=0.0, terminal=True),
        node_row("P1-s0", 9, 7, "thinking", 20, terminal=True, no_answer=True, reward=0.0),
        # P2: only correct paths -> SFT row, no pair. Two equal lengths: the tie goes to the smaller path id.
        node_row("P2-s0", 0, None, "root", 0),
        node_row("P2-s0", 1, 0, "sub_task", 10),
        node_row("P2-s0", 2, 1, "answer", 5, reward=1.0, terminal=True),
        node_row("P2-s0", 3, 1, "answer", 5, reward=1.0, terminal=True),
        # P3: an eval problem: never in training data.
        node_row("P3-s0", 0, None, "root", 0),
        node_row("P3-s0", 1, 0, "answer", 5, reward=1.0, terminal=True),
        node_row("P3-s0", 2, 0, "answer", 5, reward=0.0, terminal=True),
        # P5: the only wrong path shares the sub_task with the chosen one.
        node_row("P5-s0", 0, None, "root", 0),
        node_row("P5-s0", 1, 0, "sub_task", 10),
        node_row("P5-s0", 2, 1, "answer", 5, reward=1.0, terminal=True),
        node_row("P5-s0", 3, 1, "answer", 7, reward=0.0, terminal=True),
    ]
    return pl.DataFrame(rows, schema=NODE_SCHEMA)


def build_small_lake(tmp_path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    nodes = hand_built_trees()
    lake.write_table("search_trees", nodes, "hand-000")
    # Student tokens differ from the policy's n_tokens: the SQL must use the student's.
    lake.write_table("node_lengths", nodes.select("node_id", (pl.col("n_tokens") * 2).cast(pl.Int32).alias("student_tokens")))
    lake.write_table(
        "stg_problems",
        pl.DataFrame(
            {
                "problem_id": ["P1", "P2", "P3", "P5"],
                "domain": "arithmetic",
                "split": ["train", "train", "eval", "train"],
                "prompt": ["solve P1", "solve P2", "solve P3", "solve P5"],
            }
        ),
    )
    return lake


def run_sql_models(lake, selection="longest"):
    models = sqlmodels.load_models()
    return {run.name: run.df for run in sqlmodels.run_models(lake, models, list(models), {"sft_selection": selection})}


def eval_problems(n: int) -> pl.DataFrame:
    """``n`` held-out arithmetic problems as the stg_problems table."""
    problems = arithmetic.generate(n, 2, 9, seed=3)
    return pl.DataFrame(
        [
            {
                "problem_id": f"p{i}",
                "domain": "arithmetic",
                "source": "arith",
                "shard": "arith-000",
                "source_id": None,
                "split": "eval",
                "question": p.question,
                "prompt": arithmetic.task_prompt(p.question),
                "gold": p.gold,
                "meta": "{}",
            }
            for i, p in enumerate(problems)
        ],
        schema=STAGED_SCHEMA,
    )


def tiny_checkpoint_eval_profile(student: Path, **eval_settings):
    """A profile whose student and every checkpoint are the tiny test model, with one DPO
    variant and the transformers backend; ``eval_settings`` go into its eval section."""
    from widen_dag.profiles import parse_profile

    return parse_profile(
        {
            "name": "t",
            "datasets": [{"name": "arith", "domain": "arithmetic", "source": {"kind": "arithmetic"}}],
            "models": {"student": {"source": "path", "name": str(student)}},
            "generation": {"backend": "transformers", "device": "cpu", "max_tokens_per_node": 12},
            "search": {"max_depth": 4, "max_path_tokens": 60},
            "train": {"dpo": {"variants": {"dpo": {}}}},
            "eval": {"backend": "transformers", "max_new_tokens": 16, **eval_settings},
        },
        "t.yaml",
    )


def publish_checkpoint(lake: Lake, name: str, model: Path, manifest: dict | None = None) -> None:
    """A copy of ``model`` published as checkpoint ``name`` (staged, manifest last), local or bucket."""
    from widen_dag.storage.artifacts import MANIFEST, checkpoint_parts, write_manifest

    with lake.staged_dir(*checkpoint_parts(name), marker=MANIFEST) as out:
        for f in model.iterdir():
            shutil.copy(f, out / f.name)
        write_manifest(out, manifest or {"kind": name})


def publish_tiny_checkpoints(lake: Lake, model: Path, names=("distill", "sft", "dpo-dpo")) -> None:
    """Every checkpoint of a one-DPO-variant ablation, each a copy of ``model``."""
    for name in names:
        publish_checkpoint(lake, name, model)
