"""The cockpit as a new user meets it (issue #18): the preset editor never replaces a preset of
yours unasked, Enter on home asks before starting a run, the key a pane offers works where it
is offered, every pane reflows on resize, a stopped run can be resumed and sampled from its
screen, the diagnostics say what to do without a GPU, and the loss plot keeps up with the status.
Driven with Pilot against a FakeRun, a recorded log, or (tests at the end) a real run process."""

from __future__ import annotations

import pytest
from fakerun import (POLL, START, fake, fake_doctor, fake_spawns, kill_if_running, make_run,  # noqa: F401 (fake)
                     notifications, process_gone, run_app, shown_iter, spawn_real_run, status_text, text_of,
                     wait_for)
from helpers import wait_until

from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.events import EventWriter
from gpt2_cockpit.engine.runs.rundir import list_dirs
from gpt2_cockpit.tui.app import make_app
from gpt2_cockpit.tui.model import RunModel
from gpt2_cockpit.tui.screens.home import HomeScreen, PresetList
from gpt2_cockpit.tui.screens.preset_edit import PresetEditScreen, field_id
from gpt2_cockpit.tui.screens.run import RunScreen
from gpt2_cockpit.tui.widgets.dialogs import ConfirmScreen
from gpt2_cockpit.tui.widgets.log_pane import LogPane
from gpt2_cockpit.tui.widgets.loss_plot import LossPane
from gpt2_cockpit.tui.widgets.plan import DiagnosticsPane
from gpt2_cockpit.tui.widgets.samples import SamplePane
from gpt2_cockpit.tui.widgets.status import StatusPane

NO_GPU_CHECKS = [  # what `gpt2-cockpit doctor --json` says on a machine without an NVIDIA GPU
    {"id": "nvidia_driver", "name": "NVIDIA driver", "status": "fail", "detail": "NVML not found",
     "remedy": "install the NVIDIA driver (535 or newer)", "required": True},
    {"id": "cuda_versions", "name": "CUDA", "status": "fail", "detail": "no driver", "remedy": "", "required": True},
    {"id": "torch_cuda", "name": "torch CUDA", "status": "fail", "detail": "torch sees no GPU", "remedy": "",
     "required": True},
    {"id": "gpu", "name": "GPU", "status": "fail", "detail": "no NVIDIA GPU", "remedy": "", "required": True},
    {"id": "python", "name": "Python", "status": "pass", "detail": "3.11", "remedy": None, "required": False},
]


async def highlight(pilot, app, name: str) -> None:
    """Highlight preset `name` on home (the default depends on the machine's GPU)."""
    await wait_for(pilot, lambda: app.screen.preset_infos, what="the presets")
    app.screen.query_one(PresetList).highlighted = [i.name for i in app.screen.preset_infos].index(name)
    await wait_for(pilot, lambda: app.screen.selected_preset_name() == name, what=f"{name} highlighted")


# --------------------------------------------------------------------------- 4. the preset editor


def test_the_preset_editor_offers_a_new_name_and_asks_before_replacing_your_preset():
    mine = presets.load("cpu-tiny", ["train.max_iters=777"])
    presets.save_user(mine, "cpu-tiny-mine")  # saved from the editor last time
    app = make_app("home", doctor_argv=fake_doctor([]))

    @run_app(app, size=(80, 24))
    async def _(pilot):
        await highlight(pilot, app, "cpu-tiny")
        await pilot.press("e")
        form = app.screen
        assert isinstance(form, PresetEditScreen)
        save_name = form.query_one("#save-name")
        assert save_name.value == "cpu-tiny-mine-2"  # a name no preset has yet
        form.query_one(f"#{field_id('train.max_iters')}").value = "5000"
        save_name.value = "cpu-tiny-mine"  # the user's own preset, on purpose
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert "cpu-tiny-mine" in text_of(app.screen.query_one(".dialog-text"))
        await pilot.press("n")
        assert app.screen is form
        assert presets.load("cpu-tiny-mine").train.max_iters == 777  # untouched
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question again")
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen), what="home")
        assert presets.load("cpu-tiny-mine").train.max_iters == 5000


# --------------------------------------------------------------------------- 5. starting a run from home


def test_enter_on_a_preset_says_what_would_start_and_asks_once(monkeypatch):
    started = fake_spawns(monkeypatch)
    app = make_app("home", doctor_argv=fake_doctor([]), poll_interval=POLL)
    try:
        @run_app(app, size=(80, 24))
        async def _(pilot):
            screen = app.screen
            await highlight(pilot, app, "cpu-tiny")
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            question = text_of(app.screen.query_one(".dialog-text"))
            plan = screen.plans["cpu-tiny"]
            assert "cpu-tiny" in question and "parameters" in question and "tokens in 2,000 iters" in question
            assert plan.device and f"on {plan.device}" in question  # where it would train
            await pilot.press("enter")  # the focused button is Cancel: a stray Enter starts nothing
            await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen), what="home again")
            await pilot.pause(0.2)  # a sleep on purpose: no run may start meanwhile
            assert not started and not list_dirs()
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question again")
            await pilot.press("y")  # asked once, answered once
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
            assert len(started) == 1 and started[0].cfg.name == "cpu-tiny"
    finally:
        for f in started:
            f.close()


def test_the_preset_list_stops_at_its_ends():
    app = make_app("home", doctor_argv=fake_doctor([]))

    @run_app(app, size=(80, 24))
    async def _(pilot):
        lst = app.screen.query_one(PresetList)
        await wait_for(pilot, lambda: lst.highlighted is not None, what="a highlighted preset")
        assert lst.option_count >= 2
        await pilot.press("home", "up", "up")
        assert lst.highlighted == 0
        await pilot.press("end", "down", "down")
        assert lst.highlighted == lst.option_count - 1


# --------------------------------------------------------------------------- 6. the key a pane offers


def test_k_cancels_right_after_enter_and_never_types_into_the_prompt(fake):
    f = fake(steps=20)
    f.slow_samples = True
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live)
        prompt = screen.query_one("#prompt")
        await pilot.press("s", *"Hi", "enter")  # no Esc: Enter hands the keys back
        pane = screen.query_one(SamplePane)
        await wait_for(pilot, lambda: f.in_progress, what="the run taking the sample")
        assert screen.focused is None and "(k cancels)" in text_of(pane.views[-1])
        await pilot.press("s")  # typing again: the view names the key that works from there
        await wait_for(pilot, lambda: "Esc, then k cancels" in text_of(pane.views[-1]), what="the hint while typing")
        await pilot.press("escape")
        await wait_for(pilot, lambda: "(k cancels)" in text_of(pane.views[-1]), what="the hint again")
        await pilot.press("k")
        await wait_for(pilot, lambda: not pane.pending_ids(), what="the cancelled sample")
        assert prompt.value == "Hi"  # no k typed into it
        assert [r["cmd"] for r in f.received] == ["sample", "cancel"]


# --------------------------------------------------------------------------- 7. resizing


def test_the_log_reflows_when_the_terminal_is_resized(fake):
    f = fake(steps=20)
    app = make_app("run", str(f.run.path), poll_interval=POLL)
    long = "a long log line that must wrap at every width this test uses " * 3

    @run_app(app, size=(120, 36))
    async def _(pilot):
        screen = app.screen
        log = screen.query_one(LogPane)
        await wait_for(pilot, lambda: screen.model.iter == 200, what="the replay")
        for n in range(12):
            log.say(f"{n}: {long}")
        log.say("the newest line")
        await wait_for(pilot, lambda: log.lines and "the newest line" in log.lines[-1].text, what="the lines written")

        def widest() -> int:
            return max(line.cell_length for line in log.lines)

        def fits() -> bool:
            return widest() <= log.scrollable_content_region.width

        assert fits()
        wide = widest()
        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: widest() < wide and fits(), timeout=5, what="the log rewrapped for 80 columns")
        await pilot.pause(0.1)  # a sleep on purpose: once settled, it still fits (no later rewrap undoes it)
        narrow = log.scrollable_content_region.width
        assert fits(), (widest(), narrow)
        assert log.scroll_y == log.max_scroll_y and "the newest line" in log.lines[-1].text  # the newest in view
        assert log.max_scroll_x == 0  # no horizontal scrollbar over the last line
        await pilot.resize_terminal(160, 48)
        await wait_for(pilot, lambda: widest() > narrow, timeout=5, what="the log rewrapped for 160 columns")
        await pilot.pause(0.1)  # a sleep on purpose, as above
        assert fits()  # wider lines again, not the narrow wrapping
        assert log.scroll_y == log.max_scroll_y and "the newest line" in log.lines[-1].text


# --------------------------------------------------------------------------- 8. a stopped run (recorded)


def stopped_log(run, stop_at: int = 154, state: str = "stopped") -> None:
    """A run that logged a step every 10 iterations and stopped at `stop_at`, between two of them."""
    w = EventWriter(run.events_path)
    w.emit("run", name=run.name, preset="cpu-tiny", engine="pretrain", config={}, device="cpu", world_size=1,
           resumed_from=None)
    w.emit("state", state="running", reason="")
    for it in range(10, stop_at, 10):
        w.emit("step", iter=it, loss=2.0, lr=1e-3, tokens=it * 768, tokens_per_sec=1e4, ms=40.0, mfu=None,
               micro_batch=12, grad_accum=1)
    w.emit("checkpoint", iter=stop_at, path=str(run.checkpoints / f"ckpt-{stop_at:08d}.pt"), best=False)
    w.emit("state", state=state, reason="stop requested" if state == "stopped" else "max_iters reached")
    w.close()


def test_a_stopped_run_shows_its_checkpoints_iteration_and_no_eta():
    run = make_run(name="halted")
    stopped_log(run)
    from gpt2_cockpit.engine.runs.events import read_all

    m = RunModel(run.name, max_iters=2000)
    m.ingest(read_all(run.events_path))
    m.alive = False
    rows = dict(m.status_rows())
    assert rows["iter"].startswith("154/2000") and rows["ETA"] == "-"
    assert m.resumable
    m.alive = None  # a live run (not known yet to be gone) keeps its ETA
    m.state = "running"
    assert "ms/it" in dict(m.status_rows())["ETA"]


@pytest.mark.parametrize("state", ["stopped", "done"])
def test_dimmed_keys_of_a_run_that_is_not_live_say_why(state):
    run = make_run(name="halted")
    stopped_log(run, state=state)
    app = make_app("run", str(run.path), poll_interval=POLL)
    told = notifications(app)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.alive is False and screen.model.state == state)
        await wait_for(pilot, lambda: state in status_text(app), what="the status repainted")
        assert dict(screen.model.status_rows())["ETA"] == "-" and "ms/it" not in status_text(app)
        assert screen.check_action("checkpoint", ()) is None  # dimmed...
        await pilot.press("c")  # ...and pressed anyway, it says why
        await wait_for(pilot, lambda: told, what="a notification")
        assert "Checkpoint" in told[-1] and state in told[-1]
        if state == "stopped":
            assert "p restarts it" in told[-1] and screen.check_action("toggle_pause", ()) is True
        else:  # done: nothing to resume without a larger max_iters
            assert "max_iters" in told[-1] and screen.check_action("toggle_pause", ()) is None
            await pilot.press("p")
            await wait_for(pilot, lambda: len(told) == 2, what="p saying why")
            assert isinstance(app.screen, RunScreen)


# --------------------------------------------------------------------------- 9. diagnostics


def test_home_diagnostics_say_what_to_do_without_a_gpu():
    app = make_app("home", doctor_argv=fake_doctor(NO_GPU_CHECKS))

    @run_app(app, size=(80, 24))
    async def _(pilot):
        diag = app.screen.query_one(DiagnosticsPane)
        await wait_for(pilot, lambda: "4 fail" in diag.text, what="diagnostics")
        lines = diag.text.splitlines()
        # right under the counts, so it shows in the pane's few lines at 80x24
        assert lines[1] == "Without an NVIDIA GPU, train on the CPU: gpt2-cockpit train cpu-tiny"
        # on screen: the counts and this line inside the border
        await wait_for(pilot, lambda: diag.region.height >= 4, what="the diagnostics pane laid out")


# --------------------------------------------------------------------------- 10. the plot keeps up


def test_the_loss_plot_keeps_up_with_the_status(fake):
    f = fake(steps=20, step_every=0.1, overrides=["train.eval_interval=100000", "train.checkpoint_interval=100000"])
    app = make_app("run", str(f.run.path), poll_interval=POLL)  # the normal pace's status and plot budget

    @run_app(app, size=(120, 36))
    async def _(pilot):
        screen = app.screen
        loss = screen.query_one(LossPane)
        status = screen.query_one(StatusPane)
        await wait_for(pilot, lambda: loss.canvas.figure.points > 0, what="the first plot")
        loss.redraw_cost = lambda: 0.02  # a 20 ms plot (a slow core at 120x36): 5 s a redraw at its share
        repaints, lags = status.repaints, []
        while status.repaints < repaints + 3:  # three status periods of new steps (~6 s)
            await pilot.pause(0.05)
            lags.append(shown_iter(app) - loss.canvas.figure.series[0].xs[-1])
        assert max(lags) <= 0, lags  # the plot shows the iteration the status shows
        assert loss.redraws <= status.repaints + 2  # ...and draws no more often than the status


# --------------------------------------------------------------------------- 8. a stopped run (real)


@pytest.fixture
def stopped_real_run(corpus):
    """A tiny run that trained a few steps and was stopped: it checkpointed between two logged
    steps (log_interval 5) and its process exited."""
    run, pid = spawn_real_run(corpus, "halted", log_interval=5)
    try:
        wait_until(lambda: "\"type\":\"step\"" in run.events_path.read_text(), timeout=START, what="a first step")
        launch.command(run, {"cmd": "stop"}, timeout=60)
        wait_until(lambda: process_gone(pid), timeout=30, what="the run process to exit")
        yield run, [pid]
    finally:
        kill_if_running(pid)
        kill_if_running(run.pid())  # the restarted process, if a failed test left it training


def test_a_stopped_real_run_samples_its_checkpoint_and_resumes_from_the_cockpit(stopped_real_run):
    run, _ = stopped_real_run
    app = make_app("run", run.path, poll_interval=0.1)

    @run_app(app, size=(100, 30))
    async def _(pilot):
        screen = app.screen
        m = screen.model
        await wait_for(pilot, lambda: m.alive is False and m.state == "stopped", what="the stopped run")
        stopped_at = m.last_checkpoint["iter"]
        assert f"{stopped_at}/100000" in status_text(app) and "ms/it" not in status_text(app)  # no ETA

        # s samples the newest checkpoint in a `gpt2-cockpit sample` process; k ends it
        pane = screen.query_one(SamplePane)
        await pilot.press("s", *"Th", "enter")
        await wait_for(pilot, lambda: any(screen._checkpoint_samples.values()), what="the sampling process")
        proc = next(p for p in screen._checkpoint_samples.values() if p is not None)
        assert "from the checkpoint" in text_of(pane.views[-1]) and screen.check_action("cancel_sample", ()) is True
        await pilot.press("k")
        await wait_for(pilot, lambda: not pane.pending_ids(), timeout=30, what="the cancelled sample")
        assert proc.poll() is not None and "cancelled" in text_of(pane.views[-1])

        await pilot.press("s", *"The", "enter")
        await wait_for(pilot, lambda: not pane.pending_ids() and pane.views[-1].sample is not None
                       and not pane.views[-1].sample.cancelled, timeout=120, what="the sample")
        view = pane.views[-1]
        assert not view.has_class("-failed") and view.sample.from_checkpoint
        assert view.sample.text.startswith("The") and len(view.sample.text) > 3
        assert f"@iter {stopped_at} · checkpoint" in text_of(view)

        # p restarts it (asks first), as `gpt2-cockpit resume RUN --detach` does
        await pilot.press("p")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: m.live and m.state == "running" and (m.iter or 0) > stopped_at,
                       timeout=START, what="training again")
        assert m.resumed_from == stopped_at
        await pilot.press("x", "y")
        await wait_for(pilot, lambda: m.state == "stopped" and m.alive is False, timeout=30, what="stopped again")
