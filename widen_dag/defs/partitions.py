"""Partitions: problems and everything searched from them are partitioned by dataset shard.

The shard keys come from the profile the code location loads with ($WIDEN_DAG_PROFILE),
``<dataset>-<shard index>`` — a handful per dataset, never one per problem.
"""

from __future__ import annotations

import dagster as dg

from widen_dag.profiles import load_profile

problem_shards = dg.StaticPartitionsDefinition(load_profile().shard_keys())
