"""How workers are launched at scale: pod specs, accelerate commands, memory plans (no Dagster)."""
