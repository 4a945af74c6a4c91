"""The search stage: MCTS trees per problem shard, run by a Pipes worker in pool `gpu`."""

import dagster as dg

from widen_dag.defs.metadata import with_column_schema
from widen_dag.defs.partitions import problem_shards
from widen_dag.defs.resources import PipelineResource
from widen_dag.defs.workers import GPU_POOL, run_worker
from widen_dag.search.store import NODE_SCHEMA


@dg.asset(
    group_name="search",
    kinds={"vllm", "pytorch", "parquet"},
    code_version="search_trees-v3",
    partitions_def=problem_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    **GPU_POOL,
    deps=["stg_problems", "policy_model"],
    # A crashed or killed worker is retried; finished trees are reused from checkpoints.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10),
)
def search_trees(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """MCTS over typed thoughts for the train problems of each shard (SPEC section 1): one node
    table per shard (tree_id, node_id, parent_id, depth, node_type, model, text, n_tokens,
    visits, value_sum, is_terminal, reward, answer). Many trees advance in lock-step so the
    backend always sees a full batch; every finished tree is checkpointed, so a rerun after
    a crash reuses it. Metadata: throughput, prefix-cache hit rate, per-tree outcomes, one
    sample tree rendered as an outline, and per shard the first solved and first unsolved tree
    drawn (`trees_<shard>`; with a preference pair's paths once pairs exist)."""
    result = run_worker(context, pipeline, pipes_subprocess_client, "search", *context.partition_keys)
    return with_column_schema(result, "search_trees", NODE_SCHEMA)
