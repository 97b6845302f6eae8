"""The preset editor: every model/data/train field of a preset in a form, validated as you type
by the engine's own config rules, with the plan beside it updating live; saved as a user preset.

The save-as name starts as one no preset has yet (`cpu-tiny-mine`, then `cpu-tiny-mine-2`, ...);
saving over a preset of yours, or shadowing a shipped one, asks first."""

from __future__ import annotations

import dataclasses
import re
from functools import partial
from typing import Any, get_type_hints

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError

from ..validation import Checked, failures
from ..widgets.dialogs import ConfirmScreen, value_text
from ..widgets.plan import Planner, PlanPane, PlanResult


def editable_keys(cfg: cfgmod.Config) -> list[str]:
    """The model/data/train keys that mean something for this preset's engine, in file order."""
    foreign = cfgmod.PRETRAIN_ONLY if cfg.engine == "finetune" else cfgmod.FINETUNE_ONLY
    keys = []
    for table, cls in cfgmod.TABLES.items():
        for f in dataclasses.fields(cls):
            key = f"{table}.{f.name}"
            if key not in foreign:
                keys.append(key)
    return keys


_HINTS = {table: get_type_hints(cls) for table, cls in cfgmod.TABLES.items()}


def parse_field(key: str, text: str) -> Any:
    """What the user typed, as the config value: strings stay as typed, the rest is TOML syntax."""
    table, name = key.split(".")
    if _HINTS[table][name] is str:
        return text
    return cfgmod.parse_value(text.strip())


def field_id(key: str) -> str:
    return "field-" + key.replace(".", "-").replace("_", "-")


def new_preset_name(base: str) -> str:
    """A name for the edited copy of preset `base` that no preset has yet: base-mine, base-mine-2, ..."""
    taken = {i.name for i in presets.available()}
    stem = re.sub(r"-mine(-\d+)?$", "", base) + "-mine"  # editing cpu-tiny-mine offers cpu-tiny-mine-2
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


class PresetEditScreen(Planner, Screen[str | None]):
    """Dismisses with the saved preset's name, or None."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save preset", tooltip="Save these settings as your own preset"),
        Binding("escape", "back", "Back", tooltip="Back to home without saving"),
    ]

    def __init__(self, preset_name: str) -> None:
        super().__init__()
        self.preset_name = preset_name
        self.base = presets.load(preset_name)
        self.keys = editable_keys(self.base)
        self.cfg: cfgmod.Config | None = self.base  # the valid config of the form, None while invalid
        self.errors: dict[str, str] = {}  # key (or "*" for the changes together) -> why not
        self.origin = f"preset {preset_name}"
        self._texts = {field_id(k): value_text(self.base.get(k)) for k in self.keys}

    def compose(self) -> ComposeResult:
        with Horizontal(id="edit-main"):
            with VerticalScroll(id="edit-form"):
                for table in cfgmod.TABLES:
                    keys = [k for k in self.keys if k.startswith(f"{table}.")]
                    yield Static(f"[{table}]", classes="form-section", markup=False)
                    with Horizontal(classes="form-table"):  # a column of names beside a column of inputs
                        yield Static("\n".join(k.split(".")[1] for k in keys), classes="form-names")
                        with Vertical(classes="form-inputs"):
                            for key in keys:
                                yield Input(value_text(self.base.get(key)), id=field_id(key), compact=True,
                                            classes="form-input", validators=[Checked(partial(self._check, key))])
            with Vertical(id="edit-side"):
                yield PlanPane(id="edit-plan")
                yield Static("", id="edit-error", classes="form-error", markup=False)
                with Horizontal(id="save-row"):
                    yield Label("save as", classes="form-label")
                    yield Input(new_preset_name(self.preset_name), id="save-name", compact=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#edit-form").border_title = f"edit · {self.preset_name} ({self.base.engine})"
        self._replan()

    def inputs(self) -> dict[str, Input]:
        return {key: self.query_one(f"#{field_id(key)}", Input) for key in self.keys}

    def _check(self, key: str, text: str) -> None:
        """One field against the preset (an input's validator: it marks the input invalid)."""
        cfgmod.with_overrides(self.base, {key: parse_field(key, text)}, origin=self.origin)

    def validate(self) -> cfgmod.Config | None:
        """The form's config if every field is valid and the fields are valid together;
        otherwise None, and the error line says why."""
        self.errors.pop("*", None)
        cfg = None
        if not self.errors:
            values = {key: parse_field(key, inp.value) for key, inp in self.inputs().items()}
            changed = {k: v for k, v in values.items()
                       if v != self.base.get(k) or type(v) is not type(self.base.get(k))}
            try:
                cfg = cfgmod.with_overrides(self.base, changed, origin=self.origin) if changed else self.base
            except UserError as e:  # each change is fine alone; together they break a rule
                self.errors["*"] = str(e)
        self.query_one("#edit-error", Static).update("\n".join(self.errors.values()))
        return cfg

    def on_input_changed(self, event: Input.Changed) -> None:
        key = event.input.id
        if key == "save-name" or self._texts.get(key) == event.value:
            return  # not an edit (each input reports its first value when it mounts)
        self._texts[key] = event.value
        name = next(k for k in self.keys if field_id(k) == key)
        error = failures(event.validation_result)
        if error:
            self.errors[name] = error
        else:
            self.errors.pop(name, None)
        self.cfg = self.validate()
        if self.cfg is not None:
            self._replan()

    def _replan(self) -> None:
        self.query_one(PlanPane).show(self.preset_name, "", None)
        self.request_plan(self.preset_name, self.cfg)

    def plan_ready(self, key: str, result: PlanResult) -> None:
        self.query_one(PlanPane).show(self.preset_name, "", result)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "save-name":
            self.action_save()
        else:
            self.focus_next()

    def action_save(self) -> None:
        cfg = self.validate()
        if cfg is None:
            self.notify("fix the highlighted fields first", severity="error")
            return
        name = self.query_one("#save-name", Input).value.strip()
        existing = {i.name: i for i in presets.available()}.get(name)
        if existing is None:
            self._save(cfg, name)
            return
        if existing.origin == "user":
            question = f"Your preset '{name}' exists ({existing.path}).\n\nReplace it with these settings?"
        else:
            question = (f"'{name}' is a shipped preset.\n\nSave these settings as your own '{name}', used "
                        f"instead of the shipped one from now on?")

        def answered(yes: bool | None) -> None:
            if yes:
                self._save(cfg, name)

        self.app.push_screen(ConfirmScreen(question, yes="Replace" if existing.origin == "user" else "Save"),
                             answered)

    def _save(self, cfg: cfgmod.Config, name: str) -> None:
        try:
            path = presets.save_user(dataclasses.replace(cfg), name)
        except UserError as e:
            self.notify(str(e), severity="error")
            return
        self.notify(f"saved as {path}", title=f"preset {name}")
        self.dismiss(name)

    def action_back(self) -> None:
        self.dismiss(None)
