"""The run's log: state changes, evals, checkpoints, OOM adjustments, anomalies, set events,
errors, and the cockpit's own messages (a command that failed, a sample that timed out)."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

from ..model import LogEntry

SEVERITY_STYLE = {"warn": "yellow", "error": "bold red"}
KIND_STYLE = {"checkpoint": "green", "oom": "yellow", "anomaly": "yellow", "error": "red",
              "set": "cyan", "state": "magenta", "cockpit": "blue", "eval": ""}


class LogPane(RichLog):
    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=1000, min_width=20, wrap=True, markup=False, **kwargs)
        self.entries: list[LogEntry] = []

    def on_mount(self) -> None:
        self.border_title = "log"

    def add(self, entries: list[LogEntry]) -> None:
        self.entries.extend(entries)
        del self.entries[:-1000]
        for e in entries:
            line = Text()
            line.append(time.strftime("%H:%M:%S ", time.localtime(e.time)), style="dim")
            line.append(e.text, style=SEVERITY_STYLE.get(e.severity) or KIND_STYLE.get(e.kind, ""))
            self.write(line)

    def say(self, text: str, severity: str = "info") -> None:
        """A message from the cockpit itself."""
        self.add([LogEntry(time.time(), "cockpit", text, severity)])
