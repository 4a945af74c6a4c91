"""Stage progress: the line a worker logs to say how far it is, and the console view of a run's stages.

A worker (or the trainer's callback) logs ``progress: training steps 120/400`` through its
Dagster Pipes log; the line reaches the run's event log like any other, reads well in the UI,
and `widen-dag demo` parses it back into a bar with an estimate. The view shows one line per
stage (waiting / running / done, elapsed time, bar): live through ``rich`` on a terminal, plain
lines when stdout is a pipe or a CI log. No Dagster here (widen_dag.defs.console feeds it from a
run's events); the lowest layer, so libraries and workers may import it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

PREFIX = "progress: "
_LINE = re.compile(r"^progress: (?P<task>.+) (?P<done>\d+)/(?P<total>\d+)$")


def progress_line(task: str, done: int, total: int) -> str:
    """The log line that reports ``done`` of ``total`` units of ``task`` (e.g. "training steps")."""
    return f"{PREFIX}{task} {done}/{total}"


def parse_progress(message: str) -> tuple[str, int, int] | None:
    """(task, done, total) from a progress line, None for any other message."""
    m = _LINE.match(message.strip()) if message.startswith(PREFIX) else None
    return (m["task"], int(m["done"]), int(m["total"])) if m else None


class ProgressReporter:
    """Hands progress lines to ``emit`` at most every ``seconds`` per task, and always the
    first and the last (done == total), so a fast loop does not flood the event log."""

    def __init__(self, emit: Callable[[str], None], seconds: float = 2.0) -> None:
        self.emit, self.seconds = emit, seconds
        self._last: dict[str, float] = {}

    def __call__(self, task: str, done: int, total: int) -> None:
        now = time.monotonic()
        last = self._last.get(task)
        if last is None or done >= total or now - last >= self.seconds:
            self._last[task] = now
            self.emit(progress_line(task, done, total))


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


FINISHED = ("done", "reused", "failed", "skipped", "not run")


@dataclass
class Stage:
    name: str
    state: str = "waiting"  # waiting, running, retrying, then one of FINISHED
    started: float | None = None
    ended: float | None = None
    task: str | None = None
    done: int = 0
    total: int = 0
    # where the current task's rate is measured from: its first report (time, units done)
    _origin: tuple[float, int] = (0.0, 0)
    _printed_bucket: int = -1

    def elapsed(self, now: float) -> float | None:
        return None if self.started is None else (self.ended or now) - self.started

    def eta(self, now: float) -> float | None:
        """Seconds left at the task's rate so far; None until there is a rate."""
        t0, d0 = self._origin
        if self.state != "running" or not self.total or self.done <= d0 or now <= t0:
            return None
        return (self.total - self.done) * (now - t0) / (self.done - d0)


@dataclass
class StageView:
    """One line per stage of a command's runs. ``live``: redraw in place with rich (a
    terminal); otherwise print a plain line per change (start, each tenth of a task, end)."""

    out: IO[str] = field(default_factory=lambda: sys.stdout)
    live: bool | None = None
    stages: dict[str, Stage] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        from rich.console import Console

        self.console = Console(file=self.out, highlight=False)
        if self.live is None:
            self.live = self.console.is_terminal
        self._lock = threading.RLock()
        self._live: Any = None

    # ---- what happens ---------------------------------------------------------------------
    def add(self, name: str) -> None:
        with self._lock:
            self.stages.setdefault(name, Stage(name))

    def start(self, name: str) -> None:
        with self._lock:
            stage = self.stages.setdefault(name, Stage(name))
            if stage.started is None:
                stage.started = time.monotonic()
            if stage.state != "running":
                stage.state = "running"
                self._plain(f"{name}: running")

    def retry(self, name: str) -> None:
        with self._lock:
            self.stages.setdefault(name, Stage(name)).state = "retrying"
            self._plain(f"{name}: failed, retrying")

    def progress(self, name: str, task: str, done: int, total: int) -> None:
        with self._lock:
            stage = self.stages.setdefault(name, Stage(name))
            now = time.monotonic()
            if stage.task != task or done < stage.done:
                stage.task, stage._origin, stage._printed_bucket = task, (now, done), -1
            stage.done, stage.total = done, total
            bucket = 10 * done // total if total else 0
            if bucket > stage._printed_bucket:
                stage._printed_bucket = bucket
                eta = stage.eta(now)
                left = f", ~{clock(eta)} left" if eta is not None and done < total else ""
                self._plain(f"{name}: {task} {done}/{total} ({100 * done // max(total, 1)}%{left})")

    def finish(self, name: str, state: str = "done") -> None:
        with self._lock:
            stage = self.stages.setdefault(name, Stage(name))
            if stage.state in FINISHED:
                return
            stage.state, stage.ended = state, time.monotonic()
            took = stage.elapsed(stage.ended)
            self._plain(f"{name}: {state}" + (f" in {clock(took)}" if took is not None else ""))

    def abandon(self, names: list[str]) -> None:
        """Stages a failed run never reached."""
        for name in names:
            if self.stages.get(name, Stage(name)).state in ("waiting", "running", "retrying"):
                self.finish(name, "not run")

    def note(self, text: str) -> None:
        """A line above the stages (live) or among them (plain)."""
        with self._lock:
            self.console.print(text, markup=False)

    # ---- drawing --------------------------------------------------------------------------
    def _plain(self, text: str) -> None:
        if not self.live:
            self.console.print(f"[{clock(time.monotonic() - self.started)}] {text}", markup=False, soft_wrap=True)

    def table(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        marks = {"waiting": ("·", "dim"), "running": ("▶", "cyan"), "retrying": ("↻", "yellow"), "done": ("✓", "green"),
                 "reused": ("✓", "green"), "failed": ("✗", "red"), "skipped": ("-", "dim"), "not run": ("-", "dim")}  # fmt: skip
        now = time.monotonic()
        grid = Table.grid(padding=(0, 1))
        with self._lock:
            # Every column but the last keeps its width; on a narrow terminal the detail is cut.
            widths = [1, max((len(n) for n in self.stages), default=8), 8, 5, 20]
            for width in widths:
                grid.add_column(no_wrap=True, min_width=width)
            grid.add_column(no_wrap=True, overflow="ellipsis")
            for s in self.stages.values():
                mark, style = marks.get(s.state, ("?", ""))
                elapsed = s.elapsed(now)
                bar: Any = ProgressBar(total=s.total, completed=s.done, width=20) if s.total else Text("")
                eta = s.eta(now)
                detail = f"{s.task} {s.done}/{s.total}" if s.task else ""
                if eta is not None:
                    detail += f"  ~{clock(eta)} left"
                grid.add_row(
                    Text(mark, style=style),
                    Text(s.name, style="bold" if s.state == "running" else ""),
                    Text(s.state, style=style),
                    Text(clock(elapsed) if elapsed is not None else "", style="dim"),
                    bar,
                    Text(detail, style="dim"),
                )
        return grid

    def __enter__(self) -> StageView:
        if self.live:
            from rich.live import Live

            # The view owns the terminal; print() and warnings go where the caller sent them.
            self._live = Live(
                console=self.console,
                get_renderable=self.table,
                refresh_per_second=2,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        else:
            self._plain(f"stages: {', '.join(self.stages)}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


@contextlib.contextmanager
def captured_output(log_file: Path, echo: bool = False) -> Iterator[IO[str]]:
    """Send this process's stdout and stderr (file descriptors, so child processes too) to
    ``log_file``; yield a stream on the original stdout for what the user should see. ``echo``:
    copy the log to the console as well (``--verbose``)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    console = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")
    stop = threading.Event()
    tail = threading.Thread(target=_copy_new_lines, args=(log_file, console, stop), daemon=True) if echo else None
    if tail:
        tail.start()
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if tail:
            stop.set()
            tail.join()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        console.close()


def _copy_new_lines(log_file: Path, console: IO[str], stop: threading.Event) -> None:
    """`tail -f` of the log onto the console until ``stop`` (then to the current end)."""
    with open(log_file, encoding="utf-8", errors="replace") as f:
        f.seek(0, os.SEEK_END)
        while True:
            last = stop.is_set()
            chunk = f.read()
            if chunk:
                console.write(chunk)
                console.flush()
            if last:
                return
            stop.wait(0.3)
