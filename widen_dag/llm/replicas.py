"""Data-parallel generation: one engine per GPU group, each in its own process.

vLLM's offline ``LLM`` is one engine in one process (its ``data_parallel_size`` belongs to
the online server), so ``generation.data_parallel_size: N`` starts N replica processes here,
each seeing only its own ``tensor_parallel_size`` GPUs through ``CUDA_VISIBLE_DEVICES``
(replica i gets GPUs i*TP .. i*TP+TP-1) and holding its own engine. Each ``generate`` call is
split into N contiguous slices answered in parallel and put back in order. vLLM honours each
request's own seed, so its samples do not depend on which replica answered (the transformers
backend seeds per call: its greedy outputs match, its sampled ones depend on the batch).
Tensor parallelism stays vLLM's, inside each replica.

Replicas are not daemonic: vLLM starts its engine core as a child process, which a daemonic
process may not do. Each replica leads its own process group (its engine's children join it),
so one ``killpg`` stops a replica with everything it started; a replica whose parent dies (the
spawn sentinel closes, e.g. on SIGKILL) kills its group, and a parent that exits without
``close()`` closes its replicas at exit instead of waiting on them for ever.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from multiprocessing.util import Finalize
from typing import Any

from widen_dag.llm.base import ChatTokenizerMixin, EngineStats, GenerationConfigError, GenerationRequest, Sample


def replica_gpus(replica: int, tensor_parallel_size: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` of one replica, within the GPUs this process was given."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    start = replica * tensor_parallel_size
    ids = visible.split(",") if visible else [str(i) for i in range(start + tensor_parallel_size)]
    chosen = ids[start : start + tensor_parallel_size]
    if len(chosen) < tensor_parallel_size:
        raise GenerationConfigError(
            f"generation.data_parallel_size: replica {replica} needs GPUs {start}..{start + tensor_parallel_size - 1}, "
            f"only {len(ids)} visible"
        )
    return ",".join(chosen)


REPLICA_CLOSE_TIMEOUT_S = 60  # a replica still running this long after "close" is killed with its group


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _die_with_parent() -> None:
    """Kill this replica's process group (itself and its engine's children) once the parent is gone."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the spawn pipe from the parent closes: the parent has exited
        _kill_group(os.getpgid(0))

    threading.Thread(target=watch, name="replica-parent-watchdog", daemon=True).start()


def _serve(conn, name: str, model: str, gpus: str | None, kwargs: dict[str, Any]) -> None:
    os.setpgid(0, 0)  # before the engine starts its children, so they join this group
    _die_with_parent()
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # before torch/vLLM initialise CUDA in this process
    from widen_dag.llm import create_backend

    try:
        backend = create_backend(name, model, **kwargs)
    except Exception as err:  # the parent raises it with the replica named
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}))
    try:
        while True:
            op, payload = conn.recv()
            if op == "close":
                break
            try:
                out = backend.generate(payload)
                conn.send(("ok", (out, backend.stats)))
            except Exception as err:
                conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        backend.close()


class DataParallelBackend(ChatTokenizerMixin):
    """N replica processes of backend ``name`` behind the one Backend protocol."""

    def __init__(
        self, name: str, model: str, *, replicas: int, tensor_parallel_size: int = 1, pin_gpus: bool = True, **kwargs: Any
    ) -> None:
        from widen_dag.llm.loading import load_tokenizer, resolve_model_path

        self.name = f"{name}x{replicas}"
        self.model_name = model
        self.tokenizer = load_tokenizer(
            resolve_model_path(model),
            model,
            revision=kwargs.get("revision"),
            trust_remote_code=kwargs.get("trust_remote_code", False),
        )
        self.stats = EngineStats()
        self._replica_stats: list[EngineStats] = [EngineStats() for _ in range(replicas)]
        ctx = mp.get_context("spawn")  # a fresh interpreter per replica: CUDA must not be inherited
        self._conns, self._procs, self.placement = [], [], []
        # Runs at close(), garbage collection, or interpreter exit (before multiprocessing joins
        # its non-daemonic children, which would otherwise wait for ever on idle replicas).
        self._finalizer = Finalize(self, _close_replicas, args=(self._conns, self._procs), exitpriority=10)
        kwargs = {**kwargs, "tensor_parallel_size": tensor_parallel_size}
        try:
            for i in range(replicas):
                gpus = replica_gpus(i, tensor_parallel_size) if pin_gpus else None
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, name, model, gpus, kwargs), daemon=False)
                proc.start()
                child.close()  # only the replica holds its end: a dead replica then reads as EOF here
                self._conns.append(parent)
                self._procs.append(proc)
            for i, conn in enumerate(self._conns):
                status, info = _receive(conn, self._procs[i])
                if status != "ready":
                    raise GenerationConfigError(f"generation replica {i} of {model} failed to start: {info}")
                self.placement.append(info)
        except BaseException:
            self.close()
            raise

    def generate(self, requests: list[GenerationRequest]) -> list[list[Sample]]:
        n = len(self._conns)
        size = -(-len(requests) // n) if requests else 0
        slices = [requests[i * size : (i + 1) * size] for i in range(n)]
        busy = [i for i, part in enumerate(slices) if part]
        for i in busy:
            self._conns[i].send(("generate", slices[i]))
        results: list[list[Sample]] = []
        errors = []
        for i in busy:
            status, payload = _receive(self._conns[i], self._procs[i])
            if status != "ok":
                errors.append(f"replica {i}: {payload}")
                continue
            out, stats = payload
            results.extend(out)
            self._replica_stats[i] = stats
        if errors:
            raise RuntimeError("generation failed in " + "; ".join(errors))
        self._sum_stats()
        return results

    def _sum_stats(self) -> None:
        total = EngineStats()
        for s in self._replica_stats:
            for name in ("prompt_tokens", "generated_tokens", "cached_prompt_tokens", "requests", "calls"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
            total.seconds = max(total.seconds, s.seconds)  # replicas run side by side
        self.stats = total

    def close(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()  # runs _close_replicas once, however often close() is called


def _receive(conn, proc) -> tuple[str, Any]:
    """The replica's next message; a replica that died (killed, out of memory) reads as an error."""
    try:
        return conn.recv()
    except EOFError:
        proc.join(timeout=5)
        return "error", f"the replica process (pid {proc.pid}) exited with code {proc.exitcode}"


def _close_replicas(conns: list, procs: list) -> None:
    """Ask each replica to close its engine; kill the process group of any that does not exit."""
    for conn in conns:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("close", None))
    for proc in procs:
        proc.join(timeout=REPLICA_CLOSE_TIMEOUT_S)
        if proc.exitcode is None:
            _kill_group(proc.pid)  # the replica leads its group: its engine's children go with it
            proc.kill()  # in case it had not yet made its group
            proc.join()
    for conn in conns:
        conn.close()
    conns.clear()
    procs.clear()
