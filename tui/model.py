"""What the cockpit knows about one run, built from its event log.

Pure Python (no textual, no torch), so it is cheap to test: `RunModel.ingest(events)` folds a
batch of events (the whole replayed history, or the few new ones since the last poll) into
plain fields and bounded lists that the panes render, and says what changed so only those panes
redraw. The step history is a `series.StepSeries` (at most 4096 buckets of steps, spikes kept),
evals, anomalies, samples and GPU readings are capped too, so a week-long run costs what a short
one does.
"""

from __future__ import annotations

import math
import statistics
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from gpt2_cockpit.engine.fmt import NA, fmt_count, fmt_duration, fmt_float, fmt_lr, fmt_mfu
from gpt2_cockpit.engine.runs.events import FINAL_STATES
from gpt2_cockpit.engine.runs.metrics import BACKGROUND_EVENTS, ActiveClock
from gpt2_cockpit.engine.runs.rundir import effective_state

from .series import StepSeries

GPU_HISTORY = 60  # readings kept per GPU for the short history (a few minutes at one per few seconds)
STEP_TIMES = 50  # recent step durations behind the ETA
MAX_SAMPLES = 100
MAX_LOG = 1000
REPLAY_LOG = 200  # log entries of the replayed history shown on attach (writing 1000 costs ~0.3 s)
MAX_EVALS = 4096  # more and every other one goes (the newest always stays)
MAX_ANOMALIES = 1000
ORDERED = ("run", "state", "oom", "set")  # events whose place among the steps matters (see ingest)


# --------------------------------------------------------------------------- sparklines


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[Any], lo: float = 0.0, hi: float = 100.0) -> str:
    """A one-line history; a missing reading is a space."""
    out = []
    for v in values:
        if not isinstance(v, (int, float)):
            out.append(" ")
            continue
        frac = 0.0 if hi <= lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)
        out.append(SPARK[min(int(frac * len(SPARK)), len(SPARK) - 1)])
    return "".join(out)


# --------------------------------------------------------------------------- series maths


def downsample(xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """At most `max_points` points: the first, the last, and each bucket's lowest and highest in
    between, in x order, so spikes survive (a plain stride would drop them) and a redraw of a
    long history costs no more than a short one."""
    n = len(xs)
    if n <= max_points or max_points < 6:
        return list(xs), list(ys)
    buckets = (max_points - 2) // 2
    keep = {0, n - 1}
    inner = n - 2
    for b in range(buckets):
        lo, hi = 1 + b * inner // buckets, 1 + (b + 1) * inner // buckets
        if hi > lo:
            seg = range(lo, hi)
            keep.add(min(seg, key=ys.__getitem__))
            keep.add(max(seg, key=ys.__getitem__))
    idx = sorted(keep)
    return [xs[i] for i in idx], [ys[i] for i in idx]


def prepare_progress(e: dict[str, Any], width: int = 10) -> tuple[str, str]:
    """A `prepare` event as a progress bar and its ETA: ('tokenize ████░░░░░░ 42%', '47s · 12.3 MB/s')."""
    done, total, rate, unit = e.get("done"), e.get("total"), e.get("rate"), e.get("unit") or ""
    phase = str(e.get("phase") or "preparing")
    if phase == "done":  # prepared: the model and the first batches load next
        return f"prepared {fmt_count(done)} {unit}".rstrip(), "starting…"
    if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
        frac = min(max(done / total, 0.0), 1.0)
        filled = int(round(frac * width))
        bar = f"{phase} {'█' * filled}{'░' * (width - filled)} {100 * frac:.0f}%"
    else:
        bar = f"{phase} {fmt_count(done)} {unit}".rstrip()
    speed = f"{rate / 1e6:.1f} MB/s" if unit == "bytes" and isinstance(rate, (int, float)) \
        else f"{fmt_count(rate)} {unit}/s"
    return bar, f"{fmt_duration(e.get('eta'))} · {speed}"


def _ms_of(line: bytes) -> float | None:
    """The `ms` of a raw step line without decoding the rest."""
    k = line.find(b'"ms":')
    if k < 0:
        return None
    end = k + 5
    while end < len(line) and line[end] not in b",}":
        end += 1
    try:
        ms = float(line[k + 5:end])
    except ValueError:
        return None
    return ms if ms > 0 and math.isfinite(ms) else None


def _finite_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _short_path(path: Any) -> str:
    """checkpoints/ckpt.pt rather than the whole absolute path (the run's folder is known)."""
    parts = str(path).split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else str(path)


# --------------------------------------------------------------------------- the run


@dataclass
class GpuReading:
    index: int
    name: str | None = None
    util: float | None = None
    mem_used: float | None = None
    mem_total: float | None = None
    temp: float | None = None
    power: float | None = None
    time: float | None = None


@dataclass
class Sample:
    iter: int | None
    prompt: str
    text: str
    request_id: str | None
    time: float | None = None
    cancelled: bool = False  # stopped by the user: `text` is what was generated until then
    from_checkpoint: bool = False  # generated from a stopped run's newest checkpoint, not its live weights

    @property
    def periodic(self) -> bool:
        return self.request_id is None


@dataclass
class LogEntry:
    time: float
    kind: str  # the event type, or "cockpit" for the viewer's own messages
    text: str
    severity: str = "info"  # info | warn | error


@dataclass
class Anomaly:
    iter: int
    kind: str  # loss_spike, grad_spike, nonfinite_loss, nonfinite_grad, ...
    action: str  # none, skipped_step, paused
    value: float | None = None  # the spiking loss or gradient norm
    zscore: float | None = None


@dataclass
class Changes:
    """What one `ingest` touched, so the screen redraws only those panes."""

    plot: bool = False
    status: bool = False
    gpu: bool = False
    samples: list[Sample] = field(default_factory=list)
    sample_errors: list[tuple[str, str]] = field(default_factory=list)  # (request_id, message)
    state: bool = False  # a `state` event arrived
    log: list[LogEntry] = field(default_factory=list)
    ooms: list[dict[str, Any]] = field(default_factory=list)

    def trim(self, log: int = MAX_LOG) -> None:
        """Keep what the panes can show (a replay of a long log folds many batches into one)."""
        del self.log[:-log]
        del self.samples[:-MAX_SAMPLES]


class RunModel:
    """Everything the run screen shows, folded from events in order."""

    def __init__(self, name: str, max_iters: int = 0, micro_batch: int | None = None,
                 grad_accum: int | None = None, device: str | None = None):
        self.name = name
        self.preset = "?"
        self.engine = "?"
        self.device = device
        self.world_size = 1
        self.max_iters = max_iters
        self.state = "new"
        self.reason = ""
        self.alive: bool | None = None  # None until the feed has checked the process
        self._blank = (name, max_iters, micro_batch, grad_accum, device)
        # step history in bounded memory (series.py), the loss plot's source
        self.steps = StepSeries()
        self.last_step: dict[str, Any] = {}
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.step_ms: deque[float] = deque(maxlen=STEP_TIMES)
        # eval history: (iter, train_loss, val_loss, val_ppl)
        self.evals: list[tuple[int, float | None, float | None, float | None]] = []
        # HellaSwag history: (iter, acc, acc_norm), and the GPT-2 (name, acc_norm) it compares with
        self.hellaswag: list[tuple[int, float | None, float | None]] = []
        self.hellaswag_reference: tuple[str, float] | None = None
        self.anomalies: list[Anomaly] = []
        self.last_checkpoint: dict[str, Any] | None = None
        self.gpus: dict[int, GpuReading] = {}
        self.gpu_util: dict[int, deque] = {}
        self.gpu_mem: dict[int, deque] = {}
        self.samples: list[Sample] = []
        self.settings: dict[str, Any] = {}  # key -> value from `set` events (the run's live changes)
        self.last_event_time: float | None = None
        self.prepare: dict[str, Any] | None = None  # the newest `prepare` progress (shown while preparing)
        self.run_time: float | None = None  # when the newest `run` event (this process's start) was logged
        self.resumed_from: int | None = None  # the checkpoint's iteration this process restarted from
        self.clock = ActiveClock()  # active wall time, the rule `gpt2-cockpit compare` counts by

    def blank(self) -> "RunModel":
        """A new model as this one was before any event (a replay builds one off the UI thread)."""
        name, max_iters, micro_batch, grad_accum, device = self._blank
        return RunModel(name, max_iters, micro_batch, grad_accum, device)

    def _on_prepare(self, e: dict, ch: Changes) -> None:
        self.prepare = e
        ch.status = True

    def take_over(self, other: "RunModel") -> None:
        """Become `other` (a replayed model), keeping this object, which the panes hold."""
        alive = self.alive
        self.__dict__.update(other.__dict__)
        self.alive = alive if other.alive is None else other.alive

    # step history, as lists (one entry per bucket: per step while the run is short)
    @property
    def iters(self) -> list[int]:
        return self.steps.iters

    @property
    def losses(self) -> list[float | None]:
        return self.steps.last

    @property
    def tokens(self) -> list[float]:
        return self.steps.tokens

    # ---------------------------------------------------------------- ingest

    def ingest(self, events: Iterable[Any], ch: Changes | None = None) -> Changes:
        """Fold events in log order: decoded events (dicts) and runs of raw step lines
        (feed.StepLines). Step lines are folded together in one go, before the next event whose
        place among the steps matters (ORDERED: a restart, a state change, an OOM, a `set`);
        the rest (evals, checkpoints, samples, ...) never touch the step history."""
        ch = ch or Changes()
        pending: list[bytes] = []
        losses: list[bytes] = []
        for e in events:
            if not isinstance(e, dict):  # StepLines
                pending += e.lines
                losses += e.losses
                continue
            kind = e.get("type")
            if pending and kind in ORDERED:
                self._on_step_lines(pending, losses, ch)
                pending, losses = [], []
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:  # unknown types are ignored, as the contract says
                handler(e, ch)
            t = e.get("time")
            # the run's own last word (GPU readings come from its heartbeat thread, and the fast
            # reader does not even decode them: they must not move it, or the two paths differ)
            if kind not in BACKGROUND_EVENTS and isinstance(t, (int, float)):
                self.clock.saw(t)
                if self.last_event_time is None or t > self.last_event_time:
                    self.last_event_time = t
        if pending:
            self._on_step_lines(pending, losses, ch)
        return ch

    def _log(self, ch: Changes, e: dict, text: str, severity: str = "info") -> None:
        ch.log.append(LogEntry(e.get("time") or time.time(), e.get("type", "?"), text, severity))

    def _on_run(self, e: dict, ch: Changes) -> None:
        self.clock.feed(e)  # a new process: an open span of the last one ends at its last event
        self.preset = e.get("preset") or self.preset
        self.engine = e.get("engine") or self.engine
        self.device = e.get("device") or self.device
        self.world_size = e.get("world_size") or 1
        train = (e.get("config") or {}).get("train") or {}
        if isinstance(train.get("max_iters"), int):
            self.max_iters = train["max_iters"]
        resumed = e.get("resumed_from")
        self.run_time = e.get("time") if isinstance(e.get("time"), (int, float)) else self.run_time
        self.resumed_from = resumed if isinstance(resumed, int) else None
        where = f"on {self.device}" + (f" × {self.world_size}" if self.world_size > 1 else "")
        if resumed is not None:
            self._log(ch, e, f"resumed from iter {resumed} {where}")
            self._truncate(int(resumed))
            ch.plot = True
        else:
            self._log(ch, e, f"run started: {self.preset} ({self.engine}) {where}")
        ch.status = True

    def _on_state(self, e: dict, ch: Changes) -> None:
        self.state = e.get("state") or self.state
        self.reason = e.get("reason") or ""
        self.clock.feed(e)
        severity = "error" if self.state == "failed" else "warn" if self.state in ("paused", "stopping") else "info"
        self._log(ch, e, f"state: {self.state}" + (f" ({self.reason})" if self.reason else ""), severity)
        ch.status = ch.state = True

    def _on_step(self, e: dict, ch: Changes | None = None) -> None:
        it = e.get("iter")
        if not isinstance(it, int):
            return
        if self.iters and it <= self.iters[-1]:
            self._truncate(it - 1)  # a restart from an earlier checkpoint rewrites the tail
        t = e.get("time")
        self.steps.append(e, self.elapsed_at(t if isinstance(t, (int, float)) else None))
        self._took_step(e)
        if ch is not None:
            ch.plot = ch.status = True

    def _on_step_lines(self, lines: list[bytes], losses: list[bytes], ch: Changes) -> None:
        """Raw step lines in the writer's layout with their losses as written: the series folds
        them, decoding only the lines it keeps; ETA and status take the newest few."""
        folded, last = self.steps.extend_lines(lines, losses, self.elapsed_at, self._on_step)
        ch.plot = ch.status = True
        if last is None or folded < len(lines):  # the rest went through _on_step, newest included
            return
        for line in lines[-STEP_TIMES:-1]:  # the ETA's recent step times (the last one's follows)
            ms = _ms_of(line)
            if ms is not None:
                self.step_ms.append(ms)
        self._took_step(last)

    def _took_step(self, e: dict) -> None:
        self.last_step = e
        t = e.get("time")
        if isinstance(t, (int, float)) and (self.last_event_time is None or t > self.last_event_time):
            self.last_event_time = t
        if isinstance(e.get("micro_batch"), int):
            self.micro_batch = e["micro_batch"]
        if isinstance(e.get("grad_accum"), int):
            self.grad_accum = e["grad_accum"]
        if isinstance(e.get("ms"), (int, float)) and e["ms"] > 0:
            self.step_ms.append(float(e["ms"]))

    def elapsed_at(self, t: float | None) -> float | None:
        """Active seconds when the step logged at Unix time `t` was taken (metrics.ActiveClock)."""
        return self.clock.step(t) if t is not None else None

    def _on_eval(self, e: dict, ch: Changes) -> None:
        it = e.get("iter")
        if not isinstance(it, int):
            return
        while self.evals and self.evals[-1][0] >= it:
            self.evals.pop()
        self.evals.append((it, e.get("train_loss"), e.get("val_loss"), e.get("val_ppl")))
        if len(self.evals) > MAX_EVALS:  # thin the old ones; the newest half stays whole
            half = len(self.evals) // 2
            self.evals[:half] = self.evals[:half:2]
        ppl = f", ppl {fmt_float(e.get('val_ppl'), 2)}" if e.get("val_ppl") is not None else ""
        self._log(ch, e, f"eval @{it}: train {fmt_float(e.get('train_loss'))}, val {fmt_float(e.get('val_loss'))}{ppl}")
        ch.plot = ch.status = True

    def _on_hellaswag(self, e: dict, ch: Changes) -> None:
        it = e.get("iter")
        if not isinstance(it, int):
            return
        acc, acc_norm = _finite_or_none(e.get("acc")), _finite_or_none(e.get("acc_norm"))
        while self.hellaswag and self.hellaswag[-1][0] >= it:  # scored again after a restart
            self.hellaswag.pop()
        self.hellaswag.append((it, acc, acc_norm))
        if len(self.hellaswag) > MAX_EVALS:  # thin the old ones; the newest half stays whole
            half = len(self.hellaswag) // 2
            self.hellaswag[:half] = self.hellaswag[:half:2]
        ref, ref_acc = e.get("reference"), _finite_or_none(e.get("reference_acc_norm"))
        if isinstance(ref, str) and ref_acc is not None:
            self.hellaswag_reference = (ref, ref_acc)
        n, seconds = e.get("n"), _finite_or_none(e.get("seconds"))
        what = ([f"{n:,} items"] if isinstance(n, int) else []) + ([f"{seconds:.1f} s"] if seconds is not None else [])
        text = f"HellaSwag @{it}: acc_norm {fmt_float(acc_norm)}, acc {fmt_float(acc)}"
        if what:
            text += f" ({', '.join(what)})"
        if self.hellaswag_reference:
            text += f" · {self.hellaswag_reference[0]} {self.hellaswag_reference[1]:.4f}"
        self._log(ch, e, text)
        ch.plot = ch.status = True

    def _on_notice(self, e: dict, ch: Changes) -> None:
        """Something the run tells the user (it trains without HellaSwag offline, its share of the CPU)."""
        self._log(ch, e, str(e.get("message") or ""))

    def _on_sample(self, e: dict, ch: Changes) -> None:
        s = Sample(e.get("iter"), e.get("prompt") or "", e.get("text") or "", e.get("request_id"), e.get("time"),
                   bool(e.get("cancelled")))
        self.samples.append(s)
        del self.samples[:-MAX_SAMPLES]
        ch.samples.append(s)

    def _on_oom(self, e: dict, ch: Changes) -> None:
        self.micro_batch = e.get("micro_batch_after", self.micro_batch)
        self.grad_accum = e.get("grad_accum_after", self.grad_accum)
        self._log(ch, e, f"out of memory at iter {e.get('iter')}: micro-batch {e.get('micro_batch_before')} → "
                         f"{e.get('micro_batch_after')}, grad accum → {e.get('grad_accum_after')}", "warn")
        ch.ooms.append(e)
        ch.status = True

    def _on_checkpoint(self, e: dict, ch: Changes) -> None:
        self.last_checkpoint = e
        best = " (best)" if e.get("best") else ""
        self._log(ch, e, f"checkpoint @{e.get('iter')}{best}: {_short_path(e.get('path'))}")
        ch.status = True

    def _on_gpu(self, e: dict, ch: Changes) -> None:
        idx = e.get("index")
        if not isinstance(idx, int):
            return
        r = GpuReading(idx, e.get("name"), e.get("util"), e.get("mem_used"), e.get("mem_total"),
                       e.get("temp"), e.get("power"), e.get("time"))
        self.gpus[idx] = r
        self.gpu_util.setdefault(idx, deque(maxlen=GPU_HISTORY)).append(r.util)
        mem = r.mem_used / r.mem_total * 100 if isinstance(r.mem_used, (int, float)) and r.mem_total else None
        self.gpu_mem.setdefault(idx, deque(maxlen=GPU_HISTORY)).append(mem)
        ch.gpu = True

    def _on_set(self, e: dict, ch: Changes) -> None:
        if e.get("key") == "train.max_iters" and isinstance(e.get("new"), int):
            self.max_iters = e["new"]
        if isinstance(e.get("key"), str):
            self.settings[e["key"]] = e.get("new")
        self._log(ch, e, f"set {e.get('key')}: {e.get('old')} → {e.get('new')}")
        ch.status = True

    def _on_anomaly(self, e: dict, ch: Changes) -> None:
        it, kind, action = e.get("iter"), str(e.get("kind") or "anomaly"), str(e.get("action") or "none")
        value, z = e.get("value"), e.get("zscore")
        value = value if isinstance(value, (int, float)) and math.isfinite(value) else None
        z = z if isinstance(z, (int, float)) and math.isfinite(z) else None
        if isinstance(it, int):
            self.anomalies.append(Anomaly(it, kind, action, value, z))
            del self.anomalies[:-MAX_ANOMALIES]
            ch.plot = True
        what = kind.replace("_", " ")
        if value is not None:
            what += f" {value:.4g}"
        if z is not None:
            what += f" (z {z:.1f})"
        done = {"none": "training went on", "skipped_step": "step skipped"}.get(action, action)
        self._log(ch, e, f"anomaly at iter {it}: {what} → {done}", "warn")

    def _on_error(self, e: dict, ch: Changes) -> None:
        if e.get("request_id") is not None:  # a sample request the run took but could not answer
            ch.sample_errors.append((e["request_id"], str(e.get("message"))))
        self._log(ch, e, f"error: {e.get('message')}", "error")

    def _truncate(self, last_iter: int) -> None:
        """Forget steps, evals, HellaSwag points and anomalies after `last_iter` (the run restarted
        from an earlier checkpoint)."""
        self.steps.truncate(last_iter)
        while self.evals and self.evals[-1][0] > last_iter:
            self.evals.pop()
        while self.hellaswag and self.hellaswag[-1][0] > last_iter:
            self.hellaswag.pop()
        while self.anomalies and self.anomalies[-1].iter > last_iter:
            self.anomalies.pop()

    # ---------------------------------------------------------------- derived figures

    @property
    def iter(self) -> int | None:
        return self.iters[-1] if self.iters else None

    @property
    def live(self) -> bool:
        """Can the run take commands? (its process is there and it has not finished)"""
        return bool(self.alive) and self.state not in FINAL_STATES

    @property
    def display_state(self) -> str:
        """The logged state, or "crashed" when the process died without logging a final one."""
        return effective_state(self.state, self.alive)

    @property
    def resumable(self) -> bool:
        """Can the run be restarted from its last checkpoint? (stopped, failed, or its process died;
        a finished run needs a larger max_iters first)"""
        return self.alive is False and self.display_state in ("stopped", "failed", "crashed")

    def reached_iter(self) -> int | None:
        """The newest iteration the run reached: its last logged step, or a checkpoint this process
        wrote past it (a stop checkpoints between two logged steps), or the one it restarted from."""
        reached = [self.iter, self.resumed_from]
        ck = self.last_checkpoint
        if ck and isinstance(ck.get("iter"), int) and (ck.get("time") or 0) >= (self.run_time or 0):
            reached.append(ck["iter"])
        return max((it for it in reached if it is not None), default=None)

    def ms_per_iter(self) -> float | None:
        return statistics.median(self.step_ms) if self.step_ms else None

    def eta_seconds(self) -> float | None:
        """Remaining iterations times the median of recent measured step times."""
        ms, it = self.ms_per_iter(), self.reached_iter()
        if ms is None or it is None or not self.max_iters:
            return None
        return max(self.max_iters - it, 0) * ms / 1000.0

    def tokens_at(self, it: int) -> float:
        """Tokens seen by iteration `it`, interpolated between step events (evals carry no token count)."""
        return self.steps.tokens_at(it)

    def elapsed_at_iter(self, it: float) -> float:
        """Active seconds by iteration `it`, interpolated between buckets (for the wall-time axis)."""
        iters, elapsed = self.steps.iters, self.steps.elapsed
        if not iters:
            return 0.0
        i = bisect_left(iters, it)
        if i == len(iters):
            return elapsed[-1] or 0.0
        if i == 0 or iters[i] == it:
            return elapsed[i] or 0.0
        x0, x1, y0, y1 = iters[i - 1], iters[i], elapsed[i - 1] or 0.0, elapsed[i] or 0.0
        return y0 + (y1 - y0) * (it - x0) / (x1 - x0)

    def val_at(self, it: float) -> tuple[int, float] | None:
        """The latest eval at or before iteration `it` that has a val loss: (its iter, val loss)."""
        k = bisect_left(self.evals, (it + 0.5,)) - 1
        while k >= 0:
            e_it, _, val, _ = self.evals[k]
            if isinstance(val, (int, float)) and math.isfinite(val):
                return e_it, val
            k -= 1
        return None

    def loss_near(self, it: float) -> float | None:
        """The logged loss of the bucket holding `it` (a marker's height when its event has none)."""
        k = self.steps.index_of(it)
        if k is None:
            return None
        s = self.steps
        return s.last[k] if s.last[k] is not None else s.hi[k]

    def hellaswag_text(self) -> str | None:
        """The newest HellaSwag acc_norm and the GPT-2 it compares with ("0.271 · GPT-2 124M 0.2955");
        None before the run's first evaluation."""
        if not self.hellaswag:
            return None
        text = f"{self.hellaswag[-1][2]:.3f}" if self.hellaswag[-1][2] is not None else NA
        if self.hellaswag_reference:
            text += f" · {self.hellaswag_reference[0]} {self.hellaswag_reference[1]:.4f}"
        return text

    def status_rows(self, pending: str | None = None) -> list[tuple[str, str]]:
        """(label, value) rows for the status pane; N/A where the run has not reported a figure."""
        s = self.last_step
        state = self.display_state
        if self.reason and state == self.state and state != "running":
            state += f" ({self.reason})"  # why it paused, stopped or failed
        if pending:
            state += f" → {pending}…"
        it = self.reached_iter()
        iters = f"{it if it is not None else '-'}/{self.max_iters or NA}"
        if it is not None and self.max_iters:
            iters += f"  {100 * it / self.max_iters:.0f}%"
        val = self.evals[-1][2] if self.evals else None
        batch = f"{self.micro_batch}×{self.grad_accum}" if self.micro_batch and self.grad_accum else NA
        ms = self.ms_per_iter()
        eta = fmt_duration(self.eta_seconds())
        if ms is not None:
            eta += f" · {ms:.0f} ms/it"
        if self.display_state in (*FINAL_STATES, "crashed"):
            eta = "-"  # not training: nothing left to estimate
        if self.state == "preparing" and self.prepare:  # tokenizing the corpus: its progress instead
            iters, eta = prepare_progress(self.prepare)
        ck = self.last_checkpoint
        ckpt = NA
        if ck:
            ckpt = f"@{ck.get('iter')}"
            if isinstance(ck.get("time"), (int, float)):
                ckpt += f" {fmt_duration(time.time() - ck['time'])} ago"
            ckpt += " best" if ck.get("best") else ""
        hella = self.hellaswag_text()
        return [
            ("state", state),
            ("iter", iters),
            ("loss", f"{fmt_float(s.get('loss'))} val {fmt_float(val)}"),
            *((("hella", hella),) if hella is not None else ()),  # HellaSwag acc_norm (llm.c's label)
            ("lr", fmt_lr(s.get("lr"))),
            ("speed", f"{fmt_count(s.get('tokens_per_sec'))} tok/s · MFU {fmt_mfu(s.get('mfu'))}"),
            ("batch", f"{batch} · {fmt_count(s.get('tokens'))} tok"),
            ("ETA", eta),
            ("ckpt", ckpt),
        ]
