"""What a sample request may ask for: the defaults and the checks, shared by the command line,
the cockpit and the run itself (which checks every request it takes). No torch."""

from __future__ import annotations

import math

from .errors import UserError

MAX_NEW_TOKENS = 200
TEMPERATURE = 0.8
TOP_K = 200  # 0: no top-k

# Ceilings, so no request can hold a run for long: a sample is generated a slice at a time between
# optimizer steps, and these bound how many slices and how much memory one request can take.
MAX_NEW_TOKENS_LIMIT = 20_000  # ~100 s for the 124M model on one GPU; the KV cache slides past the context
MAX_PROMPT_CHARS = 100_000  # checked before tokenizing; the run then checks the prompt against its context window


def check(max_new_tokens: int, temperature: float, top_k: int, prompt: str = "") -> None:
    """Raise UserError (one sentence naming the setting) for a request the run would refuse."""
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        length = len(prompt) if isinstance(prompt, str) else type(prompt).__name__
        raise UserError(f"the prompt is {length} characters; at most {MAX_PROMPT_CHARS:,} are taken")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise UserError(f"max_new_tokens {max_new_tokens!r}: needs a whole number from 1 to {MAX_NEW_TOKENS_LIMIT:,}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"temperature {temperature!r}: must be a number greater than 0")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise UserError(f"top_k {top_k!r}: must be a whole number, not negative (0 means no top-k)")
