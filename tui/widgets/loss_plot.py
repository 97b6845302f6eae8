"""The loss pane: train loss per logged step (smoothed) and val loss per eval, over the whole history.

Redraws are coalesced: new data only marks the pane dirty, and at most one redraw runs every
REDRAW_INTERVAL seconds. Series are downsampled to about two points per column first, so a
redraw costs the same for a 200-step run and a 20,000-step one.
"""

from __future__ import annotations

import math
import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.timer import Timer

from gpt2_cockpit.engine.fmt import fmt_count

from ..model import RunModel, downsample, ema
from ..plot import Figure, PlotCanvas, Series, nice_ticks

SMOOTHING_STEPS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99)
REDRAW_INTERVAL = 0.3  # seconds; at most ~3 redraws a second however fast steps arrive


class LossPane(Vertical):
    """Loss history with adjustable smoothing, log scale and iteration/token x-axis."""

    # the user's view settings: changing one redraws the plot and its subtitle at once
    smoothing: reactive[float] = reactive(0.6, init=False)  # EMA weight, one of SMOOTHING_STEPS
    log_y: reactive[bool] = reactive(False, init=False)
    x_axis: reactive[str] = reactive("iter", init=False)  # or "tokens"

    def __init__(self, model: RunModel, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.redraws = 0
        self._timer: Timer | None = None
        self._last_redraw = 0.0

    def compose(self) -> ComposeResult:
        yield PlotCanvas(id="loss-canvas")

    @property
    def canvas(self) -> PlotCanvas:
        return self.query_one(PlotCanvas)

    def on_mount(self) -> None:
        self.border_title = f"{self.model.name} · loss"
        self._update_subtitle()

    def on_resize(self) -> None:
        self.data_changed()

    # ---------------------------------------------------------------- user settings

    def cycle_smoothing(self, direction: int) -> None:
        steps = SMOOTHING_STEPS
        i = min(range(len(steps)), key=lambda k: abs(steps[k] - self.smoothing))
        self.smoothing = steps[max(0, min(len(steps) - 1, i + direction))]

    def toggle_log(self) -> None:
        self.log_y = not self.log_y

    def toggle_x_axis(self) -> None:
        self.x_axis = "tokens" if self.x_axis == "iter" else "iter"

    def _settings_changed(self) -> None:
        self._update_subtitle()
        self.redraw()

    def watch_smoothing(self) -> None:
        self._settings_changed()

    def watch_log_y(self) -> None:
        self._settings_changed()

    def watch_x_axis(self) -> None:
        self._settings_changed()

    def _update_subtitle(self) -> None:
        scale = "log" if self.log_y else "linear"
        self.border_subtitle = f"smooth {self.smoothing:.2f} [ ] · {scale} l · x={self.x_axis} t"

    # ---------------------------------------------------------------- drawing

    def data_changed(self) -> None:
        """New points arrived: schedule one redraw, no sooner than REDRAW_INTERVAL after the last."""
        if self._timer is not None:
            return
        delay = max(0.02, self._last_redraw + REDRAW_INTERVAL - time.monotonic())  # 0 would not be a timer
        self._timer = self.set_timer(delay, self.redraw)

    def redraw(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._last_redraw = time.monotonic()
        self.redraws += 1
        width = self.canvas.size.width or 100
        self.canvas.show(self.build_figure(max_points=2 * width, ticks=max(3, width // 12)))

    def build_figure(self, max_points: int, ticks: int = 5) -> Figure:
        m = self.model
        by_tokens = self.x_axis == "tokens"

        def usable(y: object) -> bool:
            return isinstance(y, (int, float)) and math.isfinite(y) and (y > 0 or not self.log_y)

        train = [(t if by_tokens else i, y) for i, t, y in zip(m.iters, m.tokens, m.losses) if usable(y)]
        xs = [p[0] for p in train]
        ys = ema([p[1] for p in train], self.smoothing)
        xs, ys = downsample(xs, ys, max_points)
        val = [(m.tokens_at(it) if by_tokens else it, v) for it, _, v, _ in m.evals if usable(v)]
        vx, vy = downsample([p[0] for p in val], [p[1] for p in val], max_points)

        series = [Series("train", xs, ys, color="primary")]
        if vx:
            series.append(Series("val", vx, vy, color="warning", marker="dot", scatter=True))
        all_x = xs + vx
        tick_pos = nice_ticks(min(all_x), max(all_x), ticks) if all_x else None
        labels = [fmt_count(t) if by_tokens else f"{t:g}" for t in tick_pos] if tick_pos else None
        return Figure(series, log_y=self.log_y, x_label="tokens" if by_tokens else "iter",
                      x_ticks=tick_pos, x_tick_labels=labels,
                      empty_text="waiting for the first logged step…")
