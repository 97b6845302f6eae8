"""The run's log: state changes, evals, HellaSwag scores, checkpoints, OOM adjustments, anomalies,
set events, errors, the run's notices (it trains without HellaSwag offline, its share of the CPU),
and the cockpit's own messages (a command the run refused, a sample that failed).

Colours come from the stylesheet (`LogPane > .log--warn { color: $warning; }` and so on in
cockpit.tcss), so the log follows the app's theme like every other pane.

A RichLog wraps a line once, for the width it has when the line is written. The pane keeps its
entries, so when its width changes (a terminal resized over SSH) it writes them again for the
new width, once the size has settled, and shows the newest at the bottom.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.timer import Timer
from textual.widgets import RichLog

from ..model import MAX_LOG, LogEntry

# an entry's component class: its severity unless "info", else its kind (oom and anomaly are warns)
STYLED = ("warn", "error", "checkpoint", "set", "state", "cockpit", "notice")
REFLOW_DELAY = 0.1  # seconds: a resize rewraps the log once the size has settled


class LogPane(RichLog):
    COMPONENT_CLASSES = {"log--time", *(f"log--{name}" for name in STYLED)}

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=MAX_LOG, min_width=20, wrap=True, markup=False, **kwargs)
        self.entries: list[LogEntry] = []
        self.reflows = 0
        self._wrapped_for = 0  # the width the lines on screen were wrapped for (0: none written yet)
        self._reflow_timer: Timer | None = None

    def on_mount(self) -> None:
        self.border_title = "log"

    def on_resize(self) -> None:
        width = self.scrollable_content_region.width
        if not self._wrapped_for:  # the first size: RichLog writes what waited for it, at this width
            self._wrapped_for = width if self.entries else 0
            return
        if width != self._wrapped_for:
            if self._reflow_timer is not None:
                self._reflow_timer.stop()
            self._reflow_timer = self.set_timer(REFLOW_DELAY, self.reflow)

    def reflow(self) -> None:
        """Write every entry again, wrapped for the width the pane has now."""
        self._reflow_timer = None
        if self.scrollable_content_region.width == self._wrapped_for:
            return
        self.reflows += 1
        self.clear()
        self._write(self.entries)

    def _style(self, entry: LogEntry):
        name = entry.severity if entry.severity != "info" else entry.kind
        return self.get_component_rich_style(f"log--{name}", partial=True) if name in STYLED else ""

    def add(self, entries: list[LogEntry]) -> None:
        self.entries.extend(entries)
        del self.entries[:-MAX_LOG]
        self._write(entries)

    def _write(self, entries: list[LogEntry]) -> None:
        stamp = self.get_component_rich_style("log--time", partial=True)
        lines = []
        for e in entries[-MAX_LOG:]:
            line = Text()
            line.append(time.strftime("%H:%M:%S ", time.localtime(e.time)), style=stamp)
            line.append(e.text, style=self._style(e))
            lines.append(line)
        if lines:  # one write: a replayed history of a thousand entries costs one layout, not 1000
            self.write(Text("\n").join(lines))
            self._wrapped_for = self.scrollable_content_region.width if self._size_known else 0

    def say(self, text: str, severity: str = "info") -> None:
        """A message from the cockpit itself."""
        self.add([LogEntry(time.time(), "cockpit", text, severity)])
