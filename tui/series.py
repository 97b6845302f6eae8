"""A run's step history in bounded memory: consecutive steps folded into buckets.

A week-long run logs hundreds of thousands of `step` events; a plot 200 columns wide shows a few
hundred points of them. `StepSeries` keeps at most MAX_BUCKETS buckets: while there is room each
bucket holds one step (a short run is kept exactly), and when the buckets are full every two
neighbours are merged into one, so a bucket then covers twice as many steps. Memory stays the
same for a run of 2,000 steps and one of 2,000,000.

Per bucket: the loss's lowest, highest and sum (so a spike survives any merge and a mean can be
smoothed) and the last step's figures (iteration, loss, tokens, learning rate, gradient norm,
Unix time, active seconds). A bucket of one step is that step.

`extend_lines` folds raw `step` lines as the run's EventWriter writes them without decoding every
line: it takes the losses the reader's regular expression already picked out of them and decodes
only the line that ends a bucket (the one whose figures the bucket keeps). On attach that is the
difference between parsing 200,000 JSON objects and a few thousand (see
tests/benchmarks/attach_big_log.py).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Callable

from gpt2_cockpit.engine.runs.metrics import tokens_at

MAX_BUCKETS = 4096  # full: pairs merge, so between 2048 and 4096 buckets cover the whole run


def _number(v: Any) -> float | None:
    """A finite number from the log, or None (null, NaN written as null, a missing field)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


@dataclass
class Point:
    """One bucket's figures: its last step's, and its loss range."""

    iter: int
    loss: float | None  # the last step's
    loss_min: float | None
    loss_max: float | None
    loss_mean: float | None
    tokens: float
    lr: float | None
    grad_norm: float | None
    time: float | None
    elapsed: float | None
    steps: int  # how many step events this bucket holds


class StepSeries:
    """Bucketed step history. `width` steps per bucket (a power of two); the last bucket may be
    open (fewer than `width` steps) and takes the next steps."""

    FIELDS = ("iters", "last", "lo", "hi", "total", "finite", "tokens", "lr", "grad_norm", "time",
              "elapsed", "count")

    def __init__(self, max_buckets: int = MAX_BUCKETS):
        if max_buckets < 2 or max_buckets % 2:
            raise ValueError("max_buckets must be an even number >= 2")
        self.max_buckets = max_buckets
        self.width = 1
        self.steps = 0  # step events folded in (after truncations)
        self._clear()

    def _clear(self) -> None:
        self.iters: list[int] = []  # the last step's iteration per bucket, increasing
        self.last: list[float | None] = []  # the last step's loss
        self.lo: list[float | None] = []
        self.hi: list[float | None] = []
        self.total: list[float] = []  # sum of the finite losses
        self.finite: list[int] = []  # how many finite losses
        self.tokens: list[float] = []
        self.lr: list[float | None] = []
        self.grad_norm: list[float | None] = []
        self.time: list[float | None] = []
        self.elapsed: list[float | None] = []
        self.count: list[int] = []  # steps per bucket

    def __len__(self) -> int:
        return len(self.iters)

    @property
    def last_iter(self) -> int | None:
        return self.iters[-1] if self.iters else None

    def expect(self, steps: float) -> None:
        """A hint before a long replay: about this many steps are coming. An empty series starts
        with buckets wide enough for them, instead of merging its way there (a wrong guess only
        costs resolution or time, never a step)."""
        if self.iters:
            return
        while steps / self.width > self.max_buckets:
            self.width *= 2

    # ---------------------------------------------------------------- adding steps

    def append(self, step: dict[str, Any], elapsed: float | None = None) -> None:
        """One decoded `step` event (its iteration must be past the last one; see truncate)."""
        self._make_room()
        self._add([_number(step.get("loss"))], step, elapsed)

    def _make_room(self) -> int:
        """How many steps the next fold may take: the rest of the open bucket, or a new bucket's
        width (merging neighbours first when the buckets are full)."""
        if self.count and self.count[-1] < self.width:
            return self.width - self.count[-1]
        if len(self.iters) == self.max_buckets:
            self._halve()
            return self._make_room()
        return self.width

    def _add(self, losses: list[float | None], last: dict[str, Any], elapsed: float | None) -> None:
        """Fold consecutive steps into the open bucket, or a new one: `losses` of all of them,
        `last` the decoded last one. The caller keeps len(losses) within _make_room()."""
        finite = [v for v in losses if v is not None] if None in losses else losses
        lo, hi = (min(finite), max(finite)) if finite else (None, None)
        tokens = last.get("tokens")
        if not isinstance(tokens, (int, float)) or isinstance(tokens, bool):
            tokens = self.tokens[-1] if self.tokens else 0
        self.steps += len(losses)
        if self.count and self.count[-1] < self.width:  # the open bucket takes them
            self.lo[-1] = _min(self.lo[-1], lo)
            self.hi[-1] = _max(self.hi[-1], hi)
            self.total[-1] += sum(finite)
            self.finite[-1] += len(finite)
            self.count[-1] += len(losses)
            self.iters[-1], self.last[-1], self.tokens[-1] = last["iter"], _number(last.get("loss")), tokens
            self.lr[-1], self.grad_norm[-1] = _number(last.get("lr")), _number(last.get("grad_norm"))
            self.time[-1], self.elapsed[-1] = _number(last.get("time")), elapsed
            return
        self.lo.append(lo)
        self.hi.append(hi)
        self.total.append(sum(finite))
        self.finite.append(len(finite))
        self.count.append(len(losses))
        self.iters.append(last["iter"])
        self.last.append(_number(last.get("loss")))
        self.tokens.append(tokens)
        self.lr.append(_number(last.get("lr")))
        self.grad_norm.append(_number(last.get("grad_norm")))
        self.time.append(_number(last.get("time")))
        self.elapsed.append(elapsed)

    def _halve(self) -> None:
        """Merge every two neighbouring buckets: half as many, each covering twice the steps."""
        n = len(self.iters)
        pairs = range(0, n - 1, 2)

        def merge(values: list, how: Callable) -> list:
            out = [how(values[i], values[i + 1]) for i in pairs]
            if n % 2:
                out.append(values[-1])
            return out

        self.lo = merge(self.lo, _min)
        self.hi = merge(self.hi, _max)
        self.total = merge(self.total, _plus)
        self.finite = merge(self.finite, _plus)
        self.count = merge(self.count, _plus)
        for name in ("iters", "last", "tokens", "lr", "grad_norm", "time", "elapsed"):
            setattr(self, name, merge(getattr(self, name), _second))  # a merged bucket keeps its last step's
        self.width *= 2

    def extend_lines(self, lines: list[bytes], raw_losses: list[bytes],
                     elapsed: Callable[[float | None], float | None],
                     on_fallback: Callable[[dict[str, Any]], None]) -> tuple[int, dict[str, Any] | None]:
        """Fold raw step lines (consecutive, in log order, each a whole `{"type":"step",...}` line
        in the EventWriter's layout) whose losses, as written, the reader already picked out
        (`raw_losses`, b"2.5" or b"null"). Returns how many of the first lines the fast path
        folded and the last of them decoded (None if none).

        `elapsed(time)` gives the active seconds at a step's Unix time. When the fast path cannot
        be sure of its reading (a line without a plain loss, an iteration that does not advance),
        the rest of the lines are decoded one by one and handed to `on_fallback`, which applies
        the full rules (RunModel's step handler).
        """
        raw = raw_losses
        if len(raw) != len(lines):
            self._fallback(lines, on_fallback)
            return 0, None
        try:
            losses: list[float | None] = list(map(float, raw))
        except ValueError:  # a null loss: the run saw a NaN or inf
            losses = [None if v == b"null" else float(v) for v in raw]
        if not _all_finite(losses):  # e.g. 1e999 in a hand-made log
            losses = [v if v is not None and math.isfinite(v) else None for v in losses]
        i, n, last = 0, len(lines), None
        while i < n:
            j = min(n, i + self._make_room())
            try:
                decoded = json.loads(lines[j - 1])
            except ValueError:
                decoded = None
            it = decoded.get("iter") if isinstance(decoded, dict) else None
            if not isinstance(it, int) or isinstance(it, bool) or (self.iters and it <= self.iters[-1]):
                self._fallback(lines[i:], on_fallback)
                return i, last
            last = decoded
            self._add(losses[i:j], last, elapsed(_number(last.get("time"))))
            i = j
        return n, last

    @staticmethod
    def _fallback(lines: list[bytes], on_step: Callable[[dict[str, Any]], None]) -> None:
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict):
                on_step(e)

    def truncate(self, last_iter: int) -> None:
        """Forget the buckets that end after `last_iter` (a restart from an earlier checkpoint).
        A bucket that straddles it goes too: at most width-1 earlier steps, never a superseded one."""
        k = bisect_left(self.iters, last_iter + 1)
        if k == len(self.iters):
            return
        self.steps -= sum(self.count[k:])
        for name in self.FIELDS:
            del getattr(self, name)[k:]

    # ---------------------------------------------------------------- reading

    def point(self, k: int) -> Point:
        mean = self.total[k] / self.finite[k] if self.finite[k] else None
        return Point(self.iters[k], self.last[k], self.lo[k], self.hi[k], mean, self.tokens[k], self.lr[k],
                     self.grad_norm[k], self.time[k], self.elapsed[k], self.count[k])

    def means(self) -> list[float | None]:
        return [t / n if n else None for t, n in zip(self.total, self.finite)]

    def index_of(self, it: float) -> int | None:
        """The bucket holding iteration `it` (the first whose last iteration is not before it;
        the last bucket for a later one)."""
        if not self.iters:
            return None
        return min(bisect_left(self.iters, it), len(self.iters) - 1)

    def index_near(self, it: float) -> int | None:
        """The bucket whose last iteration is nearest to `it`."""
        if not self.iters:
            return None
        k = bisect_left(self.iters, it)
        if k == len(self.iters):
            return k - 1
        if k > 0 and it - self.iters[k - 1] < self.iters[k] - it:
            return k - 1
        return k

    def tokens_at(self, it: float) -> float:
        """Tokens seen by iteration `it`, interpolated between buckets (metrics.tokens_at's rule)."""
        at = tokens_at(self.iters, self.tokens, it)
        return at if at is not None else 0.0


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else (a if a <= b else b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else (a if a >= b else b)


def _plus(a, b):
    return a + b


def _second(a, b):
    return b


def _all_finite(values: list[float | None]) -> bool:
    """One C-speed sum instead of a test per value (a false alarm only costs the slow filter)."""
    return math.isfinite(sum(v for v in values if v is not None) if None in values else sum(values))
