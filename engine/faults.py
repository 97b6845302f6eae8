"""Fault injection: environment variables that make a run fail on purpose, so its handling can be
rehearsed and tested. They exist for the tests and the GPU suite (engine/train/suite_sections.py);
a user never needs them.

They are read once per process (`active()`, cached; `reset()` reads them again: the run process at
its start, tests after changing the environment), and each hook is installed only when its
variable is set, so an ordinary run pays nothing for them.

GPT2_COCKPIT_FAKE_FULL_DISK=FILE      while FILE exists, the run's writes (checkpoints, the event
                                      log, config.toml, prepared data) fail with ENOSPC as on a full
                                      disk; delete FILE to "free space" (engine/fsutil.check_space).
GPT2_COCKPIT_FAKE_OOM_TOKENS=N        any forward pass over more than N tokens raises a real
                                      torch.OutOfMemoryError (engine/train/step.py).
GPT2_COCKPIT_FAKE_OOM_RANK=R          with OOM_TOKENS: only rank R of a torchrun group runs out.
GPT2_COCKPIT_FAKE_NAN_AT_ITER=K       the loss of iteration K (1-based, as events count) is NaN.
GPT2_COCKPIT_FAKE_SPIKE_AT_ITER=K     the loss of iteration K is 20 times what it was (and so
                                      are its gradients).
GPT2_COCKPIT_FAKE_PREPARE_SECONDS=S   data preparation sleeps S seconds per prepared unit (a slow
                                      preparation, engine/data/prepare.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FULL_DISK = "GPT2_COCKPIT_FAKE_FULL_DISK"
OOM_TOKENS = "GPT2_COCKPIT_FAKE_OOM_TOKENS"
OOM_RANK = "GPT2_COCKPIT_FAKE_OOM_RANK"
NAN_AT_ITER = "GPT2_COCKPIT_FAKE_NAN_AT_ITER"
SPIKE_AT_ITER = "GPT2_COCKPIT_FAKE_SPIKE_AT_ITER"
PREPARE_SECONDS = "GPT2_COCKPIT_FAKE_PREPARE_SECONDS"

NAMES = (FULL_DISK, OOM_TOKENS, OOM_RANK, NAN_AT_ITER, SPIKE_AT_ITER, PREPARE_SECONDS)

SPIKE_FACTOR = 20.0  # SPIKE_AT_ITER multiplies that iteration's loss by this


@dataclass(frozen=True)
class Faults:
    """The faults this process injects; None (0.0 for prepare_seconds) where none is."""

    full_disk: Path | None = None
    oom_tokens: int | None = None
    oom_rank: int | None = None
    nan_at_iter: int | None = None
    spike_at_iter: int | None = None
    prepare_seconds: float = 0.0

    @property
    def any(self) -> bool:
        return self != Faults()


def _int(env, name: str) -> int | None:
    value = env.get(name)
    return int(value) if value else None


def read(env=None) -> Faults:
    """The faults that `env` (os.environ by default) asks for; not cached."""
    env = os.environ if env is None else env
    flag = env.get(FULL_DISK)
    return Faults(
        full_disk=Path(flag) if flag else None,
        oom_tokens=_int(env, OOM_TOKENS),
        oom_rank=_int(env, OOM_RANK),
        nan_at_iter=_int(env, NAN_AT_ITER),
        spike_at_iter=_int(env, SPIKE_AT_ITER),
        prepare_seconds=float(env.get(PREPARE_SECONDS) or 0),
    )


_active: Faults | None = None


def active() -> Faults:
    """This process's faults, read from the environment on the first call."""
    return _active if _active is not None else reset()


def reset() -> Faults:
    """Read the environment again (after a test or the suite changed it); returns the new faults."""
    global _active
    _active = read()
    return _active
