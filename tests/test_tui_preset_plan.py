"""The plan of a preset, on the home screen and in the preset editor: one worker for both
(widgets/plan.py's Planner), so a plan that finishes after a newer request never overwrites the
newer one, and a planner that fails says so in the pane on both screens."""

from __future__ import annotations

import sys
import threading

import pytest
from fakerun import run_app, wait_for

from gpt2_cockpit.tui.app import make_app
from gpt2_cockpit.tui.screens.home import HomeScreen
from gpt2_cockpit.tui.screens.preset_edit import PresetEditScreen, field_id
from gpt2_cockpit.tui.widgets import plan as planmod
from gpt2_cockpit.tui.widgets.dialogs import ConfirmScreen
from gpt2_cockpit.tui.widgets.plan import Planner, PlanPane, PlanResult

NO_DOCTOR = [sys.executable, "-c", "print('[]')"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class SlowPlanner:
    """compute_plan's stand-in: while `hold` is set, a plan waits for `release`; its one row
    names the preset and micro_batch it planned."""

    def __init__(self) -> None:
        self.hold = False
        self.release = threading.Event()

    def __call__(self, cfg) -> PlanResult:
        if self.hold:
            self.release.wait(20)
        return PlanResult([("planned", f"{cfg.name} mb {cfg.train.micro_batch}")])


@pytest.fixture
def planner(monkeypatch):
    slow = SlowPlanner()
    monkeypatch.setattr(planmod, "compute_plan", slow)
    arrived: list[tuple[str, int]] = []  # (screen class, request number) of each PlanReady
    original = Planner.on_plan_ready

    def spy(self, message):
        arrived.append((type(self).__name__, message.request))
        original(self, message)

    monkeypatch.setattr(Planner, "on_plan_ready", spy)
    slow.arrived = arrived
    yield slow
    slow.release.set()


def test_a_stale_plan_in_the_editor_never_overwrites_the_newer_one(planner):
    app = make_app("home", doctor_argv=NO_DOCTOR)

    @run_app(app, size=(100, 30))
    async def _(pilot):
        await wait_for(pilot, lambda: "mb 12" in app.screen.query_one(PlanPane).text, what="home's plan")
        planner.hold = True
        await pilot.press("e")
        form = app.screen
        assert isinstance(form, PresetEditScreen)
        plan = form.query_one(PlanPane)
        assert "planning" in plan.text
        first = form._plan_request  # the form's first plan, held back
        planner.hold = False
        form.query_one(f"#{field_id('train.micro_batch')}").value = "24"
        await wait_for(pilot, lambda: "mb 24" in plan.text, what="the plan of the edit")
        planner.release.set()  # the first plan ends now, after the newer one
        await wait_for(pilot, lambda: ("PresetEditScreen", first) in planner.arrived, what="the stale plan")
        await pilot.pause()
        assert "mb 24" in plan.text and "mb 12" not in plan.text


def test_a_stale_plan_on_home_is_dropped_and_enter_before_it_starts_nothing_after_a_move(planner):
    planner.hold = True
    app = make_app("home", doctor_argv=NO_DOCTOR)

    @run_app(app, size=(100, 30))
    async def _(pilot):
        screen = app.screen
        assert isinstance(screen, HomeScreen)
        plan = screen.query_one(PlanPane)
        await wait_for(pilot, lambda: screen.selected_preset_name() is not None, what="the presets")
        first_name = screen.selected_preset_name()
        await wait_for(pilot, lambda: screen._plan_request == 1, what="the first plan's request")
        await pilot.press("enter")  # before its plan: it would ask once the plan is here
        planner.hold = False
        await pilot.press("down")
        second_name = screen.selected_preset_name()
        assert second_name != first_name
        await wait_for(pilot, lambda: f"{second_name} mb" in plan.text, what="the second preset's plan")
        planner.release.set()
        await wait_for(pilot, lambda: ("HomeScreen", 1) in planner.arrived, what="the stale plan")
        await pilot.pause()
        assert first_name not in screen.plans and f"{second_name} mb" in plan.text
        assert not isinstance(app.screen, ConfirmScreen)  # the user moved on: no question about the first
        await pilot.press("up")  # its plan again, fresh, and still no question
        await wait_for(pilot, lambda: f"{first_name} mb" in plan.text, what="the first preset's plan")
        await pilot.pause(0.1)
        assert first_name in screen.plans and not isinstance(app.screen, ConfirmScreen)


def test_a_failing_planner_says_so_on_both_screens(monkeypatch):
    def broken(cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(planmod, "compute_plan", broken)
    app = make_app("home", doctor_argv=NO_DOCTOR)

    @run_app(app, size=(100, 30))
    async def _(pilot):
        plan = app.screen.query_one(PlanPane)
        await wait_for(pilot, lambda: "planning failed: RuntimeError: boom" in plan.text, what="home's pane")
        await pilot.press("e")
        form = app.screen
        assert isinstance(form, PresetEditScreen)
        plan = form.query_one(PlanPane)
        await wait_for(pilot, lambda: "planning failed: RuntimeError: boom" in plan.text, what="the editor's pane")
