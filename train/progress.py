"""Training progress, drawn by the driver only.

The training workers' own output stays in Ray's session logs (``log_to_driver=False``): Ray Train's
worker-group chatter, transformers' notes and a bar per worker would otherwise interleave on the
user's terminal. Instead each worker's ``Bar`` sends its counts (a few times a second at most) to the
run's named ``Board`` actor (its name travels in the loop config as ``progress_board``), and the driver's ``Display`` draws them: live rich bars, one row per model, on a
terminal; one line per finished epoch when the output is a pipe or a file.
"""
from __future__ import annotations

import sys
import threading
import time

NAMESPACE = "squad"
SEND_EVERY_S = 0.5


class Board:
    """The Ray actor the workers report to: the latest state of every bar, by key."""

    def __init__(self):
        self.bars: dict[str, tuple[str, int, int, bool]] = {}

    def update(self, key: str, desc: str, done: int, total: int, closed: bool) -> None:
        self.bars[key] = (desc, done, total, closed)

    def snapshot(self) -> dict[str, tuple[str, int, int, bool]]:
        return self.bars


def start_board():
    """A board for one training run, in the driver: (its actor, the name workers find it by)."""
    import uuid

    import ray

    name = f"squad-train-progress-{uuid.uuid4().hex[:12]}"
    return ray.remote(num_cpus=0)(Board).options(name=name, namespace=NAMESPACE).remote(), name


def _board(name: str | None):
    """The run's board when this process is a Ray worker and the run made one, else None."""
    import ray

    if not name or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


class Bar:
    """A progress bar for a loop in a training worker (a terminal bar outside Ray, for direct calls)."""

    def __init__(self, desc: str, total: int, board: str | None = None):
        self.key, self.desc, self.total, self.done = f"{desc}@{time.monotonic_ns()}", desc, total, 0
        self.board = _board(board)
        self.local = None
        if self.board is None:
            from squad.progress import terminal_bar

            self.local = terminal_bar(desc=desc, total=total, mininterval=2)
        self.sent = 0.0
        self._send(force=True)

    def _send(self, force: bool = False, closed: bool = False):
        now = time.monotonic()
        if self.board is not None and (force or now - self.sent >= SEND_EVERY_S):
            self.sent = now
            return self.board.update.remote(self.key, self.desc, self.done, self.total, closed)
        return None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.local is not None:
            self.local.update(n)
        self._send()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self.local is not None:
            self.local.set_description(desc)

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        ref = self._send(force=True, closed=True)
        if ref is not None:  # the final count is on the board before the loop goes on
            import ray

            ray.get(ref)


class Display:
    """Polls the board from a driver thread and draws it, until stopped."""

    def __init__(self, board, stream=None, live: bool | None = None):
        self.board = board
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="squad-train-progress", daemon=True)
        self.seen: dict[str, float] = {}   # key -> when the driver first saw it
        self.printed: set[str] = set()
        self.progress = self.tasks = None

    def __enter__(self):
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(file=self.stream), transient=False)
            self.progress.start()
            self.tasks = {}
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        self._draw()  # the final state
        if self.progress is not None:
            self.progress.stop()

    def _run(self):
        while not self.stop_event.wait(SEND_EVERY_S):
            self._draw()

    def _draw(self):
        import ray

        try:
            bars = ray.get(self.board.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a missed frame; the next poll draws it
            return
        now = time.monotonic()
        for key, (desc, done, total, closed) in sorted(bars.items(), key=lambda kv: int(kv[0].rsplit("@", 1)[1])):
            self.seen.setdefault(key, now)
            if self.progress is not None:
                if key not in self.tasks:
                    self.tasks[key] = self.progress.add_task(desc, total=total)
                self.progress.update(self.tasks[key], description=desc, completed=done, total=total)
            elif closed and key not in self.printed:
                self.printed.add(key)
                print(f"[squad] {desc}: {done}/{total} in {now - self.seen[key]:.1f} s", file=self.stream, flush=True)
