"""The real cockpit (make_app) against a real run process: a tiny model training on CPU in the
background, driven with Pilot the way a user drives it. This is the control protocol end to
end: every change on screen comes from the run's event log, the replies only accept or refuse.
"""

from __future__ import annotations

import pytest
from fakerun import START, kill_if_running, process_gone, run_app, spawn_real_run, status_text, text_of, wait_for
from helpers import wait_until

from gpt2_cockpit.tui.app import make_app
from gpt2_cockpit.tui.widgets.dialogs import ConfirmScreen, LiveSettingsScreen
from gpt2_cockpit.tui.widgets.log_pane import LogPane
from gpt2_cockpit.tui.widgets.samples import SamplePane
from gpt2_cockpit.tui.widgets.status import StatusPane


@pytest.fixture
def real_run(corpus):
    """A detached tiny run that would train for a long time unless stopped."""
    run, pid = spawn_real_run(corpus, "real")
    yield run, pid
    kill_if_running(pid)


def test_pause_sample_set_resume_and_stop_a_real_run(real_run):
    run, pid = real_run
    app = make_app("run", run.path, poll_interval=0.1)

    @run_app(app, size=(100, 30))
    async def _(pilot):
        screen = app.screen
        m = screen.model
        status = screen.query_one(StatusPane)
        log = screen.query_one(LogPane)
        await wait_for(pilot, lambda: m.state == "running" and m.iter, timeout=START, what="the first steps")

        # p: pause; the status says so once the run's `state` event is in the log
        await pilot.press("p")
        await wait_for(pilot, lambda: m.state == "paused" and status.pending is None, what="paused")
        assert "paused" in status_text(app) and status.has_class("-paused")
        paused_at = m.iter

        # s, a prompt, Enter: the pending view resolves from the run's `sample` event
        await pilot.press("s", *"The", "enter")
        pane = screen.query_one(SamplePane)
        await wait_for(pilot, lambda: pane.views and pane.views[-1].sample is not None
                       and not pane.pending_ids(), what="the sample")
        sample = pane.views[-1].sample
        assert sample.request_id and sample.prompt == "The" and len(sample.text) > len("The")
        assert "prompt" in text_of(pane.views[-1]) and not pane.views[-1].has_class("-failed")
        await pilot.press("escape")  # back from the prompt, so single keys act again

        # e: the live-settings dialog sets the learning rate; the `set` event lands in the log pane
        await pilot.press("e")
        dialog = app.screen
        assert isinstance(dialog, LiveSettingsScreen)
        lr = dialog.query_one("#set-train-learning-rate")
        lr.value = "0.0005"
        lr.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("set train.learning_rate" in e.text for e in log.entries),
                       what="the set event")
        assert screen.settings["train.learning_rate"] == pytest.approx(5e-4)
        assert m.iter == paused_at and m.state == "paused"  # still paused all along

        # p again: resume; training goes on from where it paused, at the new learning rate
        await pilot.press("p")
        await wait_for(pilot, lambda: m.state == "running" and m.iter > paused_at + 2, what="training again")
        assert m.last_step["lr"] == pytest.approx(5e-4, rel=0.01)

        # x, y: stop; the run writes stopped and its process exits
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: m.state == "stopped", timeout=30, what="stopped")
        await wait_for(pilot, lambda: m.alive is False, timeout=30, what="the process to exit")
        assert "stopped" in status_text(app) and not m.live
        assert not [e for e in log.entries if e.severity == "error"], [e.text for e in log.entries]

    wait_until(lambda: process_gone(pid), timeout=10, what="the run process to exit")
