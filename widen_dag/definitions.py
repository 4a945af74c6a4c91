"""The code location the Dagster UI loads (workspace.yaml: python_module widen_dag.definitions)."""

from widen_dag.defs import build_definitions

defs = build_definitions()
