"""Shared pane pieces: a bordered text pane that scrolls by keyboard, and label/value layout."""

from __future__ import annotations

import textwrap

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.widgets import Static


class TextPane(VerticalScroll):
    """A pane of text that Tab can focus and the arrow keys scroll (no mouse needed)."""

    def compose(self) -> ComposeResult:
        yield Static(classes="pane-body")

    def set_body(self, content: Content | str) -> None:
        self.query_one(".pane-body", Static).update(content)

    @property
    def text(self) -> str:
        """The plain text shown (for tests and for copying)."""
        return str(self.query_one(".pane-body", Static).render())


def label_value_lines(rows: list[tuple[str, str]], width: int, styles: dict[int, str] | None = None) -> Content:
    """Rows as 'label  value', long values wrapped with a hanging indent under the value column."""
    styles = styles or {}
    label_w = max((len(label) for label, _ in rows), default=0)
    value_w = width - label_w - 1
    parts: list[tuple[str, str]] = []
    for n, (label, value) in enumerate(rows):
        if n:
            parts.append(("\n", ""))
        if value_w < 24:  # too narrow for two columns: the value under its label, indented
            lines = textwrap.wrap(value, max(width - 2, 8)) or [""]
            if label:
                parts.append((label + "\n", "$text-muted"))
            parts.append(("\n".join("  " + line for line in lines), styles.get(n, "")))
            continue
        lines = textwrap.wrap(value, value_w) or [""]
        parts.append((label.ljust(label_w) + " ", "$text-muted"))
        parts.append(("\n".join(lines[:1] + [" " * (label_w + 1) + line for line in lines[1:]]), styles.get(n, "")))
    return Content.assemble(*parts)
