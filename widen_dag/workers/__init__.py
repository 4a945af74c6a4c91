"""Entry points for torch/vLLM work: ``python -m widen_dag.workers.<stage>``.

Each is launched from its asset through Dagster Pipes (a subprocess here, a Kubernetes pod
at scale) and reports logs and metadata back; the Dagster process never imports torch.
"""
