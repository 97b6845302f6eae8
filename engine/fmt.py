"""How figures read, in one place: the command line, the planner and the cockpit all print
durations, counts, rates and memory the same way. Pure Python (no torch, no textual).

A figure a device or run has not reported (None, NaN, the wrong type) is shown as N/A.
"""

from __future__ import annotations

import math
from typing import Any

NA = "N/A"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_float(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if _number(v) else NA


def fmt_lr(v: Any) -> str:
    return f"{v:.2e}" if _number(v) else NA


def fmt_count(v: Any, unit: str = "") -> str:
    """12345 -> '12.3k', 5.2e9 -> '5.2G' (three significant digits, for panes)."""
    if not _number(v):
        return NA
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}{unit}"
    return f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def fmt_si(n: float, unit: str = "") -> str:
    """40_560_000 -> '40.56M', 1.0486e10 -> '10.49B'; with a unit, 3.1e18 -> '3.15 EFLOP' (for reports)."""
    for div, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}" if unit else f"{n / div:.2f}{suffix}"
    return f"{n:g} {unit}".strip()


def fmt_duration(seconds: Any) -> str:
    """A countdown or an age to the second: '42s', '3m 07s', '5h 02m', '2d 03h'."""
    if not _number(seconds) or seconds < 0:
        return NA
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def fmt_age(seconds: float) -> str:
    """A coarse age for tables of runs: '40s', '12m', '3.5h', '9d'."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def fmt_hours(hours: float) -> str:
    """A planned duration: '<1 s', '40 s', '12 min', '31.1 h', '3.2 days (77 h)'."""
    if hours < 1 / 3600:
        return "<1 s"
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days ({hours:,.0f} h)"


def fmt_ms(ms: float | None) -> str:
    """A step time: '0.52 ms', '58 ms', '1.49 s'."""
    if ms is None:
        return "n/a"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms" if ms >= 10 else f"{ms:.2g} ms"


def fmt_mfu(v: Any) -> str:
    """MFU as the engine reports it: a fraction of the GPU's peak (0.42 -> '42.0%')."""
    if not _number(v) or v < 0:
        return NA
    return f"{v * 100:.1f}%"


def fmt_pct(v: Any) -> str:
    return f"{v:.0f}%" if _number(v) else NA


def fmt_mem(used: Any, total: Any) -> str:
    """GPU memory in bytes (as the `gpu` events report it) -> '10.2/12.0 GiB'."""
    def gib(v: Any) -> str:
        return f"{v / 1024**3:.1f}" if _number(v) else NA

    if used is None and total is None:
        return NA
    return f"{gib(used)}/{gib(total)} GiB"
