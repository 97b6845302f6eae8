"""The compare screen, driven with Pilot: mark runs on the home screen, open compare, read the
table, the differing config keys, the best-run line and the overlaid curves."""

from __future__ import annotations

import sys

import pytest
from fakerun import FakeRun, make_run, run_app, wait_for

from gpt2_cockpit.engine.runs import metrics
from gpt2_cockpit.tui.app import make_app
from gpt2_cockpit.tui.screens.compare import CompareScreen, load_run, run_color
from gpt2_cockpit.tui.screens.home import HomeScreen, RunsTable

NO_DOCTOR = [sys.executable, "-c", "print('[]')"]


@pytest.fixture
def sweep(home_dir):
    """Three finished runs of one preset, differing in learning rate; lr-3e-3 learns best."""
    made = []
    for name, lr, offset, steps in (("lr-1e-3", "1e-3", 0.2, 30), ("lr-3e-3", "3e-3", 0.0, 25),
                                    ("lr-3e-4", "3e-4", 0.5, 30)):
        f = FakeRun(make_run(name=name, overrides=[f"train.learning_rate={lr}", "train.eval_interval=50"]),
                    loss_offset=offset)
        f.history(steps)
        f.events.emit("state", state="done", reason="max_iters reached")
        f.close()
        made.append(f)
    return made


@pytest.fixture
def home_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def open_compare(pilot, app, names: list[str]) -> CompareScreen:
    home = app.screen
    assert isinstance(home, HomeScreen)
    table = home.query_one(RunsTable)
    await wait_for(pilot, lambda: table.row_count == 3, what="the runs table")
    table.focus()
    for name in names:
        row = next(i for i in range(table.row_count) if table.get_row_at(i)[1] == name)
        table.move_cursor(row=row, animate=False)
        await pilot.press("space")
    await pilot.press("m")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="the compare screen")
    screen = app.screen
    await wait_for(pilot, lambda: screen.runs and screen.canvas.figure.points > 0, what="the compared runs")
    return screen


def test_space_marks_runs_and_m_opens_compare_with_curves_table_and_best_run(sweep):
    app = make_app("home", doctor_argv=NO_DOCTOR)

    @run_app(app, size=(80, 24))
    async def _(pilot):
        home = app.screen
        table = home.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        table.focus()
        assert home.check_action("compare", ()) is None  # dimmed: nothing marked
        await pilot.press("space")
        assert len(home.marked) == 1 and "1 marked" in table.border_subtitle
        assert str(table.get_row_at(table.cursor_row)[0]) == "●"
        await pilot.press("space")  # space again unmarks
        assert home.marked == [] and str(table.get_row_at(table.cursor_row)[0]) == " "
        names = {c.title for c in app.get_system_commands(home)}
        assert "Compare" not in names  # the palette offers it once two runs are marked

        screen = await open_compare(pilot, app, ["lr-3e-4", "lr-1e-3", "lr-3e-3"])
        assert [c.run.name for c in screen.runs] == ["lr-1e-3", "lr-3e-3", "lr-3e-4"]  # sorted: stable colours

        # the table: a column per run, the figures metrics computes, then the keys that differ
        rows = dict(screen.rows())
        expected = {f.run.name: metrics.load(f.run).stats for f in sweep}
        order = [c.run.name for c in screen.runs]
        assert rows["state · iters"] == [f"done {expected[n].iter}/{expected[n].max_iters}" for n in order] == \
            ["done 300/2000", "done 250/2000", "done 300/2000"]
        assert rows["best val @iter"] == [f"{expected[n].best_val_loss:.4f} @{expected[n].best_val_iter}"
                                          for n in order]
        assert rows["last train loss"] == [f"{expected[n].last_train_loss:.4f}" for n in order]
        assert rows["tokens · tok/s"] == ["230k · 25k", "192k · 25k", "230k · 25k"]
        assert rows["train.learning_rate"] == ["0.001", "0.003", "0.0003"]
        assert "train.max_iters" not in rows and "model.n_layer" not in rows  # the same in every run
        table_keys = [row.key.value for row in screen.table.rows.values()]
        assert "train.learning_rate" in table_keys and len(screen.table.columns) == 4

        # one line says which run is best, and why it differs
        best = min(expected.values(), key=lambda s: s.best_val_loss)
        assert best.name == "lr-3e-3"
        line = str(screen.query_one("#compare-best").render())
        assert "best val loss: lr-3e-3" in line and "train.learning_rate = 0.003" in line
        assert f"{best.best_val_loss:.4f}" in line

        # the curves: each run's train line and val dots in its own colour
        series = screen.canvas.figure.series
        by_name = {s.label: s for s in series}
        for i, c in enumerate(screen.runs):
            train, val = by_name[c.run.name], by_name[f"{c.run.name} val"]
            assert train.color == val.color == run_color(i) == c.color
            assert train.xs[-1] == expected[c.run.name].iter
            assert val.xs == [e.iter for e in metrics.load(c.run).evals]
        assert len({c.color for c in screen.runs}) == 3
        legend = screen.query_one("#compare-plot").border_title
        assert all(c.run.name in legend for c in screen.runs)

        # x by tokens, then active wall time, then back; log scale
        await pilot.press("t")
        assert screen.canvas.figure.x_label == "tokens"
        assert by_name["lr-1e-3"].xs[-1] * 768 == screen.canvas.figure.series[0].xs[-1]
        await pilot.press("t")
        assert screen.canvas.figure.x_label.startswith("wall time")
        await pilot.press("t", "l")
        assert screen.canvas.figure.x_label == "iter" and screen.canvas.figure.log_y
        assert "log l" in screen.query_one("#compare-plot").border_subtitle

        await pilot.press("escape")
        assert isinstance(app.screen, HomeScreen)


def test_the_same_runs_get_the_same_colours_whatever_the_marking_order(sweep):
    app = make_app("home", doctor_argv=NO_DOCTOR)

    @run_app(app, size=(160, 48))
    async def _(pilot):
        first = await open_compare(pilot, app, ["lr-3e-4", "lr-1e-3"])
        colours = {c.run.name: c.color for c in first.runs}
        await pilot.press("escape")
        home = app.screen
        for _ in list(home.marked):  # unmark both
            home.toggle_mark(home.marked[0])
        second = await open_compare(pilot, app, ["lr-1e-3", "lr-3e-4"])
        assert {c.run.name: c.color for c in second.runs} == colours


def test_compare_and_the_run_screen_share_the_plot_view_keys_and_rules(sweep):
    """One PlotView (widgets/loss_plot.py) on both: [ and ] step the smoothing and stop at the
    ends, t cycles iter/tokens/time, l toggles log; the subtitle says it the same way."""
    from gpt2_cockpit.tui.screens.run import RunScreen
    from gpt2_cockpit.tui.widgets.loss_plot import SMOOTHING_STEPS, LossPane, PlotView

    assert issubclass(CompareScreen, PlotView) and issubclass(LossPane, PlotView)
    keys = {key: b[0].action for key, b in CompareScreen._merged_bindings.key_to_bindings.items()}
    run_keys = {key: b[0].action for key, b in RunScreen._merged_bindings.key_to_bindings.items()}
    for key in ("t", "l", "left_square_bracket", "right_square_bracket"):
        assert keys[key] == run_keys[key]
    app = make_app("home", doctor_argv=NO_DOCTOR)

    @run_app(app, size=(100, 30))
    async def _(pilot):
        screen = await open_compare(pilot, app, ["lr-1e-3", "lr-3e-3"])
        subtitle = lambda: screen.query_one("#compare-plot").border_subtitle  # noqa: E731
        assert screen.smoothing == 0.6 and subtitle() == "ema 0.60 [] · lin l · iter t"
        smoothed = screen.canvas.figure.series[0].ys
        await pilot.press(*["right_square_bracket"] * (len(SMOOTHING_STEPS) + 1))
        assert screen.smoothing == SMOOTHING_STEPS[-1] and "ema 0.99" in subtitle()
        await pilot.press(*["left_square_bracket"] * (len(SMOOTHING_STEPS) + 1))
        assert screen.smoothing == 0.0 and screen.canvas.figure.series[0].ys != smoothed  # raw now
        await pilot.press("t", "t", "l")
        assert subtitle() == "ema 0.00 [] · log l · time t" and screen.canvas.figure.log_y
        await pilot.press("t")
        assert screen.x_axis == "iter"


def test_palette_offers_compare_once_two_runs_are_marked(sweep):
    app = make_app("home", doctor_argv=NO_DOCTOR)

    @run_app(app)
    async def _(pilot):
        home = app.screen
        table = home.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        for f in sweep[:2]:
            home.toggle_mark(str(f.run.path))
        assert "2 marked" in table.border_subtitle
        commands = {c.title: c for c in app.get_system_commands(home)}
        assert "Compare" in commands and "Mark" not in commands  # Mark belongs to the focused table
        await commands["Compare"].callback()
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))


def test_compare_saves_an_svg_screenshot_where_it_says(sweep, home_dir):
    app = make_app("home", doctor_argv=NO_DOCTOR)
    told = []
    notify = app.notify
    app.notify = lambda message, **kw: (told.append(message), notify(message, **kw))

    @run_app(app, size=(80, 24))
    async def _(pilot):
        await open_compare(pilot, app, ["lr-1e-3", "lr-3e-3"])
        await pilot.press("v")
        svgs = list(home_dir.glob("compare-*.svg"))
        assert len(svgs) == 1 and "<svg" in svgs[0].read_text()[:200]
        assert any(str(svgs[0].name) in m for m in told)


@pytest.mark.parametrize("chunk_bytes", [4096, 8 << 20])  # many small batches, or one
def test_the_figures_decode_few_steps_and_match_the_whole_log(home_dir, chunk_bytes):
    """The compare screen's figures (a LogFold that decodes of each run of steps its first and
    its last RECENT_STEPS) are those of every event decoded, however long the run (a restart from
    an earlier checkpoint included)."""
    from gpt2_cockpit.engine.runs.events import LogReader, read_all

    f = FakeRun(make_run(name="long"))
    f.history(150)
    f.events.emit("state", state="stopped", reason="stop requested")
    f.events.emit("state", state="preparing", reason="resuming")
    f.events.emit("run", name="long", preset="cpu-tiny", engine="pretrain", config={}, device="cpu", world_size=1,
                  resumed_from=1000)
    f.events.emit("state", state="running", reason="")
    f.iter = 1000
    for _ in range(60):
        f.step()
    f.events.emit("state", state="done", reason="max_iters reached")
    f.close()
    thin = metrics.LogFold(every_step=False)
    for batch in LogReader(f.run.events_path, chunk_bytes=chunk_bytes).batches():
        thin.add(batch)
    whole = metrics.load(f.run, read_all(f.run.events_path)).stats
    assert metrics.load(f.run).stats == whole  # the fast reader, every step decoded
    assert thin.metrics(f.run).stats == whole and whole.iter == 1600
    if chunk_bytes > 1 << 20:  # (a small read holds few steps: it decodes them all)
        assert len(thin.rows.steps) < len(metrics.load(f.run).steps)  # fewer steps decoded
    c = load_run(f.run, "primary")
    assert c.stats == whole and c.model.iter == 1600
    assert c.model.iters == list(range(10, 1601, 10))  # the first 1010..1500 superseded by the restart


def test_a_live_run_keeps_moving_on_the_compare_screen(sweep, monkeypatch):
    from gpt2_cockpit.tui.screens import compare

    monkeypatch.setattr(compare, "REFRESH", 0.05)
    live = FakeRun(make_run(name="live", overrides=["train.learning_rate=2e-3"]), step_every=0.02)
    live.history(5)
    live.start()
    app = make_app("compare", runs=[str(live.run.path), str(sweep[0].run.path)], doctor_argv=NO_DOCTOR)
    try:
        @run_app(app, size=(80, 24))
        async def _(pilot):
            screen = app.screen
            assert isinstance(screen, CompareScreen)
            await wait_for(pilot, lambda: screen.runs, what="the runs")
            first = next(c for c in screen.runs if c.run.name == "live").stats.iter
            await wait_for(pilot, lambda: next(c for c in screen.runs if c.run.name == "live").stats.iter >= first + 50,
                           what="new steps in the table")
            live_curve = next(s for s in screen.canvas.figure.series if s.label == "live")
            await wait_for(pilot, lambda: next(s for s in screen.canvas.figure.series if s.label == "live").xs[-1]
                           >= first + 50, what="new steps on the plot")
            assert live_curve.color == run_color(0)  # "live" sorts before "lr-1e-3"
            assert dict(screen.rows())["state · iters"][0].startswith("running")
    finally:
        live.close()
