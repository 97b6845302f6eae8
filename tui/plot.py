"""Our small adapter over plotext (through textual-plotext): declare series, get a drawn chart.

plotext keeps mutable state between builds (a second `build()` of a log-scale figure applies
the log again), so every render starts from a clean figure and replays the declared spec.
The rest of the cockpit never calls plotext directly; swapping the plotting library means
rewriting this file only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import RenderResult
from textual.color import Color
from textual_plotext import PlotextPlot


@dataclass
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    color: str = "primary"  # a theme variable, so the plot follows the app's theme
    marker: str = "braille"  # braille: 2x4 dots per cell; "dot" for sparse points
    scatter: bool = False


@dataclass
class Figure:
    series: list[Series] = field(default_factory=list)
    log_y: bool = False
    x_label: str = ""
    x_ticks: list[float] | None = None
    x_tick_labels: list[str] | None = None
    empty_text: str = "no data yet"

    @property
    def points(self) -> int:
        return sum(len(s.xs) for s in self.series)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick positions (1, 2, 2.5, 5 × 10^k apart), as many as fit in `count`, within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    mag = 10 ** math.floor(math.log10((hi - lo) / max(count, 1)))
    for step in (m * mag for m in (1, 2, 2.5, 5, 10, 20, 25, 50, 100)):
        first = math.ceil(lo / step) * step
        n = int((hi - first) // step) + 1
        if n <= count:
            return [round(first + i * step, 10) for i in range(n)]
    return [lo, hi]


class PlotCanvas(PlotextPlot):
    """A plotext chart drawn from a `Figure`; `show()` swaps the figure and repaints once."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.figure = Figure()
        self.renders = 0  # how many times plotext actually drew (tests check redraws stay rare)

    def show(self, figure: Figure) -> None:
        self.figure = figure
        self.refresh()

    def _rgb(self, variable: str) -> tuple[int, int, int]:
        value = self.app.theme_variables.get(variable) or "white"
        return Color.parse(value).rgb

    def render(self) -> RenderResult:
        width, height = self.size.width, self.size.height
        fig = self.figure
        if width < 16 or height < 5:
            return Text("(too small to plot)", style="dim")
        if not fig.points:
            return Text(fig.empty_text, style="dim")
        plt = self.plt
        plt.clear_figure()
        plt.plotsize(width, height)
        plt._set_size(width, height)  # as PlotextPlot.render does: plotsize alone does not stick
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        for s in fig.series:
            if not s.xs:
                continue
            draw = plt.scatter if s.scatter else plt.plot
            draw(s.xs, s.ys, label=s.label, marker=s.marker, color=self._rgb(s.color))
        if fig.log_y:
            plt.yscale("log")
        if fig.x_label:
            plt.xlabel(fig.x_label)
        if fig.x_ticks:
            plt.xticks(fig.x_ticks, fig.x_tick_labels)
        try:
            out = plt.build()
        except (ValueError, IndexError, ZeroDivisionError):  # plotext edge cases (e.g. one flat point)
            return Text("(plot unavailable for this data)", style="dim")
        self.renders += 1
        return Text.from_ansi(out)
