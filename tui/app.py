"""The cockpit app: one factory, `make_app`, shared by the command line (`main`) and the tests.

The cockpit is a viewer and remote control: it reads a run's event log and talks to the run
over its control socket. It never imports torch (the engine trains in its own process), so it
starts fast and stays light over SSH.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.screen import Screen

from gpt2_cockpit.engine.runs.rundir import RunDir

from .screens.home import HomeScreen
from .screens.run import RunScreen
from .terminal import quiet_input
from .widgets.plan import doctor_argv as default_doctor_argv


class CockpitApp(App):
    CSS_PATH = "cockpit.tcss"
    TITLE = "gpt2-cockpit"

    def __init__(self, mode: str = "home", run: str | Path | None = None, *, runs: Iterable[str | Path] = (),
                 poll_interval: float | None = None, doctor_argv: list[str] | None = None) -> None:
        super().__init__()
        if mode not in ("home", "run", "compare"):
            raise ValueError(f"mode must be 'home', 'run' or 'compare', not {mode!r}")
        if mode == "run" and run is None:
            raise ValueError("mode 'run' needs a run directory")
        self.compare_paths = [Path(p) for p in runs]
        if mode == "compare" and len(self.compare_paths) < 2:
            raise ValueError("mode 'compare' needs two or more run directories")
        self.mode = mode
        self.run_path = Path(run) if run is not None else None
        self.poll_interval = poll_interval  # None: the run screen's own pace (tui/pace.py); tests fix it
        self.doctor_argv = doctor_argv or default_doctor_argv()

    def on_mount(self) -> None:
        if self.mode == "run":
            self.push_screen(RunScreen(RunDir(self.run_path), poll_interval=self.poll_interval))
        elif self.mode == "compare":
            self.push_screen(HomeScreen())  # Esc from compare lands on the runs
            self.open_compare([RunDir(p) for p in self.compare_paths])
        else:
            self.push_screen(HomeScreen())

    def open_run(self, run: RunDir) -> None:
        self.push_screen(RunScreen(run, poll_interval=self.poll_interval))

    def open_compare(self, runs: list[RunDir]) -> None:
        from .screens.compare import CompareScreen

        self.push_screen(CompareScreen(runs))

    def go_home(self) -> None:
        """Back to the home screen: the one under this run screen, or a new one."""
        if any(isinstance(s, HomeScreen) for s in self.screen_stack):
            while not isinstance(self.screen, HomeScreen):
                self.pop_screen()
        else:
            self.switch_screen(HomeScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette lists the screen's key bindings too (p, s, c, x, e, q, ...)."""
        seen = set()
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if not binding.description or not active.enabled or binding.action in seen:
                continue
            seen.add(binding.action)
            help_text = f"{binding.tooltip or binding.description} (key: {binding.key_display or key})"
            yield SystemCommand(binding.description, help_text, partial(self._run_binding, active.node, binding.action))
        yield from super().get_system_commands(screen)

    async def _run_binding(self, node, action: str) -> None:
        await self.run_action(action, node)


def make_app(mode: str = "home", run: str | Path | None = None, **options) -> CockpitApp:
    """The cockpit, opened on the home screen, attached to the run directory `run`, or comparing
    the run directories `runs=[...]` (mode "compare")."""
    return CockpitApp(mode, run, **options)


def main(mode: str = "home", run: str | None = None) -> int:
    quiet_input()  # no ten wakeups a second while nobody types (tui/terminal.py)
    app = make_app(mode, run)
    app.run()
    return app.return_code or 0
