"""The run's event log, as typed messages for the UI.

`EventFeed.poll()` runs in a thread worker (file reads and JSON parsing stay off the UI
thread). The first poll replays the whole history as one batch, so attaching to a long run
costs one repaint, not thousands. The screen re-arms its poll timer only after it has handled
a batch, so slow polls never pile up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.message import Message

from gpt2_cockpit.engine.events import EventReader
from gpt2_cockpit.engine.runs import RunDir


class EventsArrived(Message):
    """New events from one run's log (possibly none), and whether its process is alive."""

    def __init__(self, run_path: Path, events: list[dict[str, Any]], alive: bool, replay: bool) -> None:
        super().__init__()
        self.run_path = run_path
        self.events = events
        self.alive = alive
        self.replay = replay

    def can_replace(self, message: Message) -> bool:
        # Textual drops this (older) message when a newer one it can be replaced by is queued.
        # Batches must not be lost, so the newer one absorbs our events in front of its own.
        if isinstance(message, EventsArrived) and message.run_path == self.run_path:
            message.events[:0] = self.events
            message.replay = message.replay or self.replay
            return True
        return False


class EventFeed:
    """Follows one run: new events since the last poll plus a liveness check."""

    def __init__(self, run: RunDir):
        self.run = run
        self.reader = EventReader(run.events_path)
        self.polls = 0

    def poll(self) -> EventsArrived:
        events = self.reader.poll()
        alive = self.run.alive()
        self.polls += 1
        return EventsArrived(self.run.path, events, alive, replay=self.polls == 1)
