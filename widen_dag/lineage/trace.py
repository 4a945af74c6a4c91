"""Lineage past the asset graph: from a checkpoint to its data, pairs, tree nodes and problems.

    widen-dag trace sft                      what the SFT checkpoint was trained on
    widen-dag trace dpo-joint_masked --pair <problem_id>
                                             one preference pair: its chosen and rejected
                                             nodes in the search tree, and the problem
    widen-dag trace dpo-cdpo --pair <problem_id> --png tree.png
                                             the same pair drawn over its search tree
    widen-dag trace <checkpoint folder>      any checkpoint with a widen_dag_checkpoint.json

Reads the checkpoint's manifest (written by the training worker) and the lake; no Dagster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from widen_dag.reporting.tree_plot import TreePicture, tree_png
from widen_dag.storage.artifacts import MANIFEST, checkpoint_dir, read_manifest
from widen_dag.storage.lake import Lake, LakeError


class TraceError(ValueError):
    """A target that cannot be traced; the message says what is missing."""


def resolve_checkpoint(lake: Lake, target: str) -> Path:
    """A checkpoint folder from a path, a checkpoint name (sft, dpo-cdpo) or asset[:partition]."""
    candidates = [Path(target)]
    name = target
    if target == "sft_checkpoint":
        name = "sft"
    elif target.startswith("dpo_checkpoint:"):
        name = "dpo-" + target.split(":", 1)[1]
    candidates.append(Path(checkpoint_dir(lake, name)))
    for c in candidates:
        if (c / MANIFEST).is_file():
            return c
    raise TraceError(f"no checkpoint manifest for {target!r} (looked in {', '.join(str(c) for c in candidates)})")


def trace_checkpoint(lake: Lake, target: str) -> dict[str, Any]:
    """The checkpoint's manifest, each input's data version then and now, and its rows."""
    path = resolve_checkpoint(lake, target)
    manifest = read_manifest(path) or {}
    inputs = {}
    for asset, version in manifest.get("inputs", {}).items():
        if isinstance(version, dict):  # a DPO checkpoint records its SFT checkpoint's inputs too
            inputs[asset] = {k: {"trained_on": v, "now": lake.table_sha256(k)} for k, v in version.items()}
        else:
            inputs[asset] = {"trained_on": version, "now": lake.table_sha256(asset)}
    out = {
        "checkpoint": str(path),
        "kind": manifest.get("kind"),
        "variant": manifest.get("variant"),
        "base": manifest.get("base"),
        "base_provenance": manifest.get("base_provenance"),
        "rows": manifest.get("rows"),
        "inputs": inputs,
        "config": manifest.get("config"),
        "metrics": manifest.get("metrics"),
        "problem_ids": manifest.get("problem_ids", []),
    }
    out["missing"] = [
        f"{asset}: not in the lake {lake.uri()} (materialize it to compare data versions)"
        for asset, v in inputs.items()
        if isinstance(v, dict) and v.get("now", "") is None
    ]
    if manifest.get("kind") == "dpo" and not lake.has_table("preference_pairs"):
        out["missing"].append(
            f"preference_pairs: not in the lake {lake.uri()}, so the pairs cannot be listed (materialize preference_pairs)"
        )
    if manifest.get("kind") == "dpo" and lake.has_table("preference_pairs"):
        pairing = "balanced" if (manifest.get("config") or {}).get("balanced") else "default"
        pairs = lake.read_table("preference_pairs").filter(
            (pl.col("pairing") == pairing) & pl.col("problem_id").is_in(out["problem_ids"])
        )
        out["pairing"] = pairing
        out["pairs"] = pairs.select(
            "problem_id", "tree_id", "chosen_path_id", "rejected_path_id", "common_prefix_tokens"
        ).to_dicts()
    return out


def trace_pair(lake: Lake, target: str, problem_id: str) -> dict[str, Any]:
    """One pair of a DPO checkpoint: both paths node by node, and the problem they came from."""
    ckpt = trace_checkpoint(lake, target)
    if ckpt["kind"] != "dpo":
        raise TraceError(f"{target} is a {ckpt['kind']} checkpoint: only DPO checkpoints have pairs")
    if "pairs" not in ckpt:
        raise TraceError(f"{target}: {ckpt['missing'][-1]}")
    if problem_id not in ckpt["problem_ids"]:
        raise TraceError(f"{target} was not trained on a pair for problem {problem_id!r}")
    pair = next((p for p in ckpt["pairs"] if p["problem_id"] == problem_id), None)
    if pair is None:
        raise TraceError(
            f"{target} was trained on a pair for problem {problem_id!r}, but preference_pairs no longer "
            "holds it (rebuilt since): rematerialize the checkpoint or trace another problem"
        )
    full = (
        lake.read_table("preference_pairs")
        .filter((pl.col("pairing") == ckpt["pairing"]) & (pl.col("problem_id") == problem_id))
        .row(0, named=True)
    )
    problem = (
        lake.read_table("stg_problems").filter(pl.col("problem_id") == problem_id) if lake.has_table("stg_problems") else None
    )
    shard = problem.row(0, named=True).get("shard") if problem is not None and problem.height else None
    try:
        nodes = lake.read_all("search_trees").filter(pl.col("tree_id") == pair["tree_id"])
    except LakeError as err:
        raise TraceError(f"tree {pair['tree_id']}: {err} (materialize search_trees)") from None
    by_id = {r["node_id"]: r for r in nodes.iter_rows(named=True)}
    wanted = list(full["chosen_node_ids"]) + list(full["rejected_node_ids"])
    lost = [i for i in dict.fromkeys(wanted) if i not in by_id]
    if lost:
        where = f"search_trees[{shard}]" if shard else "search_trees"
        state = "is not in the lake" if shard and not lake.has_table("search_trees", shard) else "does not hold them"
        raise TraceError(
            f"tree {pair['tree_id']}: {len(lost)} of the pair's nodes are missing ({', '.join(lost[:4])}); "
            f"{where} {state} (materialize search_trees{f'[{shard}]' if shard else ''})"
        )

    def path(ids: list[str]) -> list[dict[str, Any]]:
        return [{k: by_id[i][k] for k in ("node_id", "node_type", "model", "visits", "value_sum", "reward", "text")} for i in ids]

    return {
        "checkpoint": ckpt["checkpoint"],
        "problem": problem.row(0, named=True) if problem is not None and problem.height else None,
        "tree_id": pair["tree_id"],
        "common_prefix_tokens": pair["common_prefix_tokens"],
        "chosen": path(full["chosen_node_ids"]),
        "rejected": path(full["rejected_node_ids"]),
    }


def _provenance_lines(provenance: dict[str, Any] | None) -> list[str]:
    """Where the base model came from: the GGUF file (and its sha256) or the bootstrap."""
    if not provenance:
        return []
    if provenance.get("source") == "gguf":
        where = f"{provenance['package']}:" if provenance.get("package") else ""
        return [
            f"  base model from GGUF {where}{provenance.get('gguf_file')}",
            f"    sha256 {provenance.get('gguf_sha256')}, {provenance.get('dtype')}, "
            # the converter record names itself: {converter: gguf-to-hf-v1, transformers: ..., gguf: ...}
            f"{', '.join(f'{k} {v}' for k, v in (provenance.get('converter') or {}).items())}",
        ]
    return [f"  base model: {', '.join(f'{k}={v}' for k, v in provenance.items())}"]


def pair_picture(lake: Lake, report: dict[str, Any]) -> TreePicture:
    """The tree of a traced pair (``trace_pair``'s report) drawn with its chosen and rejected
    paths, as in search_trees' metadata."""
    nodes = lake.read_all("search_trees").filter(pl.col("tree_id") == report["tree_id"])
    p = report["problem"] or {}
    title = f"tree {report['tree_id']} (problem {p.get('problem_id')}): chosen vs rejected"
    return tree_png(nodes.to_dicts(), title, [n["node_id"] for n in report["chosen"]], [n["node_id"] for n in report["rejected"]])


def render(report: dict[str, Any]) -> str:
    """Readable text for the terminal."""
    lines = []
    if "chosen" in report:
        p = report["problem"] or {}
        lines += [
            f"problem {p.get('problem_id')} ({p.get('source')}, shard {p.get('shard')}, split {p.get('split')})",
            f"  question: {p.get('question')}",
            f"  gold: {p.get('gold')}",
            f"tree {report['tree_id']}; shared prefix {report['common_prefix_tokens']} tokens",
        ]
        for side in ("chosen", "rejected"):
            lines.append(f"{side}:")
            lines += [
                f"  {n['node_id']} {n['node_type']} N={n['visits']} W={n['value_sum']:g} reward={n['reward']} {n['text'][:100]!r}"
                for n in report[side]
            ]
        return "\n".join(lines)
    lines += [
        f"checkpoint {report['checkpoint']} ({report['kind']}{', ' + report['variant'] if report['variant'] else ''})",
        f"  base: {report['base']}",
        *_provenance_lines(report.get("base_provenance")),
        f"  rows: {report['rows']}",
        "  trained on:",
    ]
    for asset, v in report["inputs"].items():
        items = v.items() if "trained_on" not in v else [(asset, v)]
        for name, ver in items:
            state = "current" if ver["now"] == ver["trained_on"] else ("gone" if ver["now"] is None else "changed since")
            lines.append(f"    {name}: {ver['trained_on'][:16]} ({state})")
    if "pairs" in report:
        lines.append(f"  pairs ({report['pairing']}): {len(report['pairs'])}")
        lines += [
            f"    {p['problem_id']} tree {p['tree_id']} chosen {p['chosen_path_id']} rejected {p['rejected_path_id']}"
            for p in report["pairs"][:10]
        ]
    else:
        lines.append(f"  problems: {', '.join(report['problem_ids'][:10])}{' ...' if len(report['problem_ids']) > 10 else ''}")
    return "\n".join(lines)
