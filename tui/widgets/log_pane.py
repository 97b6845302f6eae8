"""The run's log: state changes, evals, checkpoints, OOM adjustments, anomalies, set events,
errors, and the cockpit's own messages (a command the run refused, a sample that failed).

Colours come from the stylesheet (`LogPane > .log--warn { color: $warning; }` and so on in
cockpit.tcss), so the log follows the app's theme like every other pane.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

from ..model import MAX_LOG, LogEntry

# an entry's component class: its severity unless "info", else its kind (oom and anomaly are warns)
STYLED = ("warn", "error", "checkpoint", "set", "state", "cockpit")


class LogPane(RichLog):
    COMPONENT_CLASSES = {"log--time", *(f"log--{name}" for name in STYLED)}

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=MAX_LOG, min_width=20, wrap=True, markup=False, **kwargs)
        self.entries: list[LogEntry] = []

    def on_mount(self) -> None:
        self.border_title = "log"

    def _style(self, entry: LogEntry):
        name = entry.severity if entry.severity != "info" else entry.kind
        return self.get_component_rich_style(f"log--{name}", partial=True) if name in STYLED else ""

    def add(self, entries: list[LogEntry]) -> None:
        self.entries.extend(entries)
        del self.entries[:-MAX_LOG]
        stamp = self.get_component_rich_style("log--time", partial=True)
        lines = []
        for e in entries[-MAX_LOG:]:
            line = Text()
            line.append(time.strftime("%H:%M:%S ", time.localtime(e.time)), style=stamp)
            line.append(e.text, style=self._style(e))
            lines.append(line)
        if lines:  # one write: a replayed history of a thousand entries costs one layout, not 1000
            self.write(Text("\n").join(lines))

    def say(self, text: str, severity: str = "info") -> None:
        """A message from the cockpit itself."""
        self.add([LogEntry(time.time(), "cockpit", text, severity)])
