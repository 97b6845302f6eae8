"""Input validators built on the engine's own rules, so the cockpit never keeps a second copy.

`Checked` turns any engine check that raises UserError (or ValueError while parsing) into a
Textual `Validator`: the Input marks itself invalid (Textual's own `-invalid` style) and the
failure's description is the engine's one sentence.
"""

from __future__ import annotations

from typing import Any, Callable

from textual.validation import ValidationResult, Validator

from gpt2_cockpit.engine.errors import UserError


class Checked(Validator):
    """Valid when `check(text)` returns without raising UserError or ValueError."""

    def __init__(self, check: Callable[[str], Any]) -> None:
        super().__init__()
        self.check = check

    def validate(self, value: str) -> ValidationResult:
        try:
            self.check(value)
        except (UserError, ValueError) as e:
            return self.failure(str(e), value)
        return self.success()


def failures(result: ValidationResult | None) -> str | None:
    """The failure sentences of a validation, or None when it passed (or nothing validated)."""
    if result is None or result.is_valid:
        return None
    return " ".join(d for d in result.failure_descriptions if d) or "invalid value"
