"""What a sample request may ask for: the defaults and the checks, shared by the command line,
the cockpit and the run itself (which checks every request it takes). No torch."""

from __future__ import annotations

import math

from .errors import UserError

MAX_NEW_TOKENS = 200
TEMPERATURE = 0.8
TOP_K = 200  # 0: no top-k


def check(max_new_tokens: int, temperature: float, top_k: int) -> None:
    """Raise UserError (one sentence naming the setting) for a request the run would refuse."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"max_new_tokens {max_new_tokens!r}: needs a whole number of at least 1")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"temperature {temperature!r}: must be a number greater than 0")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise UserError(f"top_k {top_k!r}: must be a whole number, not negative (0 means no top-k)")
