"""The loss pane: train loss (smoothed) and val loss over the whole history, with a cursor that
reads out one point, zoom to the recent part, spike markers, an optional small plot of the
learning rate and gradient norm, and one of HellaSwag acc_norm with the GPT-2 it compares with as
a dashed line (shown by itself once the run has scored HellaSwag and the pane has room for both
plots, AUTO_HELLASWAG_HEIGHT rows: not at 80x24, where the status row tells the last figure;
a key shows or hides it at any size).

Redraws for new data are coalesced and drawn together with the status pane's figures: new data
only marks the plot stale, and when the run screen repaints the status it asks the plot to
`catch_up`, which draws the new points then if that keeps its drawing (the figures, plotext and
Textual's rendering of it, measured on the UI thread) under a share of one core (`cpu_share`),
at most every REDRAW_INTERVAL and at least every `max_gap` seconds. So the plot shows the
iteration the status shows, or an older one only while the budget holds it back. A viewer's CPU
is taken from the run it watches when that run keeps the cores busy (training on the CPU), and
ten viewers of one run must cost it under 2% (tests/benchmarks/viewers.py); the run screen sets
the budget (tui/pace.py): at its normal pace `max_gap` is the status's period, so the plot keeps
up with the status; at the lean pace it waits for its share. A plot at 120x36 costs ~20-30 ms to
draw on a slow core: at 0.4% of a core that was one redraw in 5-7 s, which left the plot ~100
iterations behind the status of a fast CPU run. What the user asks for (smoothing, zoom, the
cursor, ...) redraws at once. The model's step history is bounded (series.py) and the
curves are downsampled to about two points per column, so a redraw costs the same for a
200-step run and a 200,000-step one.

`curves()` is shared with the compare screen, so one run's line looks the same in both, and so
is `PlotView`: the smoothing, log-scale and x-axis settings, their keys and their cycling rules.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Static

from gpt2_cockpit.engine.fmt import fmt_count, fmt_float, fmt_lr
from gpt2_cockpit.engine.runs.metrics import ema

from ..model import RunModel, downsample
from ..plot import Figure, PlotCanvas, Series, nice_ticks

SMOOTHING_STEPS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99)
X_AXES = ("iter", "tokens", "time")  # time: the run's active wall time, as `compare` counts it
ZOOMS = (1.0, 0.5, 0.1)  # the share of the run's iterations shown, the newest end
REDRAW_INTERVAL = 1.0  # seconds: the least time between redraws for new data
RESIZE_DELAY = 0.1  # a resize redraws (for the new width) once the size has settled
SPIKE_MARKER = "x"
DASH = "─"  # the reference line is drawn as this marker every DASH_EVERY columns: a dashed line
DASH_EVERY = 2
AUTO_HELLASWAG_HEIGHT = 20  # the pane's rows from which the HellaSwag plot shows by itself (80x24: 14)


# --------------------------------------------------------------------------- curves of one run


@dataclass
class Curves:
    """One run's plotted lines for one view (all x in the view's unit)."""

    train: tuple[list[float], list[float]]
    val: tuple[list[float], list[float]]
    spikes: tuple[list[float], list[float]]


def time_scale(model: RunModel | list[RunModel]) -> tuple[float, str]:
    """Seconds per unit and its name for a wall-time axis: minutes, or hours past two hours."""
    models = model if isinstance(model, list) else [model]
    longest = max((m.steps.elapsed[-1] or 0.0 for m in models if m.steps.elapsed), default=0.0)
    return (3600.0, "hours") if longest > 7200 else (60.0, "minutes")


def first_visible(model: RunModel, zoom: float) -> int:
    """The index of the first bucket in view: the newest `zoom` share of the iterations."""
    iters = model.steps.iters
    if zoom >= 1.0 or len(iters) < 2:
        return 0
    lo = iters[-1] - zoom * (iters[-1] - iters[0])
    return min(bisect_left(iters, lo), len(iters) - 1)


def x_of(model: RunModel, x_axis: str, unit: float = 60.0):
    """Iteration -> x in the view's unit."""
    if x_axis == "tokens":
        return model.tokens_at
    if x_axis == "time":
        return lambda it: model.elapsed_at_iter(it) / unit
    return lambda it: it


def bucket_xs(model: RunModel, x_axis: str, k0: int, unit: float = 60.0) -> list[float]:
    s = model.steps
    if x_axis == "tokens":
        return list(s.tokens[k0:])
    if x_axis == "time":
        return [(e or 0.0) / unit for e in s.elapsed[k0:]]
    return list(s.iters[k0:])


def smoothed(model: RunModel, smoothing: float) -> list[float | None]:
    """The train curve per bucket: bucket means, smoothed from the run's first step (so a zoomed
    view starts where the whole one has it); None where a bucket has no finite loss."""
    s = model.steps
    means = s.means()
    keep = [k for k, v in enumerate(means) if v is not None]
    ys = ema([means[k] for k in keep], smoothing, [s.finite[k] for k in keep])
    out: list[float | None] = [None] * len(means)
    for k, y in zip(keep, ys):
        out[k] = y
    return out


def curves(model: RunModel, *, smoothing: float, log_y: bool, x_axis: str, zoom: float, max_points: int,
           unit: float = 60.0) -> Curves:
    s = model.steps
    k0 = first_visible(model, zoom)
    xs_all = bucket_xs(model, x_axis, k0, unit)

    def usable(y: object) -> bool:
        return isinstance(y, (int, float)) and math.isfinite(y) and (y > 0 or not log_y)

    xs: list[float] = []
    ys: list[float] = []
    if smoothing > 0:
        for x, y in zip(xs_all, smoothed(model, smoothing)[k0:]):
            if usable(y):
                xs.append(x)
                ys.append(y)
    else:  # raw: each bucket's lowest and highest loss (one step: its loss), so spikes show
        for x, k in zip(xs_all, range(k0, len(s))):
            for y in ((s.last[k],) if s.count[k] == 1 else (s.lo[k], s.hi[k])):
                if usable(y):
                    xs.append(x)
                    ys.append(y)
    train = downsample(xs, ys, max_points)

    it_lo = s.iters[k0] if s.iters and k0 > 0 else float("-inf")  # the whole run: evals before its first step too
    to_x = x_of(model, x_axis, unit)
    val = [(to_x(it), v) for it, _, v, _ in model.evals if it >= it_lo and usable(v)]
    val_xy = downsample([p[0] for p in val], [p[1] for p in val], max_points)

    top = max(train[1] + val_xy[1], default=None)  # a spike far above the curves is drawn at their top
    spikes: tuple[list[float], list[float]] = ([], [])
    for a in model.anomalies:
        if a.iter < it_lo or not s.iters:
            continue
        y = a.value if a.kind == "loss_spike" and a.value is not None else model.loss_near(a.iter)
        if not usable(y):
            continue
        spikes[0].append(to_x(a.iter))
        spikes[1].append(min(y, top) if top is not None else y)
    return Curves(train, val_xy, spikes)


def x_ticks(xs: list[float], count: int, x_axis: str) -> tuple[list[float] | None, list[str] | None]:
    if not xs:
        return None, None
    ticks = nice_ticks(min(xs), max(xs), count)
    if x_axis == "tokens":
        return ticks, [fmt_count(t) for t in ticks]
    return ticks, [f"{t:g}" for t in ticks]


# --------------------------------------------------------------------------- the view settings


def view_bindings(show: bool) -> list[Binding]:
    """The keys of `PlotView`'s actions (t, l, [ and ]); `show`: t and l in the Footer."""
    return [
        Binding("t", "toggle_x_axis", "X: iter/tokens/time", show=show,
                tooltip="Loss plot: x by iteration, tokens or active wall time"),
        Binding("l", "toggle_log_scale", "Log scale", show=show, tooltip="Loss plot: linear or log y-axis"),
        Binding("left_square_bracket", "smoothing(-1)", "Less smoothing", show=False),
        Binding("right_square_bracket", "smoothing(1)", "More smoothing", show=False),
    ]


class PlotView:
    """How a loss plot is viewed, the same on the run screen's LossPane and the compare screen
    (a mixin for a Textual widget or screen): the train curve's smoothing, a linear or log
    y-axis and the x-axis (iter, tokens or time), with the rules that cycle them and the
    actions of `view_bindings`' keys. A change calls the node's `view_changed()`, which redraws."""

    smoothing: reactive[float] = reactive(0.6, init=False)  # EMA weight, one of SMOOTHING_STEPS
    log_y: reactive[bool] = reactive(False, init=False)
    x_axis: reactive[str] = reactive("iter", init=False)  # one of X_AXES

    def cycle_smoothing(self, direction: int) -> None:
        """The next smoothing step up (1) or down (-1) from the nearest one, stopping at the ends."""
        steps = SMOOTHING_STEPS
        i = min(range(len(steps)), key=lambda k: abs(steps[k] - self.smoothing))
        self.smoothing = steps[max(0, min(len(steps) - 1, i + direction))]

    def toggle_log(self) -> None:
        self.log_y = not self.log_y

    def toggle_x_axis(self) -> None:
        """iter, tokens, time, then iter again."""
        self.x_axis = X_AXES[(X_AXES.index(self.x_axis) + 1) % len(X_AXES)]

    # the keys' actions, on the node whose bindings are view_bindings()
    action_smoothing = cycle_smoothing
    action_toggle_log_scale = toggle_log
    action_toggle_x_axis = toggle_x_axis

    def view_subtitle(self) -> str:
        """The settings and the key that changes each (fits the pane at 80 columns)."""
        return f"ema {self.smoothing:.2f} [] · {'log' if self.log_y else 'lin'} l · {self.x_axis} t"

    def watch_smoothing(self) -> None:
        self.view_changed()

    def watch_log_y(self) -> None:
        self.view_changed()

    def watch_x_axis(self) -> None:
        self.view_changed()

    def view_changed(self) -> None:
        """A setting changed (on the UI thread): redraw with it and say it."""
        raise NotImplementedError


# --------------------------------------------------------------------------- the pane


class LossPane(PlotView, Vertical):
    """Loss history with adjustable smoothing, log scale, x-axis, zoom, a cursor and lr/grad norm."""

    # the user's view settings (PlotView's too): changing one redraws the plot and its subtitle at once
    zoom: reactive[float] = reactive(1.0, init=False)  # one of ZOOMS
    cursor: reactive[int | None] = reactive(None, init=False)  # the iteration under the cursor, or hidden
    show_aux: reactive[bool] = reactive(False, init=False)  # the lr / grad norm plot
    # the HellaSwag plot: None shows it once the run has a HellaSwag point (and the pane has room);
    # the key decides after that
    show_hellaswag: reactive[bool | None] = reactive(None, init=False)

    def __init__(self, model: RunModel, cpu_share: float = 0.004, max_gap: float = 15.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.cpu_share = cpu_share  # of one core: what redraws for new data may cost at most
        self.max_gap = max_gap  # seconds: the longest new data waits for a redraw
        self.redraws = 0
        self._timer: Timer | None = None
        self._due = 0.0  # when the scheduled redraw runs (time.monotonic())
        self._last_redraw = 0.0
        self._stale = False  # new data arrived since the last redraw
        self._smoothed: list[float | None] = []  # the train curve per bucket, as last drawn
        self._figure_seconds = 0.0  # CPU time the last redraw spent on its figures

    def compose(self) -> ComposeResult:
        yield PlotCanvas(id="loss-canvas")
        yield Static(id="loss-readout", markup=False)
        yield PlotCanvas(id="aux-canvas")
        yield PlotCanvas(id="hellaswag-canvas")

    @property
    def canvas(self) -> PlotCanvas:
        return self.query_one("#loss-canvas", PlotCanvas)

    @property
    def aux_canvas(self) -> PlotCanvas:
        return self.query_one("#aux-canvas", PlotCanvas)

    @property
    def hellaswag_canvas(self) -> PlotCanvas:
        return self.query_one("#hellaswag-canvas", PlotCanvas)

    @property
    def hellaswag_shown(self) -> bool:
        if self.show_hellaswag is not None:
            return self.show_hellaswag
        return bool(self.model.hellaswag) and self.size.height >= AUTO_HELLASWAG_HEIGHT

    @property
    def readout(self) -> Static:
        return self.query_one("#loss-readout", Static)

    def on_mount(self) -> None:
        self.border_title = f"{self.model.name} · loss"
        self.readout.display = False
        self.aux_canvas.display = False
        self.hellaswag_canvas.display = False
        self._update_subtitle()

    def on_resize(self) -> None:
        self._schedule(RESIZE_DELAY)

    # ---------------------------------------------------------------- user settings

    def cycle_zoom(self) -> None:
        self.zoom = ZOOMS[(ZOOMS.index(self.zoom) + 1) % len(ZOOMS)] if self.zoom in ZOOMS else ZOOMS[0]

    def toggle_aux(self) -> None:
        self.show_aux = not self.show_aux

    def toggle_hellaswag(self) -> None:
        self.show_hellaswag = not self.hellaswag_shown

    def move_cursor(self, columns: int) -> None:
        """Show the cursor (at the newest point), or move it by about `columns` plot columns."""
        s = self.model.steps
        if not s.iters:
            return
        k0 = first_visible(self.model, self.zoom)
        if self.cursor is None:
            self.cursor = s.iters[-1]
            return
        k = s.index_near(self.cursor)
        per_column = max(1, round((len(s) - k0) / max(self.canvas.size.width - 8, 10)))
        self.cursor = s.iters[max(k0, min(len(s) - 1, k + columns * per_column))]

    def hide_cursor(self) -> None:
        self.cursor = None

    def view_changed(self) -> None:
        self._update_subtitle()
        self.redraw()

    def watch_zoom(self) -> None:
        if self.cursor is not None:  # keep the cursor in view
            k0 = first_visible(self.model, self.zoom)
            if self.model.steps.iters and self.cursor < self.model.steps.iters[k0]:
                self.cursor = self.model.steps.iters[k0]
        self.view_changed()

    def watch_cursor(self) -> None:
        self.readout.display = self.cursor is not None
        self.view_changed()

    def watch_show_aux(self) -> None:
        self.aux_canvas.display = self.show_aux
        self.view_changed()

    def watch_show_hellaswag(self) -> None:
        self.view_changed()  # redraw() shows or hides its canvas

    def _update_subtitle(self) -> None:
        zoom = "all" if self.zoom >= 1 else f"{self.zoom:.0%}"  # the newest share of the run
        self.border_subtitle = f"{self.view_subtitle()} · {zoom} z"

    # ---------------------------------------------------------------- drawing

    def redraw_cost(self) -> float:
        """CPU seconds the last redraw took on the UI thread: its figures, and painting them
        (plotext's drawing and Textual's rendering of it)."""
        cost = self._figure_seconds + self.canvas.paint_seconds
        if self.show_aux:
            cost += self.aux_canvas.paint_seconds
        if self.hellaswag_canvas.display:
            cost += self.hellaswag_canvas.paint_seconds
        return cost

    def redraw_gap(self) -> float:
        """The least time between two redraws for new data (see the module's docstring)."""
        return min(self.max_gap, max(REDRAW_INTERVAL, self.redraw_cost() / self.cpu_share))

    def set_budget(self, cpu_share: float, max_gap: float) -> None:
        """A new CPU budget for redraws with new data; one already scheduled keeps its time."""
        self.cpu_share, self.max_gap = cpu_share, max_gap

    def data_changed(self) -> None:
        """New points arrived: the next `catch_up` draws them (the first points at once)."""
        self._stale = True
        if not self.canvas.figure.points:
            self._schedule(0)

    def catch_up(self, now: float, slack: float = 0.0, urgent: bool = False) -> bool:
        """The status pane is showing new figures (at `now`, time.monotonic()): draw the new
        points with them if the budget allows a redraw now (`redraw_gap()` since the last, less
        `slack` seconds: the run screen passes half its poll interval, the nearest tick). An
        `urgent` repaint (an eval, a checkpoint, a state change: events that come far apart)
        takes the plot along once half its gap has passed. True if it redrew."""
        gap = self.redraw_gap()
        if urgent:
            slack = max(slack, gap / 2)
        if not self._stale or now < self._last_redraw + gap - slack:
            return False
        self.redraw(now)
        return True

    def _schedule(self, delay: float) -> None:
        """One redraw in `delay` seconds, or sooner if one is scheduled already."""
        delay = max(0.02, delay)  # 0 would not be a timer
        if self._timer is not None:
            if self._due <= time.monotonic() + delay:
                return
            self._timer.stop()
        self._due = time.monotonic() + delay
        self._timer = self.set_timer(delay, self.redraw)

    def redraw(self, now: float | None = None) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        started = time.thread_time()
        self._last_redraw = time.monotonic() if now is None else now
        self._stale = False
        self.redraws += 1
        width = self.canvas.size.width or 100
        hellaswag = self.hellaswag_shown
        if self.hellaswag_canvas.display != hellaswag:  # the first HellaSwag point brings its plot
            self.hellaswag_canvas.display = hellaswag
        loss = self.build_figure(max_points=2 * width, ticks=max(3, width // 12))
        self.canvas.show(loss)
        if self.show_aux:
            self.aux_canvas.show(self.build_aux_figure(max_points=2 * width, ticks=max(3, width // 12)))
        if hellaswag:
            xs = [x for series in loss.series for x in series.xs]
            self.hellaswag_canvas.show(self.build_hellaswag_figure(
                width, ticks=max(3, width // 12), x_range=(min(xs), max(xs)) if xs else None))
        if self.cursor is not None:
            self.readout.update(self.readout_text())
        self._figure_seconds = time.thread_time() - started

    def build_figure(self, max_points: int, ticks: int = 5) -> Figure:
        m = self.model
        unit, unit_name = time_scale(m)
        c = curves(m, smoothing=self.smoothing, log_y=self.log_y, x_axis=self.x_axis, zoom=self.zoom,
                   max_points=max_points, unit=unit)
        series = [Series("train", *c.train, color="primary")]
        if c.val[0]:
            series.append(Series("val", *c.val, color="warning", marker="dot", scatter=True))
        if c.spikes[0]:
            series.append(Series("spike", *c.spikes, color="error", marker=SPIKE_MARKER, scatter=True))
        v_lines = []
        if self.cursor is not None and m.steps.iters:
            x = x_of(m, self.x_axis, unit)(self.cursor)
            v_lines.append((x, "accent"))
            y = self._curve_at(self.cursor)
            if y is not None and (y > 0 or not self.log_y):
                series.append(Series("", [x], [y], color="accent", marker="dot", scatter=True))
        tick_pos, labels = x_ticks(c.train[0] + c.val[0], ticks, self.x_axis)
        x_label = axis_label(self.x_axis, unit_name)
        if self.show_aux or self.hellaswag_shown:  # the plot underneath shows the x axis for both
            tick_pos, labels, x_label = [], [], ""
        return Figure(series, log_y=self.log_y, x_label=x_label, x_ticks=tick_pos, x_tick_labels=labels,
                      v_lines=v_lines, empty_text="waiting for the first logged step…")

    def build_aux_figure(self, max_points: int, ticks: int = 5) -> Figure:
        """Learning rate and gradient norm, each divided by its largest value in view (their
        scales differ by orders of magnitude); the legend says what 1 is."""
        m, s = self.model, self.model.steps
        unit, unit_name = time_scale(m)
        k0 = first_visible(m, self.zoom)
        xs = bucket_xs(m, self.x_axis, k0, unit)
        series = []
        for label, values, color in (("lr", s.lr[k0:], "success"), ("grad norm", s.grad_norm[k0:], "secondary")):
            pts = [(x, v) for x, v in zip(xs, values) if v is not None]
            top = max((v for _, v in pts), default=0.0)
            if not pts or top <= 0:
                continue
            dx, dy = downsample([p[0] for p in pts], [p[1] / top for p in pts], max_points)
            series.append(Series(f"{label} ÷ {fmt_lr(top) if label == 'lr' else f'{top:.3g}'}", dx, dy, color=color))
        v_lines = []
        if self.cursor is not None and s.iters:
            v_lines.append((x_of(m, self.x_axis, unit)(self.cursor), "accent"))
        tick_pos, labels = x_ticks(xs, ticks, self.x_axis)  # (no axis label: the subtitle names x)
        if self.hellaswag_shown:  # the HellaSwag plot under this one shows them
            tick_pos, labels = [], []
        return Figure(series, x_ticks=tick_pos, x_tick_labels=labels, y_ticks=[0, 0.5, 1],
                      y_tick_labels=["0", ".5", "1"], v_lines=v_lines, empty_text="no lr or gradient norm logged")

    def build_hellaswag_figure(self, width: int, ticks: int = 5,
                               x_range: tuple[float, float] | None = None) -> Figure:
        """HellaSwag acc_norm per evaluation in view (a line through its points), and the acc_norm of
        the GPT-2 size nearest the model as a dashed line across `x_range` (the loss plot's, so the
        two plots line up), labelled with its name."""
        m, s = self.model, self.model.steps
        unit, _ = time_scale(m)
        k0 = first_visible(m, self.zoom)
        it_lo = s.iters[k0] if s.iters and k0 > 0 else float("-inf")
        to_x = x_of(m, self.x_axis, unit)
        points = [(to_x(it), acc_norm) for it, _, acc_norm in m.hellaswag if it >= it_lo and acc_norm is not None]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        series = []
        ref = m.hellaswag_reference
        if points:  # one legend row (the plot may have two rows of its own at 80x24), cut to fit the plot
            label = ("HellaSwag acc_norm" if width >= 60 else "acc_norm") \
                + (f"  {DASH} {DASH} {ref[0]} {ref[1]:.4f}" if ref is not None else "")
            series += [Series(label, xs, ys, color="success"),
                       Series("", xs, ys, color="success", marker="dot", scatter=True)]
        lo, hi = x_range if x_range is not None else (min(xs, default=0.0), max(xs, default=0.0))
        lo, hi = min([lo] + xs), max([hi] + xs)
        if ref is not None and points:
            dashes = max(2, (width - 8) // DASH_EVERY)  # about one every DASH_EVERY columns of the plot
            dash_xs = [lo + (hi - lo) * k / (dashes - 1) for k in range(dashes)]
            series.append(Series("", dash_xs, [ref[1]] * dashes, color="warning", marker=DASH, scatter=True))
        v_lines = []
        if self.cursor is not None and s.iters:
            v_lines.append((to_x(self.cursor), "accent"))
        y_values = ys + ([ref[1]] if ref is not None and points else [])
        y_ticks = nice_ticks(min(y_values), max(y_values), 3) if y_values else None
        tick_pos, labels = x_ticks([lo, hi] if points else [], ticks, self.x_axis)
        return Figure(series, x_ticks=tick_pos, x_tick_labels=labels, x_lim=(lo, hi) if points else None,
                      y_ticks=y_ticks, y_tick_labels=[f"{t:.3g}" for t in y_ticks] if y_ticks else None,
                      v_lines=v_lines, empty_text="no HellaSwag evaluation yet (train.hellaswag_interval)")

    def _curve_at(self, it: int) -> float | None:
        """The plotted train value at the bucket nearest `it` (smoothed, or the raw loss)."""
        s = self.model.steps
        k = s.index_near(it)
        if k is None:
            return None
        if self.smoothing > 0:
            return smoothed(self.model, self.smoothing)[k]
        return s.last[k]

    def readout_text(self) -> str:
        """The cursor's point: iteration, tokens, train loss (raw and as drawn), val loss (the
        latest eval at or before it), learning rate and gradient norm."""
        m, s = self.model, self.model.steps
        k = s.index_near(self.cursor) if self.cursor is not None else None
        if k is None:
            return ""
        p = s.point(k)
        where = [f"iter {p.iter}", f"lr {fmt_lr(p.lr)}"]
        if p.grad_norm is not None:
            where.append(f"grad {p.grad_norm:.3g}")
        where.append(f"{fmt_count(p.tokens)} tok")
        train = f"loss {fmt_float(p.loss)}"
        if self.smoothing > 0:
            train += f" (ema {fmt_float(self._curve_at(p.iter))})"
        val = m.val_at(p.iter)
        losses = [train, f"val {fmt_float(val[1])} @{val[0]}" if val else "val N/A"]
        if p.steps > 1:  # a bucket of many steps: its range
            losses.append(f"{fmt_float(p.loss_min, 3)}–{fmt_float(p.loss_max, 3)} over {p.steps} steps")
        # two lines, each cut to the pane's width (the least needed part of each comes last)
        return " · ".join(where) + "\n" + " · ".join(losses)


def axis_label(x_axis: str, unit_name: str) -> str:
    return {"tokens": "tokens", "time": f"wall time ({unit_name})"}.get(x_axis, "iter")
