"""What every worker does first: open the Pipes channel, load the same profile and lake."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from dagster_pipes import PipesContext, PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

from widen_dag.launch.failures import FAILURE_FILE_EXTRA, write_failure
from widen_dag.launch.lifetime import LAUNCHER_PID_EXTRA, stop_with_launcher
from widen_dag.profiles import Profile, profile_from_json
from widen_dag.progress import ProgressReporter
from widen_dag.storage.lake import Lake

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Worker:
    pipes: PipesContext
    profile: Profile
    lake: Lake

    _progress: ProgressReporter | None = field(default=None, init=False, repr=False)

    def log(self, message: str) -> None:
        self.pipes.log.info(message)

    def progress(self, task: str, done: int, total: int) -> None:
        """How far this stage is, as a `progress:` log line (throttled) that `widen-dag demo`
        draws as a bar with an estimate."""
        if self._progress is None:
            self._progress = ProgressReporter(self.log)
        self._progress(task, done, total)


def check_memory(profile: Profile, stage: str) -> None:
    """Refuse a stage that cannot fit the GPUs this process has, before any model loads (the
    same estimate as `widen-dag plan`; nothing to check on CPU). Training counts its
    accelerate processes, generation the GPUs it sees."""
    from widen_dag.launch.memplan import check_stage, visible_gpus

    gpus, gib = visible_gpus()
    if gpus == 0:
        return
    if stage in ("sft", "dpo"):
        gpus = int(os.environ.get("WORLD_SIZE", "1"))
    check_stage(profile, stage, gpus=gpus, gpu_memory_gib=gib)


def process_rank() -> int:
    """This process's rank under `accelerate launch` / torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


class _SilentPipes:
    """For ranks > 0 of a multi-process launch: same extras, nothing reported twice."""

    def __init__(self, extras: dict) -> None:
        self.extras = extras
        self.log = logging.getLogger("widen_dag.worker")

    def report_asset_materialization(self, *args, **kwargs) -> None:
        pass


def _profile(extras: dict) -> Profile:
    if "profile_json" not in extras:
        raise RuntimeError("this worker was launched without a resolved profile: start it from its Dagster asset")
    return profile_from_json(extras["profile_json"])


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (a run cancelled in the UI, a worker timeout, a pod stopped) ends the worker
    through SystemExit, so its ``finally`` blocks run: a vLLM engine is shut down instead of
    living on as an orphan process holding memory and cores (seen here after a bare SIGTERM)."""
    import signal

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


@contextlib.contextmanager
def open_worker() -> Iterator[Worker]:
    """Pipes context + the profile and lake named in the launching asset's extras.

    Under a multi-process launch only rank 0 talks to Dagster; the other ranks read the
    same context (profile, lake) and train silently.
    """
    _exit_cleanly_on_sigterm()
    from widen_dag.launch.cpus import SHARE_DIR_ENV, ThreadShare

    if os.environ.get(SHARE_DIR_ENV):
        ThreadShare().rebalance()  # its share of a CPU machine's cores from the start (widen_dag.launch.cpus)
    if process_rank() > 0:
        params = PipesEnvVarParamsLoader().load_context_params()
        with PipesDefaultContextLoader().load_context(params) as data:
            extras = dict(data.get("extras") or {})
        stop_with_launcher(extras.get(LAUNCHER_PID_EXTRA))
        yield Worker(_SilentPipes(extras), _profile(extras), Lake(extras["lake_root"]))  # type: ignore[arg-type]
        return
    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        stop_with_launcher(extras.get(LAUNCHER_PID_EXTRA))
        try:
            yield Worker(pipes, _profile(extras), Lake(extras["lake_root"]))
        except Exception as err:
            # A cause no retry can fix goes back to the asset, which then fails once with it.
            found = write_failure(extras.get(FAILURE_FILE_EXTRA), err)
            if found:
                pipes.log.error(f"unrecoverable: {found[0]}. Fix: {found[1]}")
            raise


def checkpoint_processes(profile: Profile, checkpoints: int) -> tuple[int, int | None]:
    """(processes, torch threads each) for evaluating or decoding ``checkpoints`` side by side
    (``eval.processes``; threads None for one process: its default). Unset: one process
    per core for the transformers backend on the CPU, where a small model's decoding is mostly
    per-step Python overhead that a second core does not shorten but a second process halves;
    one process on a GPU or with vLLM (an engine already uses every core it is given)."""
    ev = profile.eval
    from widen_dag.launch.cpus import node_cores

    cores = node_cores()
    if ev.processes is not None:
        wanted = ev.processes
    elif ev.backend == "transformers" and profile.generation.device == "cpu":
        wanted = cores
    else:
        wanted = 1
    processes = max(1, min(wanted, checkpoints))
    return processes, (max(1, cores // processes) if processes > 1 else None)


def eval_engines_in_this_process(profile: Profile) -> None:
    """Evaluation with vLLM on the CPU opens one engine per checkpoint, one after another: run
    them inside the worker (and its spawned children, which inherit the setting), not each in
    an engine process of its own (``widen_dag.llm.vllm_backend.engines_in_this_process``)."""
    if profile.eval.backend == "vllm":
        from widen_dag.llm.vllm_backend import engines_in_this_process

        engines_in_this_process(profile.generation.device)


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def side_by_side(fn: Callable[[T], R], tasks: list[T], processes: int, threads: int | None = None) -> Iterator[R]:
    """``fn`` of each task, results as they finish: in this process for one process, else in
    ``processes`` spawned children with ``threads`` torch threads each (the results must not
    depend on which runs them). The pool's exit terminates the children, so a cancelled run
    leaves no process behind."""
    if processes == 1:
        yield from map(fn, tasks)
        return
    init = {"initializer": _set_torch_threads, "initargs": (threads,)} if threads else {}
    with multiprocessing.get_context("spawn").Pool(processes, **init) as pool:
        yield from pool.imap_unordered(fn, tasks)
