"""Partitions: problems and everything searched from them are partitioned by problem shard.

`problem_shards` is dynamic: the profile's shards (``<dataset>-<shard index>``, a handful per
dataset, never one per problem) are registered by `widen-dag demo` and by the
`profile_shards` sensor, and every file dropped into the inbox adds its own key
(``inbox-<file name>``) through the `problem_inbox` sensor.
"""

import dagster as dg

from widen_dag.profiles import Profile

PROBLEM_SHARDS = "problem_shards"
problem_shards = dg.DynamicPartitionsDefinition(name=PROBLEM_SHARDS)


def missing_profile_shards(instance: dg.DagsterInstance, profile: Profile) -> list[str]:
    """The profile's shard keys that the instance does not know yet."""
    known = set(instance.get_dynamic_partitions(PROBLEM_SHARDS))
    return [k for k in profile.shard_keys() if k not in known]


def register_profile_shards(instance: dg.DagsterInstance, profile: Profile) -> list[str]:
    missing = missing_profile_shards(instance, profile)
    if missing:
        instance.add_dynamic_partitions(PROBLEM_SHARDS, missing)
    return missing
