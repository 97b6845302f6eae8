"""Our small adapter over plotext (through textual-plotext): declare series, get a drawn chart.

`PlotCanvas.show(figure)` replays a declared `Figure` onto textual-plotext's `plt` (its public
plotting object) and lets `PlotextPlot.render` size, theme and build it. A build must be
repeatable (a resize or a theme change builds again without a new figure), and plotext's own
log scale is not: each build applies the log once more. So the log y-axis is done here, on the
values, with tick labels in loss units. The rest of the cockpit never calls plotext directly;
swapping the plotting library means rewriting this file only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import RenderResult
from textual.color import Color
from textual.geometry import Region
from textual.strip import Strip
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
    x_ticks: list[float] | None = None  # None: plotext's own; []: none
    x_tick_labels: list[str] | None = None
    x_lim: tuple[float, float] | None = None  # None: the data's range (a plot under another takes its range)
    y_ticks: list[float] | None = None  # linear axes only (a log axis picks its own)
    y_tick_labels: list[str] | None = None
    v_lines: list[tuple[float, str]] = field(default_factory=list)  # (x, theme variable): the cursor
    legend: bool = True  # plotext's legend of the labelled series (the compare screen draws its own)
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


def log_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values (in data units) for a log axis over [lo, hi] (both > 0): 1-2-5 steps per
    decade when they fit, else whole decades; round linear steps when the range is narrow."""
    if not (0 < lo < hi and math.isfinite(hi)):
        return [lo]
    if hi / lo < 10:
        return nice_ticks(lo, hi, count)
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1, 2, 5), (1,)):
        ticks = [m * 10.0**d for d in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) <= count:
            return ticks
    step = math.ceil((last - first) / max(count, 1))
    return [10.0**d for d in range(first, last + 1, step) if lo <= 10.0**d <= hi]


class PlotCanvas(PlotextPlot):
    """A plotext chart drawn from a `Figure`; `show()` swaps the figure and repaints once."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.figure = Figure()
        self.renders = 0  # how many times plotext actually drew (tests check redraws stay rare)
        self.paint_seconds = 0.0  # CPU time painting the current figure took (plotext, then Textual)

    def on_mount(self) -> None:
        # series colours are theme variables: a new theme needs the figure replayed
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.show(self.figure))

    def show(self, figure: Figure) -> None:
        self.figure = figure
        self.paint_seconds = 0.0
        plt = self.plt
        plt.clear_figure()
        y_ticks: list[float] = []
        for s in figure.series:
            if not s.xs:
                continue
            ys = s.ys
            if figure.log_y:
                ys = [math.log10(y) for y in ys]  # the series hold only positive values on a log axis
                y_ticks += s.ys
            draw = plt.scatter if s.scatter else plt.plot
            draw(s.xs, ys, label=(s.label or None) if figure.legend else None, marker=s.marker,
                 color=self._rgb(s.color))
        for x, color in figure.v_lines:
            plt.vline(x, color=self._rgb(color))
        if figure.log_y and y_ticks:
            ticks = log_ticks(min(y_ticks), max(y_ticks), max(3, (self.size.height or 10) // 3))
            plt.yticks([math.log10(t) for t in ticks], [f"{t:g}" for t in ticks])
        elif figure.y_ticks:
            plt.yticks(figure.y_ticks, figure.y_tick_labels)
        if figure.x_label:
            plt.xlabel(figure.x_label)
        if figure.x_lim is not None and figure.x_lim[1] > figure.x_lim[0]:
            plt.xlim(*figure.x_lim)
        if figure.x_ticks is not None:  # [] hides the tick row (a plot under this one shows it)
            plt.xticks(figure.x_ticks, figure.x_tick_labels or ([] if not figure.x_ticks else None))
        self.refresh()

    def render_lines(self, crop: Region) -> list[Strip]:
        started = time.thread_time()
        try:
            return super().render_lines(crop)
        finally:
            self.paint_seconds += time.thread_time() - started

    def _rgb(self, variable: str) -> tuple[int, int, int]:
        value = self.app.theme_variables.get(variable) or "white"
        return Color.parse(value).rgb

    def render(self) -> RenderResult:
        if self.size.width < 16 or self.size.height < 5:
            return Text("(too small to plot)", style="dim")
        if not self.figure.points:
            return Text(self.figure.empty_text, style="dim")
        try:
            drawn = super().render()
        except (ValueError, IndexError, ZeroDivisionError):  # plotext edge cases (e.g. one flat point)
            return Text("(plot unavailable for this data)", style="dim")
        self.renders += 1
        return drawn
