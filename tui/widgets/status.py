"""The status pane (state, progress, loss, speed, ETA, checkpoint) and the GPU pane."""

from __future__ import annotations

import time

from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static

from gpt2_cockpit.engine.fmt import NA, fmt_age, fmt_mem, fmt_pct

from ..model import RunModel, sparkline
from .panes import TextPane

STATE_STYLES = {
    "running": "bold $success",
    "paused": "bold $warning",
    "stopping": "bold $warning",
    "preparing": "bold $accent",
    "failed": "bold $error",
    "crashed": "bold $error",
}


class StatusPane(Static):
    """Label/value rows of the run model; `show()` after the model changed.

    `pending` is a command on its way (e.g. 'pausing'), shown after the state until the run's
    log says what happened."""

    pending: reactive[str | None] = reactive(None, init=False)

    def __init__(self, model: RunModel, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self._shown: list[tuple[str, str]] | None = None  # the parts on screen
        self.repaints = 0

    def on_mount(self) -> None:
        self.border_title = "status"
        self.show()

    def watch_pending(self) -> None:
        self.show()

    def show(self) -> None:
        state = self.model.display_state
        self.set_class(state in ("paused", "stopping"), "-paused")
        self.set_class(state in ("failed", "crashed"), "-failed")
        rows = self.model.status_rows(self.pending)
        width = max(len(label) for label, _ in rows)
        room = self.content_size.width - width - 1  # for a value (0 before the first layout)
        parts: list[tuple[str, str]] = []
        for n, (label, value) in enumerate(rows):
            if label == "hella" and 0 < room < len(value):  # 80 columns: "0.271 · 124M 0.2955"
                value = value.replace(" GPT-2 ", " ", 1)
            style = STATE_STYLES.get(state, "bold") if label == "state" else ""
            parts.append((("\n" if n else "") + label.ljust(width) + " ", "$text-muted"))
            parts.append((value, style))
        if parts == self._shown:  # nothing to repaint (a repaint costs a few ms of CPU)
            return
        # one line per row: the pane's height changes only with the number of rows (values
        # are cut with an ellipsis, never wrapped), so a new figure needs no new layout
        same_height = self._shown is not None and len(self._shown) == len(parts) \
            and "\n" not in "".join(text for text, _ in parts[1::2])
        self._shown = parts
        self.repaints += 1
        self.update(Content.assemble(*parts), layout=not same_height)


class GpuPane(TextPane):
    """One block per GPU from the run's `gpu` events, with a short utilisation/memory history.

    A figure the device cannot report arrives as null and is shown as N/A; a run on a machine
    without an NVIDIA GPU says so plainly.
    """

    STALE_AFTER = 30.0  # seconds without a reading before the figures are marked as old

    nvidia: reactive[bool | None] = reactive(None, init=False)
    """Does this machine have an NVIDIA GPU? (None: not known yet)"""

    def __init__(self, model: RunModel, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self._shown: object = None  # the body on screen

    def on_mount(self) -> None:
        self.border_title = "GPU"
        self.show()

    def watch_nvidia(self) -> None:
        self.show()

    def show(self) -> None:
        m = self.model
        self.can_focus = len(m.gpus) > 1  # scroll through several GPUs with the arrow keys
        if not m.gpus:
            device = (m.device or "").lower()
            if self.nvidia is False:
                text = "no NVIDIA GPU" + (f"\nthe run trains on {m.device}" if m.device else "")
            elif device and not device.startswith("cuda"):
                text = f"no GPU in use: the run trains on {m.device}"
            elif m.state in ("stopped", "done", "failed") or m.alive is False:
                text = "no GPU readings in this run's log"
            else:
                text = "waiting for GPU readings…"
            self._set_body([(text, "$text-muted")])
            return
        lines_per_gpu = max(1, (self.size.height or 8) // len(m.gpus))
        width = max((self.size.width or 40) - 16, 4)
        parts: list[tuple[str, str]] = []
        for idx in sorted(m.gpus):
            r = m.gpus[idx]
            util, mem = fmt_pct(r.util), fmt_mem(r.mem_used, r.mem_total)
            temp = f"{r.temp:.0f}°C" if isinstance(r.temp, (int, float)) else f"{NA} °C"
            power = f"{r.power:.0f} W" if isinstance(r.power, (int, float)) else f"{NA} W"
            if parts:
                parts.append(("\n", ""))
            if lines_per_gpu >= 4:
                parts += [
                    (f"{idx} {r.name or 'GPU'}\n", "bold"),
                    ("util ", "$text-muted"), (f"{util:>4} ", ""),
                    (sparkline(list(m.gpu_util[idx])[-width:]) + "\n", "$accent"),
                    ("VRAM ", "$text-muted"), (f"{mem} ", ""),
                    (sparkline(list(m.gpu_mem[idx])[-max(width - 12, 4):]) + "\n", "$accent"),
                    (f"{temp}  {power}", ""),
                ]
            else:
                parts.append((f"{idx} {util} {mem} {temp} {power}", ""))
        newest = max((r.time or 0) for r in m.gpus.values())
        if newest and time.time() - newest > self.STALE_AFTER:
            parts.append((f"\n(last reading {fmt_age(time.time() - newest)} ago)", "$text-muted"))
        self._set_body(parts)

    def _set_body(self, parts: list[tuple[str, str]]) -> None:
        if parts != self._shown:  # unchanged: no repaint
            self._shown = parts
            self.set_body(Content.assemble(*parts))

    def on_resize(self) -> None:
        self._shown = None
        self.show()
