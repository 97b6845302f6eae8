"""The compare screen: several runs' loss curves overlaid, one colour per run, and a table of
their figures (HellaSwag's best acc_norm too, where a run scored it) and the config keys that
differ, with one line naming the run with the best val loss. The figures are engine/runs/metrics.py's
(the same as `gpt2-cockpit compare`); the curves are each run's RunModel, replayed from its log
as the run screen does (bounded, so a week-long log costs what a short one does).

Data flow: a thread worker reads each log (`load_run`) and posts `CompareLoaded`; later looks
(every few seconds while a run is live) read only what the logs gained and post
`CompareUpdated`, whose new events the screen folds into its models. The worker owns the
readers and each run's metrics.LogFold (the figures, folded as the log is read); the screen owns
the models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import Worker, WorkerState

from gpt2_cockpit.engine.fmt import NA, fmt_count, fmt_duration, fmt_float
from gpt2_cockpit.engine.runs import metrics
from gpt2_cockpit.engine.runs.rundir import RunDir

from ..feed import LogReader, replay
from ..model import RunModel
from ..plot import Figure, PlotCanvas, Series
from ..widgets.dialogs import value_text
from ..widgets.loss_plot import PlotView, SPIKE_MARKER, axis_label, curves, time_scale, view_bindings, x_ticks

# One colour per run, by the run's place among the compared runs sorted by name (so the same
# runs get the same colours every time). Theme variables, so the plot follows the theme.
RUN_COLORS = ("primary", "warning", "success", "error", "foreground", "text-secondary")
REFRESH = 5.0  # seconds between looks at the logs while a compared run is live


def run_color(index: int) -> str:
    return RUN_COLORS[index % len(RUN_COLORS)]


# --------------------------------------------------------------------------- reading the runs


@dataclass
class Compared:
    """One run being compared. `reader` and `log` belong to the worker, `model` to the screen."""

    run: RunDir
    color: str
    reader: LogReader
    model: RunModel
    log: metrics.LogFold = field(default_factory=lambda: metrics.LogFold(every_step=False))  # its figures
    stats: metrics.RunStats | None = None


def load_run(run: RunDir, color: str) -> Compared:
    """Replay one run's log into a new RunModel and its figures (blocking: call from a worker)."""
    c = Compared(run, color, LogReader(run.events_path), RunModel(run.name))
    replay(c.reader, c.model, also=c.log.add)
    c.stats = c.log.metrics(run).stats
    return c


class CompareLoaded(Message):
    def __init__(self, runs: list[Compared]) -> None:
        super().__init__()
        self.runs = runs


class CompareUpdated(Message):
    """New events of each run (in the screen's order) and its figures now."""

    def __init__(self, new: list[list[Any]], stats: list[metrics.RunStats]) -> None:
        super().__init__()
        self.new = new
        self.stats = stats


# --------------------------------------------------------------------------- the screen


class CompareScreen(PlotView, Screen):
    AUTO_FOCUS = ""
    BINDINGS = [
        *view_bindings(show=True),  # t, l, [ and ]: PlotView's actions
        Binding("v", "screenshot", "Save SVG", tooltip="Save this screen as an SVG file in the current folder"),
        Binding("r", "refresh", "Refresh", show=False, tooltip="Read the runs' logs again"),
        Binding("escape,h", "back", "Back", tooltip="Back to the runs"),
    ]

    def __init__(self, runs: list[RunDir]) -> None:
        super().__init__()
        self.run_dirs = sorted(runs, key=lambda r: r.name)
        self.runs: list[Compared] = []
        self.differ: dict[str, dict[str, Any]] = {}
        self.best: metrics.RunStats | None = None
        self.best_hellaswag: metrics.RunStats | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-plot"):  # the legend is its border title
            yield PlotCanvas(id="compare-canvas")
        yield Static(id="compare-best")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=False, show_cursor=False)
        yield Footer(compact=True)

    @property
    def canvas(self) -> PlotCanvas:
        return self.query_one("#compare-canvas", PlotCanvas)

    @property
    def table(self) -> DataTable:
        return self.query_one("#compare-table", DataTable)

    def on_mount(self) -> None:
        self.sub_title = "compare " + ", ".join(r.name for r in self.run_dirs)
        self.query_one("#compare-plot").border_title = f"loss of {len(self.run_dirs)} runs"
        self.table.border_title = "runs"
        self._update_subtitle()
        self.query_one("#compare-best", Static).update(Text("reading the runs' logs…", style="italic"))
        # the table's and legend's run colours are the theme's: a new theme paints them again
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._figures_changed() if self.runs else None)
        self._load()

    # ---------------------------------------------------------------- data

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare")
    def _load(self) -> None:
        self.post_message(CompareLoaded([load_run(r, run_color(i)) for i, r in enumerate(self.run_dirs)]))

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare")
    def _look_again(self) -> None:
        new, stats = [], []
        for c in self.runs:
            items = c.reader.poll()
            c.log.add(items)
            new.append(items)
            stats.append(c.log.metrics(c.run).stats)
        self.post_message(CompareUpdated(new, stats))

    def on_compare_loaded(self, message: CompareLoaded) -> None:
        self.runs = message.runs
        self._figures_changed()
        self._schedule()

    def on_compare_updated(self, message: CompareUpdated) -> None:
        for c, items, stats in zip(self.runs, message.new, message.stats):
            if items:
                c.model.ingest(items)
            c.stats = stats
        self._figures_changed()
        self._schedule()

    def _schedule(self) -> None:
        if any(c.stats and c.stats.state in ("running", "paused", "preparing", "stopping") for c in self.runs):
            self.set_timer(REFRESH, self._look_again)  # re-armed only after a look was handled

    def action_refresh(self) -> None:
        if self.runs:
            self._look_again()

    def _figures_changed(self) -> None:
        stats = [c.stats for c in self.runs if c.stats is not None]
        self.differ = metrics.config_diff({s.name: s.config for s in stats}, {s.name: s.changes for s in stats})
        self.best = metrics.best_run(stats)
        self.best_hellaswag = metrics.best_hellaswag_run(stats)
        self.show_table()
        self.show_best()
        self.show_legend()
        self.redraw()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.query_one("#compare-best", Static).update(Content.styled(f"could not read the runs: {error}", "bold $error"))
            self.notify(f"{error.__class__.__name__}: {error}", title="compare failed", severity="error")

    # ---------------------------------------------------------------- table, best line, legend

    def rows(self) -> list[tuple[str, list[str]]]:
        """(label, one cell per run): the figures, then the config keys that differ."""
        runs = [c.stats for c in self.runs]

        def each(fmt) -> list[str]:
            return [fmt(s) if s is not None else NA for s in runs]

        rows = [  # paired figures share a row, so the table and the plot fit 80x24 together
            ("state · iters", each(lambda s: f"{s.state} {s.iter}/{s.max_iters}")),
            ("best val @iter", each(lambda s: f"{fmt_float(s.best_val_loss)} @{s.best_val_iter}"
                                    if s.best_val_loss is not None else NA)),
            *((("best acc_norm @iter", each(lambda s: f"{fmt_float(s.best_acc_norm)} @{s.best_acc_norm_iter}"
                                             if s.best_acc_norm is not None else NA)),)
              if self.best_hellaswag else ()),  # HellaSwag, where a run scored it
            ("last train loss", each(lambda s: fmt_float(s.last_train_loss))),
            ("tokens · tok/s", each(lambda s: f"{fmt_count(s.tokens)} · {fmt_count(s.tokens_per_sec)}")),
            ("wall time", each(lambda s: fmt_duration(s.wall_seconds))),
        ]
        for key, values in self.differ.items():  # "0.001 → 0.0003 @70" where a run changed it on the way
            rows.append((key, [metrics.value_history(values.get(s.name), s.changes, key) if s else NA for s in runs]))
        return rows

    def show_table(self) -> None:
        table = self.table
        table.clear(columns=True)
        best = self.best.name if self.best else None
        table.add_column("", key="label")
        for c in self.runs:
            mark = "★ " if c.run.name == best else ""
            table.add_column(Text(mark + c.run.name, style=f"bold {self._rgb(c.color)}"), key=c.run.name)
        for label, cells in self.rows():
            is_key = label in self.differ
            styled = [Text(label, style="bold" if is_key else "")]
            for c, cell in zip(self.runs, cells):
                style = ""
                if label == "best val @iter" and c.run.name == best:
                    style = "bold"
                elif label == "best acc_norm @iter" and self.best_hellaswag and c.run.name == self.best_hellaswag.name:
                    style = "bold"
                elif is_key:
                    style = self._rgb(c.color)
                styled.append(Text(cell, style=style))
            table.add_row(*styled, key=label)

    def best_text(self) -> str:
        if not self.runs:
            return ""
        if self.best is None:
            return "best val loss: none of these runs has evaluated yet"
        b = self.best
        why = ", ".join(f"{k} = {value_text(v[b.name]) if v.get(b.name) is not None else '-'}"
                        for k, v in list(self.differ.items())[:2] if k != "name")
        others = sorted((c.stats for c in self.runs if c.stats and c.stats.best_val_loss is not None
                         and c.stats.name != b.name), key=lambda s: s.best_val_loss)
        text = f"★ best val loss: {b.name} {fmt_float(b.best_val_loss)} @{b.best_val_iter}"
        if why:
            text += f" ({why})"
        if others:  # the runner-up, where it fits on the line
            runner_up = f" · next {others[0].name} {fmt_float(others[0].best_val_loss)}"
            if len(text) + len(runner_up) <= (self.size.width or 80) - 2:
                text += runner_up
        if not self.differ:
            text += " · the configs are the same"
        return text

    def show_best(self) -> None:
        color = next((c.color for c in self.runs if self.best and c.run.name == self.best.name), "foreground")
        self.query_one("#compare-best", Static).update(Text(self.best_text(), style=f"bold {self._rgb(color)}"))

    def show_legend(self) -> None:
        """The plot pane's title: each run's name after a stroke of its colour."""
        parts: list[tuple[str, str] | str] = []
        for c in self.runs:
            parts += [("━━", f"bold ${c.color}"), f" {c.run.name}  "]
        parts.append(("line train · dots val", "$text-muted"))
        self.query_one("#compare-plot").border_title = Content.assemble(*parts)

    def _rgb(self, variable: str) -> str:
        return self.app.theme_variables.get(variable) or "white"

    # ---------------------------------------------------------------- plot

    def redraw(self) -> None:
        width = self.canvas.size.width or 100
        self.canvas.show(self.build_figure(max_points=2 * width, ticks=max(3, width // 12)))

    def build_figure(self, max_points: int, ticks: int = 5) -> Figure:
        unit, unit_name = time_scale([c.model for c in self.runs])
        series, all_x = [], []
        for c in self.runs:
            cv = curves(c.model, smoothing=self.smoothing, log_y=self.log_y, x_axis=self.x_axis, zoom=1.0,
                        max_points=max_points, unit=unit)
            series.append(Series(c.run.name, *cv.train, color=c.color))
            if cv.val[0]:
                series.append(Series(f"{c.run.name} val", *cv.val, color=c.color, marker="dot", scatter=True))
            if cv.spikes[0]:
                series.append(Series(f"{c.run.name} spike", *cv.spikes, color=c.color, marker=SPIKE_MARKER,
                                     scatter=True))
            all_x += cv.train[0] + cv.val[0]
        tick_pos, labels = x_ticks(all_x, ticks, self.x_axis)
        return Figure(series, log_y=self.log_y, x_label=axis_label(self.x_axis, unit_name), x_ticks=tick_pos,
                      x_tick_labels=labels, legend=False,
                      empty_text="reading the runs' logs…" if not self.runs else "no logged steps in these runs")

    def on_resize(self) -> None:
        if self.runs:
            self.show_best()
            self.redraw()

    def _update_subtitle(self) -> None:
        self.query_one("#compare-plot").border_subtitle = self.view_subtitle()

    def view_changed(self) -> None:
        self._update_subtitle()
        if self.runs:
            self.redraw()

    # ---------------------------------------------------------------- keys (t, l, [ and ]: PlotView's)

    def action_screenshot(self) -> None:
        name = f"compare-{'-'.join(r.name for r in self.run_dirs)[:80]}-{time.strftime('%Y%m%d-%H%M%S')}.svg"
        try:
            path = self.app.save_screenshot(name, ".")
        except OSError as e:
            self.notify(f"could not save a screenshot: {e}", severity="error")
            return
        self.notify(path, title="screenshot saved")

    def action_back(self) -> None:
        self.app.pop_screen()
