"""What a study invocation says while it trains: the share done and the ETA (:class:`Progress`: a
tqdm bar on a terminal, plain lines in a log), each run's epochs as they end (:class:`Monitor`, which
polls ``progress.json``), durations (:func:`fmt_time`) and the tail of a failed run's log
(:func:`log_tail`). Kept apart from the scheduler (:mod:`resattn.study.runner`), which only calls them.
"""

from __future__ import annotations

import json
import threading
import time

from tqdm import tqdm

from resattn.study.store import RunDir


def fmt_time(seconds: float) -> str:
    """``5.3s``, ``42s``, ``1m05s``, ``2h03m``: a duration as the study's lines print it. Kept rather
    than tqdm's ``format_interval``, which writes ``00:05`` / ``01:05`` / ``2:03:00``: the printed
    lines (``elapsed 1m00s | ETA 1m00s``, ``finished: ... in 5.3s``) are asserted by the tests and
    quoted in the docs, and must not change."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Thread-safe progress of a study: per-run fractions weighted by run cost, with the ETA; a tqdm
    bar on a terminal, plain lines (with the share done and ETA) in a log. Both count from what was
    left when this invocation started: a run resumed at 90% starts at its 90% (its first report),
    so the share is of the work left and the ETA comes from the pace of this invocation."""

    def __init__(self, study: str, costs: dict[str, float], out) -> None:
        self.study, self.out = study, out
        self.total = len(costs)
        self.costs = {k: v / (sum(costs.values()) or 1) for k, v in costs.items()}
        self.done: set[str] = set()
        self.fractions: dict[str, float] = {}
        self.started_at: dict[str, float] = {}  # each run's fraction when this invocation started it
        self.start = time.time()
        self.lock = threading.Lock()
        tty = getattr(out, "isatty", lambda: False)()
        self.bar = (
            tqdm(total=100, desc=study, unit="%", file=out, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
            if tty and self.total
            else None
        )

    def finished(self) -> float:
        """Share of the work left at the start (by cost) that this invocation has done, in [0, 1]."""
        left = {k: c * (1 - self.started_at.get(k, 0.0)) for k, c in self.costs.items()}
        done = sum(left[k] for k in self.done)
        done += sum(self.costs[k] * (f - self.started_at[k]) for k, f in self.fractions.items() if k not in self.done)
        return min(1.0, done / (sum(left.values()) or 1))

    def eta(self) -> str:
        finished = self.finished()
        elapsed = time.time() - self.start
        if finished <= 0:
            return f"0% | elapsed {fmt_time(elapsed)} | ETA unknown"
        return (
            f"{100 * finished:.0f}% | elapsed {fmt_time(elapsed)} | ETA {fmt_time(elapsed / finished * (1 - finished))}"
        )

    def say(self, index: int, run_id: str, message: str) -> None:
        with self.lock:
            line = f"[{self.study} {index}/{self.total}] {run_id} {message}"
            if self.bar is not None:
                self.bar.write(line, file=self.out)
            else:
                print(f"{line} | study {self.eta()}", file=self.out, flush=True)

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.n = round(100 * self.finished(), 1)
            self.bar.refresh()

    def update(self, run_id: str, fraction: float) -> None:
        with self.lock:
            self.fractions[run_id] = min(max(fraction, 0.0), 1.0)
            # the lowest fraction heard: a resumed run's progress.json may first show where it was stopped
            self.started_at[run_id] = min(self.started_at.get(run_id, 1.0), self.fractions[run_id])
            self._refresh()

    def finish(self, run_id: str) -> None:
        with self.lock:
            self.fractions.pop(run_id, None)
            self.done.add(run_id)
            self._refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Monitor:
    """Polls ``progress.json`` of the runs in flight (whatever the executor) and prints each new epoch."""

    def __init__(self, progress: Progress, index: dict[str, int], every: float = 1.0) -> None:
        self.progress, self.index, self.every = progress, index, every
        self.active: dict[str, RunDir] = {}
        self.epochs: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            for run_id, run_dir in list(self.active.items()):
                try:
                    info = json.loads(run_dir.progress.read_text())
                except (OSError, ValueError):
                    continue
                self.progress.update(run_id, info.get("fraction", 0.0))
                if info.get("epoch") != self.epochs.get(run_id) and run_id in self.active:
                    self.epochs[run_id] = info.get("epoch")
                    extra = "".join(
                        f", {k} {info[k]:.4g}{'%' if k == 'val/err1' else ''}"
                        for k in ("train/loss", "val/err1")
                        if k in info
                    )
                    total = info.get("max_epochs") or -1  # -1: the run is bounded by max_steps
                    epoch = f"{info['epoch'] + 1}/{total}" if total > 0 else f"{info['epoch'] + 1}"
                    self.progress.say(self.index[run_id], run_id, f"epoch {epoch}{extra}")


def log_tail(run_dir: RunDir, lines: int = 15) -> str:
    """The last ``lines`` lines of a run's ``train.log`` (what a failure line shows), or ``(no log)``."""
    try:
        return "".join(run_dir.log.read_text().splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"
