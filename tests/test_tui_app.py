"""The cockpit driven for real with App.run_test() and Pilot, against a FakeRun (a control
server and an event log in a test thread) or a recorded event log. CPU-only, offline, no torch.
(tests/test_tui_realrun.py drives it against a real run process.)"""

from __future__ import annotations

import sys
import time

import pytest
from fakerun import (POLL, fake, fake_doctor, fake_spawns, grad_norm_at, loss_at, lr_at, make_run,  # noqa: F401 (fake)
                     more_polls, notifications, run_app, shown_iter, status_text, text_of, wait_for)
from helpers import wait_until

from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.fmt import fmt_count, fmt_lr
from gpt2_cockpit.engine.runs.events import EventWriter
from gpt2_cockpit.tui.app import make_app
from gpt2_cockpit.tui.screens.home import HomeScreen, RunsTable
from gpt2_cockpit.tui.screens.preset_edit import PresetEditScreen, field_id
from gpt2_cockpit.tui.screens.run import RunScreen
from gpt2_cockpit.tui.widgets.dialogs import ConfirmScreen, LiveSettingsScreen
from gpt2_cockpit.tui.widgets.log_pane import LogPane
from gpt2_cockpit.tui.widgets.loss_plot import LossPane
from gpt2_cockpit.tui.widgets.plan import DiagnosticsPane, PlanPane
from gpt2_cockpit.tui.widgets.samples import SamplePane
from gpt2_cockpit.tui.widgets.status import GpuPane, StatusPane


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# --------------------------------------------------------------------------- run screen


def test_attach_sends_the_whole_history_to_the_plot_in_one_batch(fake):
    f = fake(steps=200)  # 2000 iters: 200 steps, 8 evals, 8 checkpoints
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=(80, 24))
    async def _(pilot):
        screen = app.screen
        assert isinstance(screen, RunScreen)
        loss = screen.query_one(LossPane)
        await wait_for(pilot, lambda: loss.canvas.figure.points > 0, what="the loss plot")
        assert screen.feed.polls >= 1 and len(screen.model.iters) == 200
        train, val = loss.canvas.figure.series
        width = loss.canvas.size.width
        assert 0 < len(train.xs) <= 2 * width  # downsampled for the plot's width
        assert train.xs[0] == 10 and train.xs[-1] == 2000  # ...but spans the whole history
        assert val.xs == [250, 500, 750, 1000, 1250, 1500, 1750, 2000]
        assert val.ys[-1] == pytest.approx(loss_at(2000) + 0.1)
        assert loss.redraws <= 2  # the replay was one batch, not 200 repaints
        await wait_for(pilot, lambda: loss.canvas.renders >= 1, what="the plot painted")
        assert "2000/2000" in status_text(app)


def test_plot_settings_log_scale_tokens_axis_and_smoothing(fake):
    f = fake(steps=50)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        loss = app.screen.query_one(LossPane)
        await wait_for(pilot, lambda: loss.canvas.figure.points > 0)
        raw_first = loss_at(10)
        await pilot.press("l", "t")
        fig = loss.canvas.figure
        assert fig.log_y and fig.x_label == "tokens"
        tokens_per_iter = 12 * 1 * 64
        assert fig.series[0].xs[-1] == 500 * tokens_per_iter
        assert fig.series[1].xs[0] == 250 * tokens_per_iter  # evals placed by tokens too
        while loss.smoothing > 0:
            await pilot.press("left_square_bracket")
        assert loss.canvas.figure.series[0].ys[0] == pytest.approx(raw_first)
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert loss.smoothing == 0.6 and "ema 0.60" in loss.border_subtitle


def test_new_steps_keep_the_plot_and_status_moving(fake):
    f = fake(steps=5, step_every=0.05)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.model.iters) >= 15, what="new steps")
        await wait_for(pilot, lambda: screen.query_one(LossPane).canvas.figure.series[0].xs[-1] >= 150)
        assert screen.model.iter >= 150
        # the status repaints new figures every few seconds (pace.status)
        await wait_for(pilot, lambda: shown_iter(app) >= 150, what="the status to show the new steps")


def test_p_pauses_the_run_and_the_screen_says_so(fake):
    f = fake(steps=20)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live, what="the run to be live")
        await pilot.press("p")
        await wait_for(pilot, lambda: "paused" in status_text(app), what="paused on screen")
        assert {"cmd": "pause"} in f.received
        assert screen.query_one(StatusPane).has_class("-paused")
        await pilot.press("p")
        await wait_for(pilot, lambda: {"cmd": "resume"} in f.received, what="resume sent")
        await wait_for(pilot, lambda: "running" in status_text(app))


def test_typed_prompt_produces_a_sample_that_is_shown_once(fake):
    f = fake(steps=20)
    for it in (50, 100, 150):  # periodic samples fill the list first
        f.events.emit("sample", iter=it, prompt="", text="periodic line\n" * 4, request_id=None)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live)
        await pilot.press("s")
        assert screen.focused is screen.query_one("#prompt")
        await pilot.press(*"Hello", "enter")
        sent = lambda: [m for m in f.received if m.get("cmd") == "sample"]  # noqa: E731
        await wait_for(pilot, lambda: sent(), what="sample request")
        assert sent()[0]["prompt"] == "Hello" and sent()[0]["max_new_tokens"] == 200 and sent()[0]["request_id"]
        views = lambda: screen.query_one(SamplePane).views  # noqa: E731
        await wait_for(pilot, lambda: any(v.sample and "Hello -> generated" in v.sample.text for v in views()),
                       what="the sample on screen")
        await more_polls(pilot, screen)  # the sample's event read again: it resolved the pending view, no second one
        shown = [v for v in views() if v.sample and v.sample.request_id == sent()[0]["request_id"]]
        assert len(shown) == 1 and shown[0].sample.iter == 200
        assert "@iter 200" in text_of(shown[0])
        sample_list = screen.query_one("#sample-list")
        top = shown[0].virtual_region.y  # the answer is scrolled into view, from its first line
        assert sample_list.max_scroll_y > 0 and sample_list.scroll_y == min(top, sample_list.max_scroll_y)
        await pilot.press("escape")
        assert screen.focused is None


def test_periodic_samples_from_the_log_are_listed(fake):
    f = fake(steps=5)
    f.events.emit("sample", iter=50, prompt="", text="periodic text", request_id=None)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        pane = app.screen.query_one(SamplePane)
        await wait_for(pilot, lambda: pane.views)
        assert "periodic" in text_of(pane.views[0]) and "periodic text" in text_of(pane.views[0])


def test_bad_sample_settings_are_refused_before_sending(fake):
    f = fake(steps=5)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.live)
        app.screen.query_one("#temperature").value = "0"
        await pilot.press("s", "x", "enter")
        # a sleep on purpose: nothing may reach the run, and "nothing" has no event to wait for
        await pilot.pause(0.2)
        assert not [m for m in f.received if m.get("cmd") == "sample"]


def test_x_asks_before_stopping(fake):
    f = fake(steps=20)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.live)
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert isinstance(app.screen, RunScreen)
        await pilot.pause(0.1)  # a sleep on purpose: no stop may reach the run meanwhile
        assert {"cmd": "stop"} not in f.received
        await pilot.press("x", "y")
        await wait_for(pilot, lambda: {"cmd": "stop"} in f.received, what="stop sent")
        await wait_for(pilot, lambda: "stopped" in status_text(app))


def test_c_writes_a_checkpoint_and_the_log_shows_it(fake):
    f = fake(steps=20)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.live)
        await pilot.press("c")
        await wait_for(pilot, lambda: {"cmd": "checkpoint"} in f.received)
        log = app.screen.query_one(LogPane)
        await wait_for(pilot, lambda: any("checkpoint @200" in e.text for e in log.entries))
        assert "@200" in status_text(app)


def test_e_edits_live_settings_with_validation(fake):
    f = fake(steps=20)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=(80, 24))
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.live)
        await pilot.press("e")
        dialog = app.screen
        assert isinstance(dialog, LiveSettingsScreen)
        lr = dialog.query_one("#set-train-learning-rate")
        lr.value = "-1"
        await pilot.pause()
        assert lr.has_class("-invalid") and "train.learning_rate" in text_of(dialog.query_one("#settings-error"))
        await pilot.press("enter")
        assert app.screen is dialog  # invalid: not applied
        lr.value = "3e-4"
        await pilot.pause()
        assert not lr.has_class("-invalid")
        lr.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: any(m.get("cmd") == "set" for m in f.received), what="set sent")
        assert [m for m in f.received if m.get("cmd") == "set"] == [
            {"cmd": "set", "key": "train.learning_rate", "value": 3e-4}]
        log = app.screen.query_one(LogPane)
        await wait_for(pilot, lambda: any("train.learning_rate" in e.text for e in log.entries))
        assert app.screen.settings["train.learning_rate"] == 3e-4


def test_control_failure_is_told_not_raised(fake):
    f = fake(steps=5)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.live)
        f.server.close()  # the process is there, its control socket is gone
        await pilot.press("c")
        log = app.screen.query_one(LogPane)
        await wait_for(pilot, lambda: any(e.severity == "error" for e in log.entries), what="the error in the log")
        # the process is there (its pid is ours), its socket is not: control.request says so
        assert [e.text for e in log.entries if e.severity == "error"] == [
            f"the run at {f.run.path} is not running (no process answers its control socket)"]
        assert app.is_running


def test_a_finished_run_disables_commands_and_keeps_its_history(home, monkeypatch):
    from gpt2_cockpit.engine.machine import hardware

    monkeypatch.setattr(hardware, "has_cuda", lambda: False)  # a CPU box, whatever this one is
    run = make_run(name="old")
    w = EventWriter(run.events_path)
    w.emit("run", name="old", preset="cpu-tiny", engine="pretrain", config={}, device="cpu", world_size=1,
           resumed_from=None)
    for i in range(1, 11):
        w.emit("step", iter=i * 10, loss=loss_at(i * 10), lr=1e-3, tokens=i * 7680, tokens_per_sec=1e4, ms=40.0,
               mfu=None, micro_batch=12, grad_accum=1)
    w.emit("state", state="done", reason="max_iters reached")
    app = make_app("run", str(run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.iter == 100)
        assert screen.check_action("toggle_pause", ()) is None  # dimmed in the Footer
        await pilot.press("p")
        assert "done" in status_text(app)
        await wait_for(pilot, lambda: screen.query_one(GpuPane).nvidia is False)
        assert "no NVIDIA GPU" in screen.query_one(GpuPane).text


def test_a_run_that_died_without_saying_shows_crashed(home):
    run = make_run(name="dead")
    w = EventWriter(run.events_path)
    w.emit("state", state="running", reason="")
    w.emit("step", iter=10, loss=2.0, lr=1e-3, tokens=7680, tokens_per_sec=1e4, ms=40.0, mfu=None,
           micro_batch=12, grad_accum=1)
    run.pid_path.write_text("999999999\n")
    app = make_app("run", str(run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.alive is False)
        await wait_for(pilot, lambda: "crashed" in status_text(app), what="crashed on screen")


def test_gpu_pane_shows_readings_with_na_for_missing_figures(fake):
    f = fake(steps=5)
    f.events.emit("gpu", index=0, name="NVIDIA GeForce RTX 4070 Ti", util=97, mem_used=10.5 * 1024**3,
                  mem_total=12 * 1024**3, temp=None, power=None)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=(160, 48))
    async def _(pilot):
        gpu = app.screen.query_one(GpuPane)
        await wait_for(pilot, lambda: app.screen.model.gpus)
        await wait_for(pilot, lambda: "97%" in gpu.text, what="the reading in the GPU pane")
        text = gpu.text
        assert "97%" in text and "10.5/12.0 GiB" in text and "N/A °C" in text and "N/A W" in text
        assert "RTX 4070 Ti" in text  # big enough for the detailed view


def test_an_old_gpu_reading_says_its_age_in_words(fake):
    f = fake(steps=5)
    f.events.emit("gpu", index=0, name="A100", util=50, mem_used=None, mem_total=None, temp=None, power=None,
                  time=time.time() - 3 * 86400)  # a run that stopped three days ago
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=(160, 48))
    async def _(pilot):
        gpu = app.screen.query_one(GpuPane)
        await wait_for(pilot, lambda: "50%" in gpu.text, what="the reading in the GPU pane")
        assert "(last reading 3d ago)" in gpu.text


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_every_pane_has_room_at_small_and_large_sizes(fake, size):
    f = fake(steps=30)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=size)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.iter == 300)
        screen = app.screen
        for pane in (LossPane, StatusPane, GpuPane, SamplePane, LogPane):
            region = screen.query_one(pane).region
            assert region.width >= 20 and region.height >= 3, (pane.__name__, region)
            assert region.right <= size[0] and region.bottom <= size[1] - 1, (pane.__name__, region)
        status = screen.query_one(StatusPane)
        assert status.region.height >= len(screen.model.status_rows()) + 2  # no status row cut off
        assert screen.query_one("#prompt").region.height == 1


def test_bindings_are_in_the_footer_and_the_command_palette(fake):
    f = fake(steps=5)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.live)
        shown = {b.binding.key: b.binding.description for b in app.screen.active_bindings.values()
                 if b.binding.show and b.binding.description}
        for key in "pscxeq":
            assert key in shown, key
        names = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Pause/Resume", "Sample", "Checkpoint", "Stop", "Settings", "Leave", "Log scale"} <= names


def test_q_leaves_and_the_run_goes_on(fake):
    f = fake(steps=5, step_every=0.05)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.live)
        await pilot.press("q")
        await pilot.pause(0.1)

    assert app.return_code == 0
    assert not [m for m in f.received if m.get("cmd") in ("stop", "pause")]
    before = f.iter
    wait_until(lambda: f.iter > before, timeout=5, what="a step after the cockpit left")  # still training


# --------------------------------------------------------------------------- home screen

CHECKS = [
    {"id": "python", "name": "Python", "status": "pass", "detail": "3.11", "remedy": ""},
    {"id": "cuda", "name": "CUDA", "status": "fail", "detail": "no driver", "remedy": "install the NVIDIA driver"},
    {"id": "disk", "name": "Disk", "status": "warn", "detail": "low", "remedy": "free some space"},
]


def test_home_shows_diagnostics_presets_runs_and_the_plan(fake):
    f = fake(steps=10, name="live-one")
    user_cfg = presets.load("cpu-tiny")
    presets.save_user(user_cfg, "my-tiny")
    app = make_app("home", doctor_argv=fake_doctor(CHECKS))

    @run_app(app, size=(80, 24))
    async def _(pilot):
        screen = app.screen
        assert isinstance(screen, HomeScreen)
        diag = screen.query_one(DiagnosticsPane)
        await wait_for(pilot, lambda: "1 fail" in diag.text, what="diagnostics")
        text = diag.text
        assert "1 pass" in text and "1 warn" in text and "install the NVIDIA driver" in text
        names = [i.name for i in screen.preset_infos]
        assert {"cpu-tiny", "shakespeare-char", "my-tiny"} <= set(names)
        assert screen.selected_preset_name() == "cpu-tiny"  # the default on a box without a GPU
        plan = screen.query_one(PlanPane)
        await wait_for(pilot, lambda: "tokens/step" in plan.text, what="the plan")
        assert "768" in plan.text  # 12 x 64 x 1
        table = screen.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 1, what="the runs table")
        assert table.get_row_at(0)[1] == "live-one" and table.get_row_at(0)[3] == "running"
        await pilot.press("down")
        await wait_for(pilot, lambda: screen.selected_preset_name() in plan.text)


def test_home_copes_with_a_failing_doctor(home):
    app = make_app("home", doctor_argv=[sys.executable, "-c", "import sys; sys.exit('doctor exploded')"])

    @run_app(app)
    async def _(pilot):
        diag = app.screen.query_one(DiagnosticsPane)
        await wait_for(pilot, lambda: "unavailable" in diag.text)
        assert "doctor exploded" in diag.text


def test_enter_on_a_preset_starts_it_and_opens_the_run_screen(home, monkeypatch):
    started = fake_spawns(monkeypatch)
    app = make_app("home", doctor_argv=fake_doctor(CHECKS), poll_interval=POLL)
    try:
        @run_app(app)
        async def _(pilot):
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="what would start")
            await pilot.press("y")
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
            assert app.screen.run.path == started[0].run.path
            assert started[0].cfg.name == "cpu-tiny"
            await wait_for(pilot, lambda: app.screen.model.iter == 30)
            await pilot.press("h")
            assert isinstance(app.screen, HomeScreen)
            table = app.screen.query_one(RunsTable)
            await wait_for(pilot, lambda: table.row_count == 1)
            table.focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, RunScreen))
    finally:
        for f in started:
            f.close()


def test_preset_form_validates_as_you_type_updates_the_plan_and_saves(home):
    app = make_app("home", doctor_argv=fake_doctor(CHECKS))

    @run_app(app, size=(80, 24))
    async def _(pilot):
        await pilot.press("e")
        form = app.screen
        assert isinstance(form, PresetEditScreen)
        plan = form.query_one(PlanPane)
        await wait_for(pilot, lambda: "tokens/step" in plan.text)
        heads = form.query_one(f"#{field_id('model.n_head')}")
        heads.value = "3"  # 128 is not divisible by 3
        await pilot.pause()
        assert "divisible" in text_of(form.query_one("#edit-error"))
        assert form.cfg is None
        heads.value = "4"
        batch = form.query_one(f"#{field_id('train.micro_batch')}")
        batch.value = "x"
        await pilot.pause()
        assert batch.has_class("-invalid") and "train.micro_batch" in text_of(form.query_one("#edit-error"))
        batch.value = "24"
        await pilot.pause()
        assert not batch.has_class("-invalid") and form.cfg.train.micro_batch == 24
        await wait_for(pilot, lambda: "1,536" in plan.text, what="the plan to follow the form")
        form.query_one("#save-name").value = "tiny-24"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        assert presets.load("tiny-24").train.micro_batch == 24
        assert app.screen.selected_preset_name() == "tiny-24"


def test_an_oom_while_watching_offers_to_save_the_split_into_the_preset(fake, home):
    from gpt2_cockpit.engine import presets

    f = fake(steps=20)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.live)
        assert isinstance(app.screen, RunScreen)  # the history's replay offers nothing
        f.events.emit("oom", iter=21, micro_batch_before=12, micro_batch_after=6, grad_accum_after=2)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the offer")
        await pilot.press("y")
        await wait_for(pilot, lambda: (home / "presets" / "cpu-tiny.toml").exists(), what="saved preset")
    saved = presets.load("cpu-tiny")
    assert (saved.train.micro_batch, saved.train.grad_accum) == (6, 2)
    assert {i.name: i.origin for i in presets.available()}["cpu-tiny"] == "user"


def test_a_reply_never_changes_the_panes_only_the_log_does(fake):
    f = fake(steps=20)
    f.silent = True  # accepts pause without writing a `state` event
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live)
        await pilot.press("p")
        await wait_for(pilot, lambda: {"cmd": "pause"} in f.received, what="pause sent")
        await wait_for(pilot, lambda: not [w for w in app.workers if w.group == "control"],
                       what="the ok reply")  # the command's worker ends once the reply is in
        await more_polls(pilot, screen)  # and the log was read since: it says nothing of a pause
        assert screen.model.state == "running"
        assert "running → pausing…" in status_text(app)  # still on its way: nothing in the log says otherwise
        f.events.emit("state", state="paused", reason="from another viewer")
        await wait_for(pilot, lambda: "paused" in status_text(app), what="paused from the log")
        assert screen.model.state == "paused" and "pausing" not in status_text(app)
        assert screen.query_one(StatusPane).pending is None


def test_a_refused_command_clears_its_marker_and_says_why(fake):
    f = fake(steps=20)
    f.refuse["pause"] = "the run is saving a checkpoint; try again in a moment"
    app = make_app("run", str(f.run.path), poll_interval=POLL)
    told = notifications(app)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live)
        await pilot.press("p")
        log = screen.query_one(LogPane)
        await wait_for(pilot, lambda: any("saving a checkpoint" in e.text for e in log.entries), what="the refusal")
        assert [e.severity for e in log.entries if "saving a checkpoint" in e.text] == ["error"]
        assert screen.query_one(StatusPane).pending is None and "pausing" not in status_text(app)
        assert screen.model.state == "running"
        assert any("saving a checkpoint" in m for m in told)


@pytest.mark.parametrize("how", ["error event", "refused"])
def test_a_sample_that_fails_says_why_in_its_view(fake, how):
    f = fake(steps=20)
    if how == "refused":
        f.refuse["sample"] = "the prompt has characters the model does not know: 'é'"
    else:
        f.sample_error = "sampling failed: out of memory"
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live)
        await pilot.press("s", *"Hi", "enter")
        pane = screen.query_one(SamplePane)
        await wait_for(pilot, lambda: pane.views and pane.views[-1].has_class("-failed"), what="the failed view")
        text = text_of(pane.views[-1])
        assert "sample failed" in text
        assert ("does not know" in text) if how == "refused" else ("out of memory" in text)
        assert not pane.pending_ids()
        assert any(e.severity == "error" for e in screen.query_one(LogPane).entries)


def test_a_pending_sample_fails_when_the_run_ends_before_answering(fake):
    f = fake(steps=20)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live)
        pane = screen.query_one(SamplePane)
        pane.add_pending("lost", "a prompt")  # accepted, then the run stopped before generating
        f.events.emit("state", state="stopped", reason="stop requested")
        await wait_for(pilot, lambda: pane.views[-1].has_class("-failed"), what="the failed view")
        assert "before answering" in text_of(pane.views[-1])


def test_k_cancels_the_sample_in_progress(fake):
    f = fake(steps=20)
    f.slow_samples = True
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live)
        assert screen.check_action("cancel_sample", ()) is False  # nothing to cancel: not offered
        await pilot.press("s", *"Hi", "enter", "escape")
        pane = screen.query_one(SamplePane)
        await wait_for(pilot, lambda: f.in_progress, what="the run taking the sample")
        assert "k cancels" in text_of(pane.views[-1]) and screen.check_action("cancel_sample", ()) is True
        await pilot.press("k")
        await wait_for(pilot, lambda: not pane.pending_ids(), what="the cancelled view")
        view = text_of(pane.views[-1])
        assert "cancelled" in view and "half a" in view and not pane.views[-1].has_class("-failed")
        assert not f.in_progress
        assert [r["cmd"] for r in f.received] == ["sample", "cancel"]
        assert screen.check_action("cancel_sample", ()) is False


# --------------------------------------------------------------------------- inspect, alert, export


def test_cursor_reads_out_the_point_under_it_and_esc_hides_it(fake):
    f = fake(steps=50)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=(80, 24))
    async def _(pilot):
        screen = app.screen
        loss = screen.query_one(LossPane)
        await wait_for(pilot, lambda: screen.model.iter == 500 and loss.canvas.figure.points > 0)
        assert loss.cursor is None and not loss.readout.display
        assert screen.check_action("hide_cursor", ()) is False
        await pilot.press("right")  # the cursor appears at the newest point
        assert loss.cursor == 500 and loss.readout.display
        await pilot.press("left", "left", "left")
        m = screen.model
        k = m.steps.index_near(loss.cursor)
        assert loss.cursor == m.iters[k] < 500
        point = m.steps.point(k)
        await wait_for(pilot, lambda: f"iter {point.iter}" in str(loss.readout.render()), what="the readout")
        text = str(loss.readout.render())
        assert f"iter {point.iter}" in text and point.iter == loss.cursor
        assert f"{fmt_count(point.tokens)} tok" in text and point.tokens == point.iter * 768
        assert f"loss {point.loss:.4f}" in text and point.loss == pytest.approx(loss_at(point.iter))
        eval_iter, val = m.val_at(point.iter)
        assert f"val {val:.4f} @{eval_iter}" in text and eval_iter == point.iter // 250 * 250
        assert f"lr {fmt_lr(lr_at(point.iter))}" in text and f"grad {grad_norm_at(point.iter):.3g}" in text
        fig = loss.canvas.figure
        assert [x for x, _ in fig.v_lines] == [point.iter]  # the cursor line on the plot
        await pilot.press("shift+left")
        assert loss.cursor < point.iter
        for _ in range(60):
            await pilot.press("left")
        assert loss.cursor == m.iters[0]  # stops at the first point
        await pilot.press("escape")
        assert loss.cursor is None and not loss.readout.display and not loss.canvas.figure.v_lines
        names = {c.title for c in app.get_system_commands(screen)}
        assert {"Cursor left", "Zoom: all/last 50%/last 10%", "LR / grad norm plot", "Save SVG"} <= names


def test_z_zooms_to_the_recent_part_of_the_run_and_back(fake):
    f = fake(steps=100)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=(160, 48))
    async def _(pilot):
        loss = app.screen.query_one(LossPane)
        await wait_for(pilot, lambda: app.screen.model.iter == 1000 and loss.canvas.figure.points > 0)
        train = lambda: loss.canvas.figure.series[0].xs  # noqa: E731
        assert train()[0] == 10 and train()[-1] == 1000
        await pilot.press("z")
        assert loss.zoom == 0.5 and 500 <= train()[0] <= 510 and train()[-1] == 1000
        assert loss.canvas.figure.series[1].xs == [750, 1000]  # evals in view only
        assert "iter t · 50% z" in loss.border_subtitle
        await pilot.press("z")
        assert 900 <= train()[0] <= 910 and train()[-1] == 1000
        await pilot.press("z")
        assert loss.zoom == 1.0 and train()[0] == 10


def test_an_anomaly_is_marked_on_the_plot_and_logged_with_its_zscore(fake):
    f = fake(steps=30)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=(80, 24))
    async def _(pilot):
        screen = app.screen
        loss = screen.query_one(LossPane)
        await wait_for(pilot, lambda: screen.model.iter == 300 and loss.canvas.figure.points > 0)
        assert [s.label for s in loss.canvas.figure.series] == ["train", "val"]
        f.events.emit("anomaly", iter=310, kind="loss_spike", action="none", value=3.9, zscore=12.34)
        f.step()  # iter 310, its (logged) loss spiked too in a real run; here the marker holds the value
        f.events.emit("anomaly", iter=320, kind="grad_spike", action="skipped_step", value=55.0, zscore=8.0)
        f.step()
        log = screen.query_one(LogPane)
        await wait_for(pilot, lambda: sum("anomaly" in e.text for e in log.entries) == 2, what="the log lines")
        first, second = [e for e in log.entries if "anomaly" in e.text]
        assert first.severity == second.severity == "warn"
        assert "loss spike 3.9" in first.text and "z 12.3" in first.text and "training went on" in first.text
        assert "grad spike 55" in second.text and "step skipped" in second.text
        await wait_for(pilot, lambda: any(s.label == "spike" for s in loss.canvas.figure.series), what="markers")
        await pilot.press(*["left_square_bracket"] * 8)  # raw loss: nothing clamps the marker
        spikes = next(s for s in loss.canvas.figure.series if s.label == "spike")
        assert spikes.xs == [310, 320] and spikes.scatter and spikes.color == "error"
        assert spikes.ys == [3.9, pytest.approx(loss_at(320))]  # a grad spike sits on the loss curve
        # the log pane paints warnings in the theme's warning colour
        assert log._style(first) == log.get_component_rich_style("log--warn", partial=True)


def test_v_saves_an_svg_screenshot_into_the_run_folder_and_says_where(fake):
    f = fake(steps=10)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        await wait_for(pilot, lambda: app.screen.model.iter == 100)
        await pilot.press("v")
        svgs = list(f.run.path.glob("*.svg"))
        assert len(svgs) == 1 and svgs[0].name.startswith(f.run.name) and "<svg" in svgs[0].read_text()[:300]
        log = app.screen.query_one(LogPane)
        assert any(str(svgs[0]) in e.text for e in log.entries)


def test_g_shows_learning_rate_and_gradient_norm_under_the_loss(fake):
    f = fake(steps=50)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app, size=(80, 24))
    async def _(pilot):
        loss = app.screen.query_one(LossPane)
        await wait_for(pilot, lambda: app.screen.model.iter == 500 and loss.canvas.figure.points > 0)
        assert not loss.aux_canvas.display
        await pilot.press("g")
        assert loss.aux_canvas.display
        await wait_for(pilot, lambda: loss.aux_canvas.size.height > 0, what="the lr / grad plot laid out")
        assert loss.aux_canvas.size.height >= 5 and loss.canvas.size.height >= 5
        lr, grad = loss.aux_canvas.figure.series
        assert lr.label == "lr ÷ 1.00e-03" and grad.label.startswith("grad norm ÷ ")
        assert lr.ys[-1] == pytest.approx(1.0) and lr.ys[0] == pytest.approx(0.1)  # warm-up to the peak
        assert max(grad.ys) == pytest.approx(1.0) and grad.ys[-1] == pytest.approx(grad_norm_at(500) / grad_norm_at(10))
        await pilot.press("g")
        assert not loss.aux_canvas.display
