"""Modal dialogs: confirm (stop the run?) and the live-settings editor."""

from __future__ import annotations

from functools import partial
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine.errors import UserError

from ..validation import Checked, failures


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no, answered with y/n (or Enter on a button); Esc means no."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error", compact=True)
                yield Button("Cancel (n)", id="no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def value_text(v: Any) -> str:
    """A config value as the user would type it (TOML syntax, strings bare)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if isinstance(v, str) else repr(v)


class LiveSettingsScreen(ModalScreen[dict | None]):
    """Edit the settings a live run accepts (LIVE_KEYS), validated as you type.

    Each input checks its own value with the engine's config rules (a validator); the dialog
    checks the changes together. Dismisses with {key: new value} for the keys that changed, or
    None when cancelled.
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "apply", "Apply"),
    ]

    def __init__(self, cfg: cfgmod.Config, run_name: str = "", keys: tuple[str, ...] = cfgmod.LIVE_KEYS) -> None:
        super().__init__()
        self.cfg = cfg
        self.run_name = run_name or cfg.name
        self.keys = keys
        self.errors: dict[str, str] = {}  # key (or "*" for the changes together) -> why not

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="live-settings"):
            yield Static(f"Live settings of {self.run_name}\nEnter or ctrl+s applies, Esc cancels",
                         classes="dialog-title")
            for key in self.keys:
                with Horizontal(classes="form-row"):
                    yield Label(key, classes="form-label")
                    yield Input(value_text(self.cfg.get(key)), id=_input_id(key), compact=True,
                                classes="form-input", validators=[Checked(partial(self._check, key))])
            yield Static("", id="settings-error", classes="form-error", markup=False)

    def _check(self, key: str, text: str) -> None:
        cfgmod.with_overrides(self.cfg, {key: cfgmod.parse_value(text.strip())}, origin="live settings")

    def _inputs(self) -> dict[str, Input]:
        return {key: self.query_one(f"#{_input_id(key)}", Input) for key in self.keys}

    def changes(self) -> dict[str, Any]:
        out = {}
        for key, inp in self._inputs().items():
            current, text = self.cfg.get(key), inp.value.strip()
            if text == value_text(current):
                continue
            value = cfgmod.parse_value(text)
            if value != current or type(value) is not type(current):
                out[key] = value
        return out

    def on_input_changed(self, event: Input.Changed) -> None:
        key = next(k for k, inp in self._inputs().items() if inp is event.input)
        error = failures(event.validation_result)
        if error:
            self.errors[key] = error
        else:
            self.errors.pop(key, None)
        self.validate()

    def validate(self) -> dict[str, Any] | None:
        """The changes if each is valid and they are valid together; otherwise say why not."""
        self.errors.pop("*", None)
        changes = None
        if not self.errors:
            changes = self.changes()
            try:
                cfgmod.with_overrides(self.cfg, changes, origin="live settings")
            except UserError as e:
                self.errors["*"] = str(e)
                changes = None
        self.query_one("#settings-error", Static).update("\n".join(self.errors.values()))
        return changes

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    def action_apply(self) -> None:
        changes = self.validate()
        if changes is None:
            self.app.bell()
            return
        self.dismiss(changes)

    def action_cancel(self) -> None:
        self.dismiss(None)


def _input_id(key: str) -> str:
    return "set-" + key.replace(".", "-").replace("_", "-")
