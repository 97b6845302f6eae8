"""HellaSwag where a user reads it (issue #21): the run screen's status line and curve with the GPT-2
reference as a dashed line, the `notice` of a run that trains without it, the compare screen's and
`gpt2-cockpit compare`'s best acc_norm, `metrics` rows, `plot --metric hellaswag`, the plan's
hours, and a restart that drops the points after its checkpoint. No torch: `hellaswag` events
are written by hand or by a FakeRun, as a run logs them (engine/train/loop.py score_hellaswag)."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest
from fakerun import FakeRun, make_run, run_app, status_text, wait_for

from gpt2_cockpit.cli.main import main
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.machine.planner import GpuSpec, plan_run
from gpt2_cockpit.engine.runs import metrics
from gpt2_cockpit.engine.runs.rundir import RunDir
from gpt2_cockpit.tui.app import make_app
from gpt2_cockpit.tui.model import RunModel
from gpt2_cockpit.tui.screens.compare import CompareScreen
from gpt2_cockpit.tui.widgets.log_pane import LogPane
from gpt2_cockpit.tui.widgets.loss_plot import DASH, LossPane
from gpt2_cockpit.tui.widgets.status import StatusPane

POLL = 0.05
REF = ("GPT-2 124M", 0.2955)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def hellaswag(it: int, acc_norm: float, t: float | None = None) -> dict:
    """A `hellaswag` event as the run logs it."""
    e = {"type": "hellaswag", "iter": it, "acc": round(acc_norm - 0.01, 4), "acc_norm": acc_norm, "n": 10042,
         "seconds": 1.5, "reference": REF[0], "reference_acc_norm": REF[1]}
    return e if t is None else {**e, "time": t}


POINTS = ((0, 0.25), (250, 0.26), (500, 0.271))


def fake_with_hellaswag(steps: int = 50, points=POINTS, notice: str | None = None) -> FakeRun:
    """A live FakeRun of `steps` logged steps (10 iters each) with HellaSwag points at `points`."""
    f = FakeRun(make_run())
    f.start_events()
    if notice:
        f.events.emit("notice", message=notice)
    for _ in range(steps):
        f.step()
    for it, acc_norm in points:
        f.events.emit(**hellaswag(it, acc_norm))
    return f.start()


# --------------------------------------------------------------------------- the run screen


def test_run_screen_shows_the_last_acc_norm_with_the_reference_and_the_curve_with_a_dashed_line():
    f = fake_with_hellaswag()
    app = make_app("run", str(f.run.path), poll_interval=POLL)
    try:
        @run_app(app, size=(160, 48))
        async def _(pilot):
            loss = app.screen.query_one(LossPane)
            canvas = loss.hellaswag_canvas
            await wait_for(pilot, lambda: canvas.display and canvas.figure.points > 0, what="the HellaSwag plot")
            assert "hella 0.271 · GPT-2 124M 0.2955" in status_text(app)
            curve, points, dashes = canvas.figure.series
            assert curve.xs == [0, 250, 500] and curve.ys == [0.25, 0.26, 0.271]
            assert "HellaSwag acc_norm" in curve.label and "GPT-2 124M 0.2955" in curve.label
            assert points.scatter and points.xs == curve.xs
            # the reference: a dash every other column, across the loss plot's range (the plots line up)
            assert dashes.scatter and dashes.marker == DASH and set(dashes.ys) == {0.2955}
            assert len(dashes.xs) >= canvas.size.width // 3 and (dashes.xs[0], dashes.xs[-1]) == (0, 500)
            assert canvas.figure.x_lim == (0, 500)
            assert canvas.size.height >= 5 and loss.canvas.size.height >= 10
            assert loss.canvas.figure.x_ticks == [] and canvas.figure.x_ticks  # the bottom plot shows x
            await pilot.press("t")  # x by tokens, both plots
            await pilot.pause(0.05)
            per_iter = 12 * 64  # cpu-tiny: 12 sequences of 64 tokens a step
            assert canvas.figure.series[0].xs == [0, 250 * per_iter, 500 * per_iter]
            assert canvas.figure.x_lim == (0, 500 * per_iter)
            await pilot.press("a")  # hides it
            await pilot.pause(0.05)
            assert not canvas.display and loss.canvas.figure.x_ticks
    finally:
        f.close()


def test_at_80x24_the_status_says_it_and_a_key_shows_the_curve():
    f = fake_with_hellaswag(notice="this run trains without HellaSwag: no network")
    app = make_app("run", str(f.run.path), poll_interval=POLL)
    try:
        @run_app(app, size=(80, 24))
        async def _(pilot):
            loss, status = app.screen.query_one(LossPane), app.screen.query_one(StatusPane)
            await wait_for(pilot, lambda: len(app.screen.model.hellaswag) == 3 and loss.redraws > 0
                           and "hella" in status_text(app), what="the HellaSwag points")
            line = next(line for line in status_text(app).splitlines() if line.startswith("hella"))
            assert line == "hella 0.271 · GPT-2 124M 0.2955"
            assert len(line) <= status.content_size.width  # whole at 80 columns, not cut
            assert not loss.hellaswag_canvas.display  # no room for two plots by itself: on a key
            await pilot.press("a")
            await wait_for(pilot, lambda: loss.hellaswag_canvas.display and loss.hellaswag_canvas.figure.points > 0)
            await pilot.pause(0.05)
            assert loss.hellaswag_canvas.size.height >= 5 and loss.canvas.size.height >= 5
            # the run's notice is in the log, once, in the notices' colour
            log = app.screen.query_one(LogPane)
            notices = [e for e in log.entries if "without HellaSwag" in e.text]
            assert [(e.kind, e.severity) for e in notices] == [("notice", "info")]
            assert log._style(notices[0]) == log.get_component_rich_style("log--notice", partial=True)
    finally:
        f.close()


def test_a_restart_from_an_earlier_checkpoint_drops_the_later_points():
    run_event = {"type": "run", "name": "r", "preset": "cpu-tiny", "engine": "pretrain", "config": {},
                 "device": "cpu", "world_size": 1}
    events = [{**run_event, "resumed_from": None, "time": 1.0}]
    events += [{"type": "step", "iter": it, "loss": 2.0, "tokens": it * 10, "time": 2.0 + it / 100}
               for it in (100, 200, 300, 400, 500)]
    events += [hellaswag(it, acc, t=10.0) for it, acc in POINTS]
    events += [{**run_event, "resumed_from": 250, "time": 20.0}, hellaswag(500, 0.268, t=30.0)]
    # the cockpit: points past the checkpoint go with the restart; the new one at 500 replaces the old
    model = RunModel("r")
    model.ingest(events[:-1])
    assert [p[0] for p in model.hellaswag] == [0, 250]
    model.ingest(events[-1:])
    assert model.hellaswag[-1] == (500, pytest.approx(0.258), 0.268)
    assert model.hellaswag_text() == "0.268 · GPT-2 124M 0.2955"
    # metrics (compare, metrics, plot): the same history
    h = metrics.history(events[:-1])
    assert [r.iter for r in h.hellaswag] == [0, 250]
    h = metrics.history(events)
    assert [(r.iter, r.acc_norm) for r in h.hellaswag] == [(0, 0.25), (250, 0.26), (500, 0.268)]
    assert metrics.best_acc_norm(h.hellaswag) == (0.268, 500)


# --------------------------------------------------------------------------- compare, metrics, plot


def logged_run(name: str, points, steps: int = 50) -> RunDir:
    """A finished FakeRun history with HellaSwag points (no process: the log is all there is)."""
    f = FakeRun(make_run(name=name))
    f.start_events()
    for _ in range(steps):
        f.step()
        for it, acc_norm in points:
            if it == f.iter:
                f.events.emit(**hellaswag(it, acc_norm))
    f.events.emit("state", state="done", reason="max_iters reached")
    f.close()
    return f.run


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_has_a_best_acc_norm_column_and_json_fields(capsys):
    logged_run("small", [(10, 0.25), (250, 0.262), (500, 0.259)])
    logged_run("big", [(10, 0.25), (250, 0.27), (500, 0.281)])
    code, out, _ = cli(capsys, "compare", "small", "big")
    assert code == 0
    table = [line.split() for line in out.splitlines()]
    assert "ACC_NORM" in table[0]
    column = table[0].index("ACC_NORM")  # "BEST VAL" is two words in the header, a cell "x @N" two too
    rows = {r[0]: r for r in table[1:3]}
    assert rows["small"][column:column + 2] == ["0.2620", "@250"]
    assert rows["big"][column:column + 2] == ["0.2810", "@500"]
    assert "best HellaSwag acc_norm: big (0.2810 at iter 500); GPT-2 124M: 0.2955" in out
    code, out, _ = cli(capsys, "compare", "small", "big", "--json")
    data = json.loads(out)
    assert data["best_hellaswag"] == "big"
    small = next(r for r in data["runs"] if r["name"] == "small")
    assert (small["best_acc_norm"], small["best_acc_norm_iter"]) == (0.262, 250)
    assert (small["hellaswag_reference"], small["hellaswag_reference_acc_norm"]) == REF


def test_compare_without_hellaswag_has_no_such_column(capsys):
    logged_run("a", [])
    logged_run("b", [])
    code, out, _ = cli(capsys, "compare", "a", "b")
    assert code == 0 and "ACC_NORM" not in out and "HellaSwag" not in out
    data = json.loads(cli(capsys, "compare", "a", "b", "--json")[1])
    assert data["best_hellaswag"] is None and data["runs"][0]["best_acc_norm"] is None


def test_compare_screen_has_a_best_acc_norm_row():
    small = logged_run("small", [(10, 0.25), (250, 0.262), (500, 0.259)])
    plain = logged_run("plain", [])
    app = make_app("compare", runs=[small.path, plain.path])

    @run_app(app, size=(80, 24))
    async def _(pilot):
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.runs, what="compare")
        rows = dict(app.screen.rows())  # runs in name order: plain, small
        assert rows["best acc_norm @iter"] == ["N/A", "0.2620 @250"]
        assert list(rows).index("best acc_norm @iter") == list(rows).index("best val @iter") + 1


def test_metrics_csv_json_and_table_have_the_hellaswag_rows(capsys):
    logged_run("a", [(10, 0.25), (250, 0.262), (500, 0.259)])
    code, out, _ = cli(capsys, "metrics", "a", "--csv")
    assert code == 0
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r["kind"] == "hellaswag"]
    assert [(r["iter"], r["acc"], r["acc_norm"], r["n"], r["seconds"]) for r in rows] == [
        ("10", "0.24", "0.25", "10042", "1.5"), ("250", "0.252", "0.262", "10042", "1.5"),
        ("500", "0.249", "0.259", "10042", "1.5")]
    assert rows[1]["tokens"] == str(250 * 12 * 64) and rows[1]["loss"] == ""  # cpu-tiny: 12 x 64 tokens a step
    data = json.loads(cli(capsys, "metrics", "a", "--json")[1])
    assert [r["acc_norm"] for r in data["hellaswag"]] == [0.25, 0.262, 0.259]
    out = cli(capsys, "metrics", "a")[1]
    assert "3 HellaSwag evaluations" in out
    assert ["250", "0.2520", "0.2620", "10,042", "1.5"] == [line.split() for line in out.splitlines()
                                                           if line.startswith("250 ")][-1][:5]
    assert "GPT-2 124M" in out


def test_plot_metric_hellaswag_writes_the_curves_and_the_dashed_reference(capsys, tmp_path):
    logged_run("small", [(10, 0.25), (250, 0.262), (500, 0.259)])
    logged_run("plain", [])
    svg = tmp_path / "hellaswag.svg"
    code, out, err = cli(capsys, "plot", "small", "plain", "--to", str(svg), "--metric", "hellaswag", "--x", "tokens")
    assert code == 0 and out == f"wrote {svg} (small)\n" and "plain logged no HellaSwag evaluation yet" in err
    root = ET.parse(svg).getroot()
    texts = " ".join("".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "small acc_norm" in texts and "GPT-2 124M 0.2955" in texts and "HellaSwag acc_norm" in texts
    assert "stroke-dasharray" in svg.read_text()  # the reference line is dashed
    code, _, err = cli(capsys, "plot", "plain", "--to", str(tmp_path / "none.png"), "--metric", "hellaswag")
    assert code != 0 and "nothing to plot: plain logged no HellaSwag evaluation yet" in err
    assert not (tmp_path / "none.png").exists()


# --------------------------------------------------------------------------- plan


def test_plan_hours_count_the_hellaswag_evaluations():
    a100 = GpuSpec.named("A100")
    off = plan_run(presets.load("gpt2-124m", ["train.hellaswag_interval=0"]), gpu=a100)
    on = plan_run(presets.load("gpt2-124m", ["train.hellaswag_interval=1000"]), gpu=a100)
    limited = plan_run(presets.load("gpt2-124m", ["train.hellaswag_interval=1000", "train.hellaswag_limit=1000"]),
                        gpu=a100)
    t = presets.load("gpt2-124m").train
    evals = 1 + t.max_iters // 1000 + (1 if t.max_iters % 1000 else 0)  # at 0, every 1000, at the end
    assert (off.hellaswag_evals, on.hellaswag_evals, on.hellaswag_items) == (0, evals, 10_042)
    # each item: 4 endings of ~85 tokens, one forward pass (2N FLOPs a token), at the plan's MFU
    assert on.hellaswag_flops == evals * 10_042 * 4 * 85 * 2 * on.params
    assert on.hours - off.hours == pytest.approx(on.hellaswag_flops / (a100.peak_tflops * 1e12 * on.mfu) / 3600)
    assert on.hours > off.hours and on.hellaswag_hours == pytest.approx(on.hours - off.hours)
    assert limited.hellaswag_items == 1000
    assert limited.hellaswag_flops == pytest.approx(on.hellaswag_flops * 1000 / 10_042)
    assert on.to_dict()["hellaswag_evals"] == evals and on.kwh > off.kwh
    rows = dict(on.rows())
    assert rows["HellaSwag"].startswith(f"{evals} evals x 10,042 items: ") and "HellaSwag" not in dict(off.rows())
    # a measured pace: HellaSwag at the FLOP rate the measured steps reached
    measured_on = plan_run(presets.load("gpt2-124m", ["train.hellaswag_interval=1000"]), gpu=None, ms_per_iter=500.0)
    train_hours = 0.5 * t.max_iters / 3600
    assert measured_on.hours_measured == pytest.approx(train_hours * (1 + on.hellaswag_flops / on.flops_total))
