"""What the cockpit knows about one run, built from its event log.

Pure Python (no textual, no torch), so it is cheap to test: `RunModel.ingest(events)` folds a
batch of events (the whole replayed history, or the few new ones since the last poll) into
plain fields and lists that the panes render, and says what changed so only those panes redraw.
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
from gpt2_cockpit.engine.events import FINAL_STATES
from gpt2_cockpit.engine.runs import effective_state

GPU_HISTORY = 60  # readings kept per GPU for the short history (a few minutes at one per few seconds)
STEP_TIMES = 50  # recent step durations behind the ETA
MAX_SAMPLES = 100
MAX_LOG = 1000


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


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with start-up bias correction (TensorBoard's smoothing).

    weight 0 returns the values as they are; 0.9 averages over roughly the last ten points.
    """
    if weight <= 0 or not values:
        return list(values)
    out, acc = [], 0.0
    for n, v in enumerate(values, 1):
        acc = acc * weight + (1 - weight) * v
        out.append(acc / (1 - weight**n))
    return out


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
class Changes:
    """What one `ingest` touched, so the screen redraws only those panes."""

    plot: bool = False
    status: bool = False
    gpu: bool = False
    samples: list[Sample] = field(default_factory=list)
    sample_errors: list[tuple[str, str]] = field(default_factory=list)  # (request_id, message)
    state: bool = False  # a `state` event arrived
    log: list[LogEntry] = field(default_factory=list)


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
        # step history (one entry per `step` event), the loss plot's source
        self.iters: list[int] = []
        self.losses: list[float | None] = []
        self.tokens: list[float] = []
        self.last_step: dict[str, Any] = {}
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.step_ms: deque[float] = deque(maxlen=STEP_TIMES)
        # eval history: (iter, train_loss, val_loss, val_ppl)
        self.evals: list[tuple[int, float | None, float | None, float | None]] = []
        self.last_checkpoint: dict[str, Any] | None = None
        self.gpus: dict[int, GpuReading] = {}
        self.gpu_util: dict[int, deque] = {}
        self.gpu_mem: dict[int, deque] = {}
        self.samples: list[Sample] = []
        self.last_event_time: float | None = None

    # ---------------------------------------------------------------- ingest

    def ingest(self, events: Iterable[dict[str, Any]]) -> Changes:
        ch = Changes()
        for e in events:
            handler = getattr(self, f"_on_{e.get('type')}", None)
            if handler is not None:  # unknown types are ignored, as the contract says
                handler(e, ch)
            if isinstance(e.get("time"), (int, float)):
                self.last_event_time = e["time"]
        return ch

    def _log(self, ch: Changes, e: dict, text: str, severity: str = "info") -> None:
        ch.log.append(LogEntry(e.get("time") or time.time(), e.get("type", "?"), text, severity))

    def _on_run(self, e: dict, ch: Changes) -> None:
        self.preset = e.get("preset") or self.preset
        self.engine = e.get("engine") or self.engine
        self.device = e.get("device") or self.device
        self.world_size = e.get("world_size") or 1
        train = (e.get("config") or {}).get("train") or {}
        if isinstance(train.get("max_iters"), int):
            self.max_iters = train["max_iters"]
        resumed = e.get("resumed_from")
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
        severity = "error" if self.state == "failed" else "warn" if self.state in ("paused", "stopping") else "info"
        self._log(ch, e, f"state: {self.state}" + (f" ({self.reason})" if self.reason else ""), severity)
        ch.status = ch.state = True

    def _on_step(self, e: dict, ch: Changes) -> None:
        it = e.get("iter")
        if not isinstance(it, int):
            return
        if self.iters and it <= self.iters[-1]:
            self._truncate(it - 1)  # a restart from an earlier checkpoint rewrites the tail
        loss = e.get("loss")
        self.iters.append(it)
        self.losses.append(loss if isinstance(loss, (int, float)) and math.isfinite(loss) else None)
        tokens = e.get("tokens")
        if not isinstance(tokens, (int, float)):
            tokens = self.tokens[-1] if self.tokens else 0
        self.tokens.append(tokens)
        self.last_step = e
        if isinstance(e.get("micro_batch"), int):
            self.micro_batch = e["micro_batch"]
        if isinstance(e.get("grad_accum"), int):
            self.grad_accum = e["grad_accum"]
        if isinstance(e.get("ms"), (int, float)) and e["ms"] > 0:
            self.step_ms.append(float(e["ms"]))
        ch.plot = ch.status = True

    def _on_eval(self, e: dict, ch: Changes) -> None:
        it = e.get("iter")
        if not isinstance(it, int):
            return
        while self.evals and self.evals[-1][0] >= it:
            self.evals.pop()
        self.evals.append((it, e.get("train_loss"), e.get("val_loss"), e.get("val_ppl")))
        ppl = f", ppl {fmt_float(e.get('val_ppl'), 2)}" if e.get("val_ppl") is not None else ""
        self._log(ch, e, f"eval @{it}: train {fmt_float(e.get('train_loss'))}, val {fmt_float(e.get('val_loss'))}{ppl}")
        ch.plot = ch.status = True

    def _on_sample(self, e: dict, ch: Changes) -> None:
        s = Sample(e.get("iter"), e.get("prompt") or "", e.get("text") or "", e.get("request_id"), e.get("time"))
        self.samples.append(s)
        del self.samples[:-MAX_SAMPLES]
        ch.samples.append(s)

    def _on_oom(self, e: dict, ch: Changes) -> None:
        self.micro_batch = e.get("micro_batch_after", self.micro_batch)
        self.grad_accum = e.get("grad_accum_after", self.grad_accum)
        self._log(ch, e, f"out of memory at iter {e.get('iter')}: micro-batch {e.get('micro_batch_before')} → "
                         f"{e.get('micro_batch_after')}, grad accum → {e.get('grad_accum_after')}", "warn")
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
        self._log(ch, e, f"set {e.get('key')}: {e.get('old')} → {e.get('new')}")
        ch.status = True

    def _on_anomaly(self, e: dict, ch: Changes) -> None:
        self._log(ch, e, f"anomaly at iter {e.get('iter')}: {e.get('kind')} → {e.get('action')}", "warn")

    def _on_error(self, e: dict, ch: Changes) -> None:
        if e.get("request_id") is not None:  # a sample request the run took but could not answer
            ch.sample_errors.append((e["request_id"], str(e.get("message"))))
        self._log(ch, e, f"error: {e.get('message')}", "error")

    def _truncate(self, last_iter: int) -> None:
        """Forget steps and evals after `last_iter` (the run restarted from an earlier checkpoint)."""
        while self.iters and self.iters[-1] > last_iter:
            self.iters.pop()
            self.losses.pop()
            self.tokens.pop()
        while self.evals and self.evals[-1][0] > last_iter:
            self.evals.pop()

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

    def ms_per_iter(self) -> float | None:
        return statistics.median(self.step_ms) if self.step_ms else None

    def eta_seconds(self) -> float | None:
        """Remaining iterations times the median of recent measured step times."""
        ms, it = self.ms_per_iter(), self.iter
        if ms is None or it is None or not self.max_iters:
            return None
        return max(self.max_iters - it, 0) * ms / 1000.0

    def tokens_at(self, it: int) -> float:
        """Tokens seen by iteration `it`, interpolated between step events (evals carry no token count)."""
        if not self.iters:
            return 0.0
        i = bisect_left(self.iters, it)
        if i < len(self.iters) and self.iters[i] == it:
            return self.tokens[i]
        if i == 0:  # before the first step: scale down from it
            return self.tokens[0] * it / self.iters[0] if self.iters[0] else 0.0
        if i == len(self.iters):  # after the last step: extend at the last rate
            per_iter = self.tokens[-1] / self.iters[-1] if self.iters[-1] else 0.0
            return self.tokens[-1] + per_iter * (it - self.iters[-1])
        x0, x1, y0, y1 = self.iters[i - 1], self.iters[i], self.tokens[i - 1], self.tokens[i]
        return y0 + (y1 - y0) * (it - x0) / (x1 - x0)

    def status_rows(self, pending: str | None = None) -> list[tuple[str, str]]:
        """(label, value) rows for the status pane; N/A where the run has not reported a figure."""
        s = self.last_step
        state = self.display_state
        if self.reason and state == self.state and state != "running":
            state += f" ({self.reason})"  # why it paused, stopped or failed
        if pending:
            state += f" → {pending}…"
        it = self.iter
        iters = f"{it if it is not None else '-'}/{self.max_iters or NA}"
        if it is not None and self.max_iters:
            iters += f"  {100 * it / self.max_iters:.0f}%"
        val = self.evals[-1][2] if self.evals else None
        batch = f"{self.micro_batch}×{self.grad_accum}" if self.micro_batch and self.grad_accum else NA
        ms = self.ms_per_iter()
        eta = fmt_duration(self.eta_seconds())
        if ms is not None:
            eta += f" · {ms:.0f} ms/it"
        ck = self.last_checkpoint
        ckpt = NA
        if ck:
            ckpt = f"@{ck.get('iter')}"
            if isinstance(ck.get("time"), (int, float)):
                ckpt += f" {fmt_duration(time.time() - ck['time'])} ago"
            ckpt += " best" if ck.get("best") else ""
        return [
            ("state", state),
            ("iter", iters),
            ("loss", f"{fmt_float(s.get('loss'))} val {fmt_float(val)}"),
            ("lr", fmt_lr(s.get("lr"))),
            ("speed", f"{fmt_count(s.get('tokens_per_sec'))} tok/s · MFU {fmt_mfu(s.get('mfu'))}"),
            ("batch", f"{batch} · {fmt_count(s.get('tokens'))} tok"),
            ("ETA", eta),
            ("ckpt", ckpt),
        ]
