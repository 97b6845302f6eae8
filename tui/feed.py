"""A run's event log followed for the cockpit, and folded into typed messages for the UI.

The log is read by the engine's one reader (engine/runs/events.py `LogReader`): decoded events,
and runs of consecutive `step` lines left raw (`StepLines`: RunModel folds a run of them without
decoding each one, see series.py); of the `gpu` readings only the newest GPU_LINES_KEPT and of the
`prepare` progress only the newest line of each chunk are decoded.

`EventFeed.poll()` runs in a thread worker (file reads and parsing stay off the UI thread). The
first poll replays the whole history into a new RunModel there, chunk by chunk, so memory stays
bounded however long the log, and the screen takes that model over in one message: attaching to
a long run costs one repaint, not thousands. The screen re-arms its poll timer only after it has
handled a batch, so slow polls never pile up.

Measured with tests/benchmarks/attach_big_log.py (1,000,000 lines, 172 MB: 200,000 steps, 8 GPUs
sampled every 5 s, on a 2-core box): first full frame 13.5 s and a 1.6 GB peak (1.25 GB held)
when every line was decoded and every step kept; 1.4 s and 93 MB (70 MB held) this way. The same
log written with json.dumps' default `", "` separators: 9.7-20 s when only the compact layout
was read fast, now 1.2-1.4x the compact log's time (0.96 against 0.79 s, alternating rounds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from textual.message import Message

from gpt2_cockpit.engine.runs.events import LogReader, StepLines
from gpt2_cockpit.engine.runs.rundir import RunDir

from .model import GPU_HISTORY, REPLAY_LOG, Changes, RunModel

__all__ = ["EventFeed", "EventsArrived", "LogReader", "StepLines", "replay"]

GPU_LINES_KEPT = 64 * GPU_HISTORY  # the newest `gpu` lines a replay decodes (64 GPUs' short history)


def replay(reader: LogReader, model: RunModel, changes: Changes | None = None,
           also: Callable[[list[Any]], None] | None = None) -> Changes:
    """Fold everything the reader has into `model`, chunk by chunk (memory stays bounded), and
    hand each batch to `also` too (the compare screen's figures)."""
    ch = changes or Changes()
    for batch in reader.batches():
        if reader.expected_steps:
            model.steps.expect(reader.expected_steps)
        model.ingest(batch, ch)
        ch.trim(REPLAY_LOG)
        if also is not None:
            also(batch)
    return ch


class EventsArrived(Message):
    """New events from one run's log (possibly none), and whether its process is alive.

    The first poll's message is the replay: `model` is the whole history folded off the UI
    thread and `changes` what it touched; `events` is empty. Later ones carry `events` (decoded
    events and StepLines) for the screen's model to ingest.
    """

    def __init__(self, run_path: Path, events: list[Any], alive: bool, replay: bool,
                 model: RunModel | None = None, changes: Changes | None = None) -> None:
        super().__init__()
        self.run_path = run_path
        self.events = events
        self.alive = alive
        self.replay = replay
        self.model = model
        self.changes = changes

    def can_replace(self, message: Message) -> bool:
        # Textual drops this (older) message when a newer one it can be replaced by is queued.
        # Batches must not be lost, so the newer one absorbs our events in front of its own.
        # A replay (a model, not events) is never merged.
        if (isinstance(message, EventsArrived) and message.run_path == self.run_path
                and self.model is None and message.model is None):
            message.events[:0] = self.events
            message.replay = message.replay or self.replay
            return True
        return False


class EventFeed:
    """Follows one run: new events since the last poll plus a liveness check. The first poll
    replays the history into `blank()`, a new model."""

    def __init__(self, run: RunDir, blank: Callable[[], RunModel] | None = None):
        self.run = run
        self.reader = LogReader(run.events_path, gpu_lines=GPU_LINES_KEPT)
        self.blank = blank
        self.polls = 0

    def backlog(self) -> int:
        """Bytes appended to the log since the last poll (one stat, no read)."""
        return self.reader.backlog()

    def poll(self) -> EventsArrived:
        self.polls += 1
        if self.polls == 1 and self.blank is not None:
            model = self.blank()
            changes = replay(self.reader, model)
            return EventsArrived(self.run.path, [], self.run.alive(), replay=True, model=model, changes=changes)
        events = self.reader.poll() if self.polls == 1 or self.backlog() else []
        return EventsArrived(self.run.path, events, self.run.alive(), replay=self.polls == 1)
