"""MCTS over typed thoughts: action graph, tree, UCT, lock-step batching across many trees,
per-tree checkpoints for resume. No Dagster, no torch."""
