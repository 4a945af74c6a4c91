"""A run's event stream as stage progress: which steps wait, run, finished, and how far they are.

`widen-dag demo` executes its runs in this process (steps in child processes); every event
those write lands in the instance's event log, which a thread here reads as it grows: step
starts, retries, successes and failures, materializations (was the stage reused?), and the
``progress:`` lines workers log through Pipes (widen_dag.progress).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import dagster as dg

from widen_dag.progress import StageView, parse_progress

_STEP_STATES = {
    dg.DagsterEventType.STEP_SUCCESS: "done",
    dg.DagsterEventType.STEP_FAILURE: "failed",
    dg.DagsterEventType.STEP_SKIPPED: "skipped",
}


def step_names(job: dg.JobDefinition) -> list[str]:
    """The job's step keys in execution order (one step per op; a multi-asset is one step)."""
    return [node.name for node in job.nodes_in_topological_order]


class RunFollower:
    """Reads one run's new events and turns them into view updates; ``stage`` names a step."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, view: StageView, stage: Callable[[str], str]) -> None:
        self.instance, self.run_id, self.view, self.stage = instance, run_id, view, stage
        self.cursor: str | None = None
        self.reused: set[str] = set()

    def poll(self) -> None:
        while True:
            conn = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, limit=1000)
            self.cursor = conn.cursor
            for record in conn.records:
                self._apply(record.event_log_entry)
            if not conn.has_more:
                return

    def _apply(self, entry) -> None:
        step = entry.step_key
        if step is None:
            return
        name = self.stage(step)
        event = entry.dagster_event
        if event is None:
            found = parse_progress(entry.user_message or "")
            if found:
                self.view.progress(name, *found)
            return
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START:
            self.view.start(name)
        elif kind == dg.DagsterEventType.STEP_UP_FOR_RETRY:
            self.view.retry(name)
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
            if event.step_materialization_data.materialization.metadata.get("reused") == dg.BoolMetadataValue(True):
                self.reused.add(name)
        elif kind in _STEP_STATES:
            state = _STEP_STATES[kind]
            self.view.finish(name, "reused" if state == "done" and name in self.reused else state)


@contextlib.contextmanager
def following(view: StageView, launcher: tuple[str, str], seen: set[str], stage: Callable[[str], str]) -> Iterator[None]:
    """While the body executes a run, show its events in ``view``. The run is the newest one
    tagged ``launcher`` (this process) that is not in ``seen``; it is added to ``seen``."""
    stop = threading.Event()

    def follow() -> None:
        with dg.DagsterInstance.get() as instance:  # its own connection, for this thread
            follower = None
            while True:
                last = stop.is_set()
                if follower is None:
                    runs = instance.get_runs(filters=dg.RunsFilter(tags=dict([launcher])), limit=1)
                    if runs and runs[0].run_id not in seen:
                        seen.add(runs[0].run_id)
                        follower = RunFollower(instance, runs[0].run_id, view, stage)
                if follower is not None:
                    try:
                        follower.poll()
                    except Exception as err:  # the view is a convenience: never let it stop a run
                        view.note(f"widen-dag: the stage view stopped ({err!r}); the event log file has everything")
                        return
                if last:
                    return
                stop.wait(0.5)

    thread = threading.Thread(target=follow, name="widen-dag-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
