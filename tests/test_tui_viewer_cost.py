"""What a viewer costs the run it watches: file reads only, repaints only when something changed
and no more often than its pace, a leaner pace while the machine has no idle core, and a terminal
input thread that sleeps while nobody types. (tests/benchmarks/viewers.py measures the cost of
ten real cockpits on a real run.) CPU-only, offline, no torch."""

from __future__ import annotations

import os
import selectors
import time

import pytest
from fakerun import POLL, fake, more_polls, run_app, status_text, wait_for  # noqa: F401 (fake)

from gpt2_cockpit.tui import pace as pacemod
from gpt2_cockpit.tui import terminal
from gpt2_cockpit.tui.app import make_app
from gpt2_cockpit.tui.pace import LEAN, NORMAL, IdleCores, Pace, next_pace
from gpt2_cockpit.tui.screens.run import RunScreen
from gpt2_cockpit.tui.widgets.loss_plot import LossPane
from gpt2_cockpit.tui.widgets.status import StatusPane

# --------------------------------------------------------------------------- the pace


def stat_line(idle: int, busy: int) -> str:
    # user nice system idle iowait irq softirq steal (jiffies summed over the CPUs)
    return f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n"


def test_idle_cores_reads_proc_stat_once_a_window(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    stat = tmp_path / "stat"
    stat.write_text(stat_line(idle=1000, busy=1000))
    gauge = IdleCores(str(stat), window=0.0)
    assert gauge.value is None
    stat.write_text(stat_line(idle=1100, busy=1300))  # 100 of 400 jiffies idle: one core of four
    assert gauge.update() == pytest.approx(1.0)
    stat.write_text(stat_line(idle=1100, busy=1500))  # none idle
    assert gauge.update() == pytest.approx(0.0)
    slow = IdleCores(str(stat), window=3600)
    stat.write_text(stat_line(idle=5000, busy=1500))
    assert slow.update() is None  # not a window yet: no figure
    assert IdleCores(str(tmp_path / "missing"), window=0.0).update() is None


def test_pace_turns_lean_without_an_idle_core_and_back_with_one():
    assert next_pace(NORMAL, None) is NORMAL
    assert next_pace(NORMAL, 0.2) is LEAN
    assert next_pace(LEAN, 0.8) is LEAN  # in between: no flapping
    assert next_pace(LEAN, 1.5) is NORMAL
    assert next_pace(NORMAL, 0.8) is NORMAL
    assert LEAN.poll > NORMAL.poll and LEAN.status > NORMAL.status and LEAN.plot_share < NORMAL.plot_share


def test_the_run_screen_follows_the_machines_idle_cores(fake, monkeypatch):
    f = fake(steps=20)
    app = make_app("run", str(f.run.path))  # no fixed poll interval: the adaptive pace

    class Gauge:
        value: float | None = None

        def update(self):
            return self.value

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        assert isinstance(screen, RunScreen) and screen.pace is NORMAL
        gauge = screen.idle_cores = Gauge()
        loss = screen.query_one(LossPane)
        await wait_for(pilot, lambda: screen.model.live, what="the run to be live")
        gauge.value = 0.1  # the run keeps every core busy
        await wait_for(pilot, lambda: screen.pace is LEAN, timeout=10, what="the lean pace")
        assert (loss.cpu_share, loss.max_gap) == (LEAN.plot_share, LEAN.plot_max)
        gauge.value = 1.9
        await wait_for(pilot, lambda: screen.pace is NORMAL, timeout=10, what="the normal pace again")
        assert loss.cpu_share == NORMAL.plot_share


# --------------------------------------------------------------------------- what a viewer does


def test_watching_sends_the_run_nothing_and_reads_new_lines_without_a_thread(fake, monkeypatch):
    f = fake(steps=5, step_every=0.05)
    workers = []
    original = RunScreen._poll

    def counted(self):
        workers.append(time.monotonic())
        return original(self)

    monkeypatch.setattr(RunScreen, "_poll", counted)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.model.iters) >= 5, what="the replay")
        polls = screen.feed.polls
        await wait_for(pilot, lambda: len(screen.model.iters) >= 25, what="new steps")
        assert screen.feed.polls > polls + 5
        assert len(workers) == 1  # the replay; the few new lines of each tick are read in place
        assert f.received == []  # a viewer never talks to the run unless the user asks


def test_status_repaints_only_what_changed_and_new_steps_at_its_pace(fake):
    f = fake(steps=20)  # iter 200: no checkpoint yet, so no age ticks on screen
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        status = screen.query_one(StatusPane)
        await wait_for(pilot, lambda: "200/2000" in status_text(app), what="the replayed status")
        screen.set_pace(Pace(POLL, 0.1, NORMAL.plot_share, NORMAL.plot_max))
        repaints = status.repaints
        await more_polls(pilot, screen, 12)  # 12 polls (at least 0.6 s): six status periods, nothing new in the log
        assert status.repaints == repaints
        screen.set_pace(Pace(POLL, 3600.0, NORMAL.plot_share, NORMAL.plot_max))
        for _ in range(3):
            f.step()  # new steps: not urgent, shown at the next status period (an hour away)
        await wait_for(pilot, lambda: screen.model.iter == 230, what="the new steps")
        await more_polls(pilot, screen)  # polls after the new steps: none repaints them early
        assert "200/2000" in status_text(app)
        f.events.emit("checkpoint", iter=230, path=str(f.run.checkpoints / "ckpt-230.pt"), best=True)
        await wait_for(pilot, lambda: "@230" in status_text(app), timeout=5, what="the checkpoint at once")
        assert "230/2000" in status_text(app)  # and the figures with it


def test_plot_redraws_for_new_data_within_its_cpu_budget(fake):
    f = fake(steps=20, step_every=0.02)
    app = make_app("run", str(f.run.path), poll_interval=POLL)

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        loss = screen.query_one(LossPane)
        await wait_for(pilot, lambda: loss.canvas.figure.points > 0, what="the first plot")
        # measured: the figures and their painting
        await wait_for(pilot, lambda: loss.redraw_cost() > 0, what="a measured redraw")
        loss.set_budget(cpu_share=loss.redraw_cost() / 2.0, max_gap=2.0)  # a redraw every 2 s at most
        redraws, drawn_to = loss.redraws, loss.canvas.figure.series[0].xs[-1]
        await pilot.pause(1.0)  # a sleep on purpose: new steps arrive all along, and the budget holds back the redraws
        assert loss.redraws - redraws <= 1
        await wait_for(pilot, lambda: loss.canvas.figure.series[0].xs[-1] > drawn_to, timeout=10,
                       what="a redraw with the new steps")
        await pilot.press("l")  # what the user asks for is drawn at once
        assert loss.canvas.figure.log_y


def test_an_answered_command_shows_at_once_not_at_the_next_poll(fake):
    f = fake(steps=20)
    app = make_app("run", str(f.run.path), poll_interval=30.0)  # the next poll is far away

    @run_app(app)
    async def _(pilot):
        screen = app.screen
        await wait_for(pilot, lambda: screen.model.live, what="the run to be live")
        started = time.monotonic()
        await pilot.press("p")
        await wait_for(pilot, lambda: "paused" in status_text(app) and "pausing" not in status_text(app),
                       timeout=10, what="paused on screen")
        assert time.monotonic() - started < 10 and {"cmd": "pause"} in f.received


# --------------------------------------------------------------------------- the terminal's input thread


def test_the_input_selector_sleeps_while_nobody_types(monkeypatch):
    monkeypatch.setattr(terminal, "IDLE_WAIT", 0.4)
    monkeypatch.setattr(terminal, "QUIET_AFTER", 0.2)
    r, w = os.pipe()
    sel = terminal.QuietSelector()
    try:
        sel.register(r, selectors.EVENT_READ)
        started = time.monotonic()
        assert sel.select(0.1) == []  # just created: input counts as recent, Textual's 0.1 s holds
        assert time.monotonic() - started < 0.3
        time.sleep(0.25)
        started = time.monotonic()
        assert sel.select(0.1) == []  # quiet: one long wait instead of four short ones
        assert time.monotonic() - started >= 0.35
        os.write(w, b"q")
        started = time.monotonic()
        assert sel.select(0.1)  # a key wakes it at once
        assert time.monotonic() - started < 0.3
        os.read(r, 1)
        started = time.monotonic()
        assert sel.select(0.1) == []  # and right after a key, short waits again (a lone Escape)
        assert time.monotonic() - started < 0.3
        assert sel.select(0) == []  # a poll stays a poll
    finally:
        sel.close()
        os.close(r)
        os.close(w)


def test_quiet_input_patches_textuals_driver_once(monkeypatch):
    linux_driver = pytest.importorskip("textual.drivers.linux_driver")
    monkeypatch.setattr(linux_driver, "selectors", selectors)  # restored after the test
    assert terminal.quiet_input()
    assert linux_driver.selectors.SelectSelector is terminal.QuietSelector
    assert linux_driver.selectors.EVENT_READ == selectors.EVENT_READ
    assert terminal.quiet_input()  # a second call changes nothing
    assert selectors.SelectSelector is not terminal.QuietSelector  # nobody else's selectors change
    monkeypatch.setattr(linux_driver, "selectors", object())  # a driver built otherwise: left alone
    assert not terminal.quiet_input()


def test_pace_module_constants_are_sane():
    assert pacemod.LEAN_BELOW < pacemod.NORMAL_ABOVE
    assert NORMAL.plot_max <= LEAN.plot_max
