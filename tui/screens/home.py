"""The home screen: diagnostics summary, presets (shipped and the user's), runs, and the plan
of the highlighted preset. Enter on a preset says what would start (the preset, its plan in one
line, the device) and asks once; Enter on a run attaches to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, OptionList
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.fmt import fmt_age
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.rundir import RunDir, RunIndex, RunSummary

from ..widgets.dialogs import ConfirmScreen
from ..widgets.plan import DiagnosticsPane, Planner, PlanPane, PlanResult, run_doctor

RUNS_REFRESH = 3.0  # seconds between looks at the runs folder while home is showing


class PresetList(OptionList):
    """The presets; the highlight stops at the first and the last (it does not wrap around)."""

    BINDINGS = [
        Binding("enter", "select", "Start", tooltip="Start a run of the highlighted preset (asks first)"),
        Binding("e", "edit", "Edit preset", tooltip="Edit the preset in a form and save it as your own"),
    ]

    def action_edit(self) -> None:
        self.screen.action_edit_preset()

    def action_cursor_up(self) -> None:
        if self.highlighted is None or self.highlighted > 0:
            super().action_cursor_up()

    def action_cursor_down(self) -> None:
        if self.highlighted is None or self.highlighted < self.option_count - 1:
            super().action_cursor_down()


class RunsTable(DataTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Attach", tooltip="Open the run in the cockpit"),
        Binding("space", "toggle_mark", "Mark", tooltip="Mark the run to compare it with others (m)"),
    ]

    def action_toggle_mark(self) -> None:
        if self.row_count:
            self.screen.toggle_mark(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)


class HomeScreen(Planner, Screen):
    AUTO_FOCUS = "PresetList"
    BINDINGS = [
        Binding("r", "refresh", "Refresh", tooltip="Look again at runs and diagnostics"),
        Binding("m", "compare", "Compare", tooltip="Compare the runs marked with space: loss curves, figures, "
                                                 "the config keys that differ"),
        Binding("q", "quit_app", "Quit", tooltip="Leave the cockpit; runs go on"),
        Binding("m", "why('compare')", show=False),  # m while dimmed says why
    ]

    class DiagnosticsReady(Message):
        def __init__(self, checks: list[dict[str, Any]] | str) -> None:
            super().__init__()
            self.checks = checks

    class RunsListed(Message):
        def __init__(self, summaries: list[RunSummary]) -> None:
            super().__init__()
            self.summaries = summaries

    class Launched(Message):
        def __init__(self, run: RunDir | None, error: str | None = None) -> None:
            super().__init__()
            self.run = run
            self.error = error

    def __init__(self) -> None:
        super().__init__()
        self.index = RunIndex()
        self.preset_infos: list[presets.PresetInfo] = []
        self.summaries: list[RunSummary] = []
        self.marked: list[str] = []  # run directories marked to compare, in marking order
        self.plans: dict[str, PlanResult] = {}  # preset -> its plan, as shown
        self._start_when_planned: str | None = None  # Enter came before the plan: ask once it is here

    def compose(self) -> ComposeResult:
        yield DiagnosticsPane(id="diagnostics")
        with Horizontal(id="home-middle"):
            yield PresetList(id="presets")
            yield PlanPane(id="plan")
        yield RunsTable(id="runs", cursor_type="row", zebra_stripes=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#presets").border_title = "presets"
        table = self.query_one(RunsTable)
        table.border_title = "runs"
        table.add_column("", key="mark", width=1)
        table.add_columns("run", "preset", "state", "iter", "loss", "age")
        self._say_marks()
        self.load_presets()
        self._diagnose()
        self._list_runs()

    # ---------------------------------------------------------------- presets and plan

    def load_presets(self, select: str | None = None) -> None:
        self.preset_infos = presets.available()
        self.plans.clear()  # a preset may have changed
        lst = self.query_one(PresetList)
        current = select or self.selected_preset_name()
        lst.clear_options()
        lst.add_options([Option(f"{i.name}{'  (yours)' if i.origin == 'user' else ''}", id=i.name)
                         for i in self.preset_infos])
        names = [i.name for i in self.preset_infos]
        default = current if current in names else _default_preset(names)
        if default in names:
            lst.highlighted = names.index(default)

    def selected_preset_name(self) -> str | None:
        lst = self.query_one(PresetList)
        if lst.highlighted is None or not self.preset_infos:
            return None
        return self.preset_infos[lst.highlighted].name

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        name = event.option.id
        if self._start_when_planned != name:  # Enter on another preset, then a move away: not that one
            self._start_when_planned = None
        try:
            cfg = presets.load(name)
        except UserError as e:
            self.plans[name] = PlanResult([], error=str(e))
            self.query_one(PlanPane).show(name, "", self.plans[name])
            return
        self.query_one(PlanPane).show(name, cfg.description, None)
        self.request_plan(name, cfg)

    def plan_ready(self, key: str, result: PlanResult) -> None:
        self.plans[key] = result
        if self._start_when_planned == key:
            self._start_when_planned = None
            self._confirm_start(key)
        if key != self.selected_preset_name():
            return
        try:
            description = presets.load(key).description
        except UserError:
            description = ""
        self.query_one(PlanPane).show(key, description, result)

    # ---------------------------------------------------------------- starting a run

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        name = event.option.id
        if name in self.plans:
            self._confirm_start(name)
        else:  # its plan is on its way (Enter selects the highlighted preset, which is being planned)
            self._start_when_planned = name

    def _confirm_start(self, name: str) -> None:
        """Say what would start, and start it on yes."""
        plan = self.plans[name]

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"starting {name}…", title="train")
                self._launch(name, [])

        where = f"\non {plan.device}" if plan.device else ""
        self.app.push_screen(ConfirmScreen(
            f"Start a run of {name}?\n\n{plan.summary()}{where}\n\n"
            f"It trains in the background; leaving the cockpit leaves it running.", yes="Start"), answered)

    @work(thread=True, exclusive=True, exit_on_error=False, group="launch")
    def _launch(self, preset: str, overrides: list[str]) -> None:
        try:
            run = launch.create_run(preset, overrides, None)
            launch.spawn(run, resume=False, gpus=1)
        except (UserError, OSError) as e:
            self.post_message(self.Launched(None, str(e)))
            return
        self.post_message(self.Launched(run))

    def on_home_screen_launched(self, message: Launched) -> None:
        if message.error:
            self.notify(message.error, title="could not start the run", severity="error", timeout=10)
            return
        self.app.open_run(message.run)

    def action_edit_preset(self) -> None:
        name = self.selected_preset_name()
        if name is None:
            return
        from .preset_edit import PresetEditScreen

        def saved(new_name: str | None) -> None:
            if new_name:
                self.load_presets(select=new_name)

        self.app.push_screen(PresetEditScreen(name), saved)

    # ---------------------------------------------------------------- runs

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs")
    def _list_runs(self) -> None:
        self.post_message(self.RunsListed(self.index.summaries()))

    def on_home_screen_runs_listed(self, message: RunsListed) -> None:
        self.summaries = message.summaries
        table = self.query_one(RunsTable)
        keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value if table.row_count else None
        table.clear()
        for s in message.summaries:
            loss = f"{s.loss:.4f}" if isinstance(s.loss, (int, float)) else "-"
            table.add_row(self._mark(str(s.path)), s.name, s.preset, s.state, f"{s.iter}/{s.max_iters}", loss,
                          fmt_age(s.age), key=str(s.path))
        paths = {str(s.path) for s in message.summaries}
        if keep is not None and keep in paths:
            table.move_cursor(row=table.get_row_index(keep), animate=False)
        if any(p not in paths for p in self.marked):  # a marked run's folder went away
            self.marked = [p for p in self.marked if p in paths]
            self._say_marks()
        self.set_timer(RUNS_REFRESH, self._refresh_runs_if_showing)

    # ---------------------------------------------------------------- marks and compare

    def _mark(self, path: str) -> Text:
        return Text("●", style=f"bold {self.app.theme_variables.get('accent', 'yellow')}") if path in self.marked else Text(" ")

    def toggle_mark(self, path: str) -> None:
        if path in self.marked:
            self.marked.remove(path)
        else:
            self.marked.append(path)
        self.query_one(RunsTable).update_cell(path, "mark", self._mark(path))
        self._say_marks()

    def _say_marks(self) -> None:
        n = len(self.marked)
        table = self.query_one(RunsTable)
        if n >= 2:
            table.border_subtitle = f"{n} marked · m compares them · space unmarks"
        elif n == 1:
            table.border_subtitle = "1 marked · mark another with space, then m compares"
        else:
            table.border_subtitle = "space marks runs to compare"
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "compare" and len(self.marked) < 2:
            return None  # dimmed in the Footer until two runs are marked
        if action == "why":
            return self.check_action(str(parameters[0]), ()) is None
        return True

    def action_why(self, action: str) -> None:
        self.notify("mark two or more runs with space first", title="compare", severity="warning")

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("mark two or more runs with space first", title="compare")
            return
        self.app.open_compare([RunDir(Path(p)) for p in self.marked])

    def _refresh_runs_if_showing(self) -> None:
        if self.is_current:
            self._list_runs()
        else:
            self.set_timer(RUNS_REFRESH, self._refresh_runs_if_showing)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_run(RunDir(Path(event.row_key.value)))

    # ---------------------------------------------------------------- diagnostics

    @work(thread=True, exclusive=True, exit_on_error=False, group="diagnostics")
    def _diagnose(self) -> None:
        self.post_message(self.DiagnosticsReady(run_doctor(self.app.doctor_argv)))

    def on_home_screen_diagnostics_ready(self, message: DiagnosticsReady) -> None:
        self.query_one(DiagnosticsPane).show(message.checks)

    def action_refresh(self) -> None:
        self.query_one(DiagnosticsPane).update("checking this machine…")
        self._diagnose()
        self.load_presets()

    def action_quit_app(self) -> None:
        self.app.exit()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.notify(f"{error.__class__.__name__}: {error}", title=f"{event.worker.group} failed", severity="error")
            if event.worker.group == "runs":
                self.set_timer(RUNS_REFRESH, self._refresh_runs_if_showing)


def _default_preset(names: list[str]) -> str | None:
    try:
        default = presets.default_name()  # NVML, no torch
    except Exception:
        default = None
    return default if default in names else (names[0] if names else None)
