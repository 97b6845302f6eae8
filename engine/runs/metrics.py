"""A run's figures, read from its event log: the numbers behind `compare`, `metrics` and `plot`.

Pure Python (no torch, no numpy, no printing), so the command line and the cockpit's compare
screen share one reading of the log:

    m = metrics.load(resolve("my-run"))       # RunMetrics: .stats, .steps, .evals, .hellaswag
    m.stats.best_val_loss, m.stats.wall_seconds, m.steps[-1].loss
    metrics.config_diff({m.stats.name: m.stats.config for m in several})

The history is the run's *current* one: a run restarted from the checkpoint at iter K logs a
`run` event with `resumed_from = K`, and what it logged after K before that restart is superseded
(the restart trains those iterations again). Steps, evals and HellaSwag points are dropped the
way the cockpit's RunModel drops them (tui/model.py `_truncate`): on such a `run` event, and on a
step whose iter is not past the last one kept.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Iterable, Mapping, Sequence

from .. import config as cfgmod
from .events import LogReader, StepLines
from .rundir import LogSummary, RunDir

# The states in which the run process is doing the run's work: training, and finishing it
# (`stopping`: the last eval and checkpoint). Paused, preparing (loading data and the model) and
# the gap between a crash and a restart are not counted as wall time.
ACTIVE_STATES = ("running", "stopping")
RECENT_STEPS = 20  # step events behind the tokens/s median (the latest pace, not the warm-up's)
DIFF_IGNORED = ("description",)  # see config_diff


def _finite(v: Any) -> float | None:
    """A number from the log, or None for null / NaN / a missing or mistyped field."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


# --------------------------------------------------------------------------- rows


@dataclass
class StepRow:
    """One `step` event. `elapsed` is the run's active seconds when it was logged (see running_spans)."""

    iter: int
    tokens: int | None = None  # cumulative tokens trained
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None  # None in logs written before it was logged
    ms: float | None = None  # mean optimizer-step time since the previous step event
    tokens_per_sec: float | None = None
    mfu: float | None = None  # a fraction of the GPU's peak; None on CPU
    micro_batch: int | None = None
    grad_accum: int | None = None
    time: float | None = None  # Unix seconds
    elapsed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalRow:
    """One `eval` event. `tokens` is interpolated from the step rows (evals carry no token count)."""

    iter: int
    train_loss: float | None = None
    val_loss: float | None = None
    val_ppl: float | None = None  # finetune runs only
    tokens: int | None = None
    time: float | None = None
    elapsed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class HellaSwagRow:
    """One `hellaswag` event: HellaSwag acc and acc_norm of the weights at `iter` (engine/train/hellaswag.py).
    `tokens` is interpolated from the step rows, as for evals."""

    iter: int
    acc: float | None = None
    acc_norm: float | None = None
    n: int | None = None  # items scored
    seconds: float | None = None  # what scoring them took
    tokens: int | None = None
    time: float | None = None
    elapsed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


STEP_FIELDS = tuple(f.name for f in dataclasses.fields(StepRow))
EVAL_FIELDS = tuple(f.name for f in dataclasses.fields(EvalRow))
HELLASWAG_FIELDS = tuple(f.name for f in dataclasses.fields(HellaSwagRow))


# --------------------------------------------------------------------------- wall time


BACKGROUND_EVENTS = ("gpu", "prepare")  # logged beside the training, by threads that can outlive it


@dataclass
class ActiveClock:
    """The run's active wall time, fed its events in log order: the one rule behind `compare`,
    `metrics`, `plot` and the cockpit (which feeds it as it reads, never holding the log).

    A span opens at a `state` event in ACTIVE_STATES and closes at the next state event that is
    not. A resumed run's log holds one `run` event per process; when a new process starts (its
    `run` event or its `preparing` state) while a span is still open, the previous process died
    without saying so and its span ends at the last event it logged. GPU readings and preparation
    progress (BACKGROUND_EVENTS) come from threads beside the training loop, which can go on
    logging after the loop died, so they are not the run's last word (and the cockpit's fast
    reader does not decode most of them). A log with no state events at all counts from its first
    step. A span still open ends at `now` when given (a live run), else at the last event.
    """

    spans: list[tuple[float, float]] = field(default_factory=list)  # closed (start, end), in log order
    closed: float = 0.0  # their sum, in seconds
    since: float | None = None  # the open span's start
    last: float | None = None  # the newest event's time, BACKGROUND_EVENTS left out
    seen_state: bool = False
    seen_step: bool = False

    def feed(self, e: dict[str, Any]) -> None:
        """One event of the log."""
        kind = e.get("type")
        t = _finite(e.get("time"))
        if t is None or kind in BACKGROUND_EVENTS:
            return
        if kind == "state":
            self.state(e.get("state"), t)
        elif kind == "run":
            self._close(self.last)  # a new process: the last one died without saying so
        elif kind == "step":
            self.step(t)
        self.saw(t)

    def state(self, state: Any, t: float) -> None:
        self.seen_state = True
        if state in ACTIVE_STATES:
            if self.since is None:
                self.since = t
        elif self.since is not None:
            self._close(self.last if state == "preparing" else t)  # preparing: a new process
        self.saw(t)

    def step(self, t: float) -> float:
        """A step logged at t; the active seconds then."""
        if not self.seen_state and not self.seen_step and self.since is None:
            self.since = t  # a log without state events counts from its first step
        self.seen_step = True
        self.saw(t)
        return self.at(t)

    def saw(self, t: float) -> None:
        """Any other event of the run's own at time t (it may be the last one a process logs)."""
        if self.last is None or t > self.last:
            self.last = t

    def at(self, t: float) -> float:
        """Active seconds at Unix time t, for t at or after the events fed so far."""
        return self.closed + (max(t - self.since, 0.0) if self.since is not None else 0.0)

    def seconds(self, now: float | None = None) -> float:
        """Active seconds in all: the open span runs to `now` when given, else to the last event."""
        end = now if now is not None else self.last
        return self.at(end) if end is not None else self.closed

    def all_spans(self, now: float | None = None) -> list[tuple[float, float]]:
        """The closed spans and the open one (to `now`, else the last event)."""
        if self.since is None:
            return list(self.spans)
        end = now if now is not None else self.last
        return self.spans + [(self.since, max(self.since, end if end is not None else self.since))]

    def _close(self, end: float | None) -> None:
        if self.since is not None:
            end = max(self.since, end if end is not None else self.since)
            self.spans.append((self.since, end))
            self.closed += end - self.since
        self.since = None


def running_spans(events: Iterable[dict[str, Any]], now: float | None = None) -> list[tuple[float, float]]:
    """The (start, end) Unix times during which the run was active, in log order (ActiveClock)."""
    clock = ActiveClock()
    for e in events:
        clock.feed(e)
    return clock.all_spans(now)


def wall_seconds(events: Iterable[dict[str, Any]], now: float | None = None) -> float:
    """Seconds the run spent active (the sum of running_spans), across restarts."""
    return round(sum(end - start for start, end in running_spans(events, now)), 3)


# --------------------------------------------------------------------------- history


@dataclass
class History:
    steps: list[StepRow] = field(default_factory=list)
    evals: list[EvalRow] = field(default_factory=list)
    hellaswag: list[HellaSwagRow] = field(default_factory=list)
    reference: tuple[str, float] | None = None  # the GPT-2 size the newest hellaswag event compares with
    resumed_from: int | None = None  # the newest restart's checkpoint iter, if any


def history(events: Iterable[dict[str, Any]], now: float | None = None) -> History:
    """The run's current step, eval and HellaSwag rows, a restart's superseded tail dropped
    (module docstring). (`now` is not needed: an event's active seconds are those at its time.)"""
    log = LogFold()
    log.add(events)
    return log.history()


def tokens_at(iters: Sequence[float], tokens: Sequence[float], it: float) -> float | None:
    """Tokens trained by iteration `it`, from (iteration, cumulative tokens) points in iteration
    order: interpolated linearly between them, from 0 tokens at iteration 0 before the first, and
    past the last at the pace of the last two. None without points. Evals carry no token count:
    `compare`, `metrics` and the cockpit's tokens axis place them by this."""
    n = len(iters)
    if n == 0:
        return None
    i = bisect_left(iters, it)
    if i < n and iters[i] == it:
        return tokens[i]
    if i == 0:
        x0, y0, x1, y1 = 0, 0, iters[0], tokens[0]
    elif i == n:
        x0, y0 = (iters[-2], tokens[-2]) if n > 1 else (0, 0)
        x1, y1 = iters[-1], tokens[-1]
    else:
        x0, y0, x1, y1 = iters[i - 1], tokens[i - 1], iters[i], tokens[i]
    if x1 == x0:
        return y1
    return y0 + (y1 - y0) * (it - x0) / (x1 - x0)


# --------------------------------------------------------------------------- config changes


@dataclass
class ConfigChange:
    """A config key whose value changed while the run went on."""

    key: str  # dotted, e.g. "train.learning_rate"
    old: Any
    new: Any
    iter: int | None  # steps done when the new value took over (None: before any step was logged)
    how: str  # "set" (live), "oom" (an out-of-memory split), "resume" (a restart with other settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_changes(events: Iterable[dict[str, Any]]) -> list[ConfigChange]:
    """Every change of a config key during the run, in log order (LogFold.changes)."""
    log = LogFold()
    log.add(events)
    return log.changes


def spell(value: Any) -> str:
    """A config value as a preset spells it (true/false, numbers, bare strings); '-' if absent."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def value_history(value: Any, changes: Iterable[ConfigChange], key: str) -> str:
    """A key's value in one run, with how it got there: "0.001 → 0.0003 @70" for a learning rate
    set live after 70 steps ("(oom)", "(resume)" mark the other ways); just the value if it never
    changed."""
    mine = [c for c in changes if c.key == key]
    if not mine:
        return spell(value)
    parts = [spell(mine[0].old)]
    for c in mine:
        at = f" @{c.iter}" if c.iter is not None else ""
        parts.append(f"{spell(c.new)}{at}" + (f" ({c.how})" if c.how != "set" else ""))
    return " → ".join(parts)


# --------------------------------------------------------------------------- the run


@dataclass
class RunStats:
    """One run at a glance: what `compare` shows in a row."""

    name: str
    preset: str = "?"
    engine: str = "?"
    state: str = "new"  # as `gpt2-cockpit runs` shows it: the logged state, or "crashed"
    iter: int = 0  # optimizer steps done (of the current history)
    max_iters: int = 0
    tokens: int | None = None  # tokens trained: the last step event's cumulative count
    best_val_loss: float | None = None
    best_val_iter: int | None = None
    last_train_loss: float | None = None
    tokens_per_sec: float | None = None  # median of the last RECENT_STEPS step events
    wall_seconds: float = 0.0  # active time, across restarts (running_spans)
    path: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, TOML-shaped (config.to_raw)
    changes: list[ConfigChange] = field(default_factory=list)  # keys changed during the run (config_changes)
    # HellaSwag (`hellaswag` events): the highest acc_norm, the iter of its (first) evaluation, and
    # the GPT-2 size it compares with (engine/train/hellaswag.py REFERENCES); None before any evaluation
    best_acc_norm: float | None = None
    best_acc_norm_iter: int | None = None
    hellaswag_reference: str | None = None  # e.g. "GPT-2 124M"
    hellaswag_reference_acc_norm: float | None = None  # e.g. 0.2955

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RunMetrics:
    stats: RunStats
    steps: list[StepRow]
    evals: list[EvalRow]
    hellaswag: list[HellaSwagRow] = field(default_factory=list)
    reference: tuple[str, float] | None = None  # (name, acc_norm) of the GPT-2 the run compares with


def load(run: RunDir, events: Iterable[dict[str, Any]] | None = None, now: float | None = None,
         every_step: bool = True) -> RunMetrics:
    """Read a run's log (or use `events`, its whole log in order) and compute its figures.

    `now` ends a live run's open active span (default: the current time, if the run's process is
    alive; a dead run's span ends at its last event). `every_step=False`: only the figures are
    wanted (`compare`), and a long log's steps are not all decoded (LogFold).
    """
    log = LogFold(every_step)
    if events is None:
        for batch in LogReader(run.events_path).batches():
            log.add(batch)
    else:
        log.add(events)
    return log.metrics(run, now)


def best_val(evals: list[EvalRow]) -> tuple[float | None, int | None]:
    """The lowest val loss and the iter of its (first) eval; (None, None) before any eval."""
    scored = [r for r in evals if r.val_loss is not None]
    if not scored:
        return None, None
    best = min(scored, key=lambda r: r.val_loss)
    return best.val_loss, best.iter


def best_acc_norm(rows: list[HellaSwagRow]) -> tuple[float | None, int | None]:
    """The highest HellaSwag acc_norm and the iter of its (first) evaluation; (None, None) before any."""
    scored = [r for r in rows if r.acc_norm is not None]
    if not scored:
        return None, None
    best = max(scored, key=lambda r: r.acc_norm)  # max keeps the first of equals
    return best.acc_norm, best.iter


def best_hellaswag_run(stats: Iterable[RunStats]) -> RunStats | None:
    """The run with the highest best acc_norm (the first of equals); None when none has a HellaSwag point."""
    scored = [s for s in stats if s.best_acc_norm is not None]
    return max(scored, key=lambda s: s.best_acc_norm) if scored else None


def best_run(stats: Iterable[RunStats]) -> RunStats | None:
    """The run with the lowest best val loss (the first of equals); None when none has evaluated."""
    scored = [s for s in stats if s.best_val_loss is not None]
    return min(scored, key=lambda s: s.best_val_loss) if scored else None


# --------------------------------------------------------------------------- reading a log


class LogFold:
    """A run's log folded as it is read: events in log order, or LogReader's items (events and
    StepLines), into what its figures need: the current history's rows (module docstring), the
    active clock, the config changes and the summary. Holds rows, not events.

    `every_step=False` (`compare`, the compare screen) decodes of each run of consecutive raw step
    lines only its first line and its last RECENT_STEPS: the figures come out the same (the last
    step, the recent pace, the tokens at each eval, which follows a step, the active time, which
    needs a run of steps' first and last times) without decoding a week-long log's 200,000 steps.
    The rows then hold those steps only: `metrics` and `plot` read every step.
    """

    def __init__(self, every_step: bool = True):
        self.every_step = every_step
        self.clock = ActiveClock()
        self.rows = History()
        self.summary = LogSummary()
        self.changes: list[ConfigChange] = []
        self.config: dict[str, Any] | None = None  # the newest `run` event's config
        self._current: dict[str, Any] | None = None  # the config as it stands, flattened
        self._last_iter: int | None = None  # the newest step's (what a `set` without an iter follows)

    def add(self, items: Iterable[Any]) -> None:
        for item in items:
            if isinstance(item, StepLines):
                n = len(item.lines)
                if self.every_step or n <= RECENT_STEPS + 1:
                    decoded: Iterable[dict[str, Any]] = item.decoded()
                else:
                    decoded = chain(item.decoded(slice(0, 1)), item.decoded(slice(n - RECENT_STEPS, n)))
                for e in decoded:
                    self.feed(e)
            else:
                self.feed(item)

    def feed(self, e: dict[str, Any]) -> None:
        """One event, in log order."""
        self.summary.feed(e)
        self.clock.feed(e)
        kind = e.get("type")
        if kind == "step":
            self._step(e)
        elif kind == "eval":
            self._scored(self.rows.evals, e, lambda it, t, elapsed: EvalRow(
                iter=it, train_loss=_finite(e.get("train_loss")), val_loss=_finite(e.get("val_loss")),
                val_ppl=_finite(e.get("val_ppl")), time=t, elapsed=elapsed))
        elif kind == "hellaswag":
            self._scored(self.rows.hellaswag, e, lambda it, t, elapsed: HellaSwagRow(
                iter=it, acc=_finite(e.get("acc")), acc_norm=_finite(e.get("acc_norm")), n=_int(e.get("n")),
                seconds=_finite(e.get("seconds")), time=t, elapsed=elapsed))
            ref, ref_acc = e.get("reference"), _finite(e.get("reference_acc_norm"))
            if isinstance(ref, str) and ref_acc is not None:
                self.rows.reference = (ref, ref_acc)
        elif kind == "run":
            self._run(e)
        elif kind == "set" and isinstance(e.get("key"), str):
            it = _int(e.get("iter"))
            self.changes.append(ConfigChange(e["key"], e.get("old"), e.get("new"),
                                             it if it is not None else self._last_iter, "set"))
            if self._current is not None:
                self._current[e["key"]] = e.get("new")
        elif kind == "oom":
            self._oom(e)

    def _elapsed(self, t: float | None) -> float | None:
        """Active seconds at the time of the event just fed (to the millisecond the log carries)."""
        return round(self.clock.at(t), 3) if t is not None else None

    def _truncate(self, last_iter: int) -> None:
        """A restart from the checkpoint at `last_iter` supersedes every row after it."""
        h = self.rows
        for rows in (h.steps, h.evals, h.hellaswag):
            while rows and rows[-1].iter > last_iter:
                rows.pop()

    def _step(self, e: dict[str, Any]) -> None:
        it = _int(e.get("iter"))
        if it is None:
            return
        self._last_iter = it
        steps = self.rows.steps
        if steps and it <= steps[-1].iter:
            self._truncate(it - 1)
        t = _finite(e.get("time"))
        steps.append(StepRow(
            iter=it, tokens=_int(e.get("tokens")), loss=_finite(e.get("loss")), lr=_finite(e.get("lr")),
            grad_norm=_finite(e.get("grad_norm")), ms=_finite(e.get("ms")),
            tokens_per_sec=_finite(e.get("tokens_per_sec")), mfu=_finite(e.get("mfu")),
            micro_batch=_int(e.get("micro_batch")), grad_accum=_int(e.get("grad_accum")),
            time=t, elapsed=self._elapsed(t)))

    def _scored(self, rows: list, e: dict[str, Any], row: Callable[[int, float | None, float | None], Any]) -> None:
        """An eval or a HellaSwag point: it replaces any at the same iter or later (logged again,
        as the cockpit does, or scored again after a restart)."""
        it = _int(e.get("iter"))
        if it is None:
            return
        while rows and rows[-1].iter >= it:
            rows.pop()
        t = _finite(e.get("time"))
        rows.append(row(it, t, self._elapsed(t)))

    def _run(self, e: dict[str, Any]) -> None:
        """A run process started: a restart supersedes what came after its checkpoint, and the
        keys it logs with another value than the run had are changes (`resume --set`)."""
        resumed = _int(e.get("resumed_from"))
        if resumed is not None:
            self.rows.resumed_from = resumed
            self._truncate(resumed)
        if not isinstance(e.get("config"), Mapping):
            return
        self.config = e["config"]
        logged = flatten(e["config"])
        if self._current is not None:
            at = resumed if resumed is not None else 0
            for c in self.changes:  # a change logged after the checkpoint took effect at it
                if c.iter is not None and c.iter > at:
                    c.iter = at
            self.changes += [ConfigChange(key, self._current[key], value, at, "resume") for key, value in logged.items()
                             if key not in DIFF_IGNORED and key in self._current and self._current[key] != value]
        self._current = logged
        self._last_iter = resumed if resumed is not None else self._last_iter

    def _oom(self, e: dict[str, Any]) -> None:
        """An out-of-memory split: micro_batch and grad_accum changed."""
        it, before, after = _int(e.get("iter")), _int(e.get("micro_batch_before")), _int(e.get("micro_batch_after"))
        accum = _int(e.get("grad_accum_after"))
        if before is not None and after is not None and before != after:
            self.changes.append(ConfigChange("train.micro_batch", before, after, it, "oom"))
        old_accum = (self._current or {}).get("train.grad_accum")
        if accum is not None and accum != old_accum:
            self.changes.append(ConfigChange("train.grad_accum", old_accum, accum, it, "oom"))
        if self._current is not None:
            self._current.update({k: v for k, v in (("train.micro_batch", after), ("train.grad_accum", accum))
                                  if v is not None})

    def history(self) -> History:
        """The rows, the evals' and HellaSwag points' tokens placed by the steps' (tokens_at)."""
        h = self.rows
        counted = [s for s in h.steps if s.tokens is not None]
        iters, tokens = [s.iter for s in counted], [s.tokens for s in counted]
        for row in h.evals + h.hellaswag:
            at = tokens_at(iters, tokens, row.iter)
            row.tokens = round(at) if at is not None else None
        return h

    def metrics(self, run: RunDir, now: float | None = None) -> RunMetrics:
        """The run's figures: `now` as in load()."""
        cfg = run.config_or_none()  # read once, for the summary and the config shown
        summary = self.summary.summary(run, cfg)
        if now is None and summary.alive:
            now = time.time()
        h = self.history()
        s = RunStats(name=run.name, preset=summary.preset, engine=summary.engine, state=summary.state,
                     max_iters=summary.max_iters, path=str(run.path), config=resolved_config(cfg, self.config))
        if h.steps:
            last = h.steps[-1]
            s.iter, s.tokens, s.last_train_loss = last.iter, last.tokens, last.loss
            paces = [r.tokens_per_sec for r in h.steps[-RECENT_STEPS:] if r.tokens_per_sec and r.tokens_per_sec > 0]
            s.tokens_per_sec = statistics.median(paces) if paces else None
        s.iter = max(s.iter, h.resumed_from or 0)  # restarted, no step logged since: the checkpoint's iter
        s.best_val_loss, s.best_val_iter = best_val(h.evals)
        s.wall_seconds = round(self.clock.seconds(now), 3)
        s.changes = list(self.changes)
        s.best_acc_norm, s.best_acc_norm_iter = best_acc_norm(h.hellaswag)
        if h.reference is not None:
            s.hellaswag_reference, s.hellaswag_reference_acc_norm = h.reference
        return RunMetrics(s, h.steps, h.evals, h.hellaswag, h.reference)


# --------------------------------------------------------------------------- configs


def resolved_config(cfg: cfgmod.Config | None, logged: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's config.toml (`cfg`, as read) as a TOML-shaped dict (config.to_raw); if it could
    not be read or validated, `logged`, the config its newest `run` event logged; {} if neither."""
    return cfgmod.to_raw(cfg) if cfg is not None else logged or {}


def flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"learning_rate": 1e-3}, "name": "x"} -> {"train.learning_rate": 1e-3, "name": "x"}."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


_MISSING = object()


def config_diff(configs: Mapping[str, Mapping[str, Any]],
                changes: Mapping[str, Iterable[ConfigChange]] | None = None) -> dict[str, dict[str, Any]]:
    """The config keys whose values differ between runs: {dotted key: {run name: value}}.

    `configs` maps each run's name to its TOML-shaped config (RunStats.config). Keys come in the
    order config.toml lists them. A key one run lacks (e.g. model.pretrained when a finetune is
    compared with a pretrain run) differs, and that run's value is None.

    `changes` maps run names to their config changes (RunStats.changes): a key that changed
    during a run differs too unless every run has the same history of it, so a learning rate
    lowered live never passes for one the run always had (value_history spells it).

    `name` is compared like any key: it is the preset's name, so it shows exactly when the runs
    come from different presets, which is worth knowing. `description` is left out: it is the
    preset's prose, and when it differs `name` already says so.
    """
    flat = {run: flatten(raw) for run, raw in configs.items()}
    keys: list[str] = []
    for values in flat.values():
        keys += [k for k in values if k not in keys and k not in DIFF_IGNORED]
    diff: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = {run: flat[run].get(key, _MISSING) for run in flat}
        distinct = []
        for v in values.values():
            if v not in distinct:
                distinct.append(v)
        histories = {run: [(c.old, c.new, c.iter, c.how) for c in (changes or {}).get(run, ()) if c.key == key]
                     for run in flat}
        changed = any(histories.values()) and len({repr(h) for h in histories.values()}) > 1
        if len(distinct) > 1 or changed:
            diff[key] = {run: (None if v is _MISSING else v) for run, v in values.items()}
    return diff


# --------------------------------------------------------------------------- series maths


def ema(values: list[float], weight: float, counts: list[int] | None = None) -> list[float]:
    """Exponential moving average with start-up bias correction (TensorBoard's smoothing).

    weight 0 returns the values as they are; 0.9 averages over roughly the last ten points.
    counts: how many steps each value is the mean of (the cockpit's buckets): a bucket of n steps
    decays the average as n steps would (weight ** n), so the curve reads the same however many
    steps a bucket holds; without counts every value is one step.
    """
    if weight <= 0 or not values:
        return list(values)
    out, acc, norm = [], 0.0, 0.0
    for k, v in enumerate(values):
        w = weight if counts is None or counts[k] == 1 else weight ** counts[k]
        acc = acc * w + (1 - w) * v
        norm = norm * w + (1 - w)  # 1 - weight ** steps so far: the start-up bias correction
        out.append(acc / norm)
    return out
