"""The run screen: loss plot, status, GPU, sampling and log of one run, plus its remote control.

Data flow: a thread worker polls the event log (`EventFeed`) and posts one `EventsArrived`
per poll; the handler folds it into the `RunModel`, redraws only the panes it touched, and
re-arms the poll timer. Commands go over the run's control socket in thread workers and come
back as `ControlDone` messages, so a slow reply (a sample is answered between optimizer steps)
never blocks the UI.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input
from textual.worker import Worker, WorkerState

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import launch, presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.events import FINAL_STATES
from gpt2_cockpit.engine.runs import RunDir

from ..feed import EventFeed, EventsArrived
from ..model import RunModel, Sample
from ..widgets.dialogs import ConfirmScreen, LiveSettingsScreen
from ..widgets.log_pane import LogPane
from ..widgets.loss_plot import LossPane
from ..widgets.samples import SamplePane
from ..widgets.status import GpuPane, StatusPane

STATUS_REFRESH = 2.0  # seconds between repaints of ages/ETA when no events arrive
CONTROL_TIMEOUT = 120.0  # pause/stop/checkpoint/set wait for the current optimizer step to end
SAMPLE_TIMEOUT = 900.0


class ControlDone(Message):
    """The run answered a command (reply) or it could not be delivered (error, one sentence)."""

    def __init__(self, purpose: str, request: dict[str, Any], reply: dict[str, Any] | None = None,
                 error: str | None = None) -> None:
        super().__init__()
        self.purpose = purpose
        self.request = request
        self.reply = reply
        self.error = error


class GpuProbed(Message):
    """Whether NVML sees an NVIDIA GPU on this machine (so a CPU box says so before the run does)."""

    def __init__(self, present: bool) -> None:
        super().__init__()
        self.present = present


class RunScreen(Screen):
    AUTO_FOCUS = ""  # keys go to the screen until the user asks for the prompt (s) or tabs
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause/Resume", tooltip="Pause the run between steps, or resume it"),
        Binding("s", "focus_prompt", "Sample", tooltip="Type a prompt; Enter samples from the live weights"),
        Binding("c", "checkpoint", "Checkpoint", tooltip="Write a checkpoint now"),
        Binding("x", "stop", "Stop", tooltip="Checkpoint and stop the run (asks first)"),
        Binding("e", "edit_settings", "Settings", tooltip="Change live settings: learning rate, max iters, intervals"),
        Binding("q", "leave", "Leave", tooltip="Leave the cockpit; the run goes on"),
        Binding("l", "toggle_log_scale", "Log scale", show=False, tooltip="Loss plot: linear or log y-axis"),
        Binding("t", "toggle_x_axis", "X axis: iter/tokens", show=False, tooltip="Loss plot: x by iteration or tokens"),
        Binding("left_square_bracket", "smoothing(-1)", "Less smoothing", show=False),
        Binding("right_square_bracket", "smoothing(1)", "More smoothing", show=False),
        Binding("h", "home", "Home", show=False, tooltip="Presets, runs and diagnostics"),
        Binding("escape", "unfocus", "Keys", tooltip="Leave the text box so single keys act again"),
    ]
    RUN_ACTIONS = {"toggle_pause", "checkpoint", "stop", "edit_settings"}

    def __init__(self, run: RunDir, poll_interval: float = 0.4) -> None:
        super().__init__()
        self.run = run
        self.poll_interval = poll_interval
        self.feed = EventFeed(run)
        self.config_error: str | None = None
        try:
            self.cfg: cfgmod.Config | None = run.config()
        except UserError as e:
            self.cfg, self.config_error = None, str(e)
        t = self.cfg.train if self.cfg else None
        self.model = RunModel(run.name, max_iters=t.max_iters if t else 0,
                              micro_batch=t.micro_batch if t else None, grad_accum=t.grad_accum if t else None)
        self.settings: dict[str, Any] = {}  # live values changed by `set` events
        self._last_status = 0.0
        self._was_live: bool | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield LossPane(self.model, id="loss")
            with Vertical(id="side"):
                yield StatusPane(self.model, id="status")
                yield GpuPane(self.model, id="gpu")
        with Horizontal(id="bottom"):
            yield SamplePane(id="samples")
            yield LogPane(id="log")
        yield Footer(compact=True)

    @property
    def status(self) -> StatusPane:
        return self.query_one(StatusPane)

    @property
    def samples(self) -> SamplePane:
        return self.query_one(SamplePane)

    @property
    def log_pane(self) -> LogPane:
        return self.query_one(LogPane)

    @property
    def loss(self) -> LossPane:
        return self.query_one(LossPane)

    def on_mount(self) -> None:
        self.sub_title = self.run.name
        if self.config_error:
            self.log_pane.say(self.config_error, "error")
        self._poll()
        self._probe_gpu()

    @work(thread=True, exclusive=True, exit_on_error=False, group="gpu-probe")
    def _probe_gpu(self) -> None:
        from gpt2_cockpit.engine.hardware import has_cuda  # NVML, never torch

        self.post_message(GpuProbed(has_cuda()))

    def on_gpu_probed(self, message: GpuProbed) -> None:
        gpu = self.query_one(GpuPane)
        gpu.nvidia = message.present
        gpu.show()

    # ---------------------------------------------------------------- the feed

    @work(thread=True, exclusive=True, exit_on_error=False, group="feed")
    def _poll(self) -> None:
        self.post_message(self.feed.poll())

    def on_events_arrived(self, message: EventsArrived) -> None:
        m = self.model
        m.alive = message.alive
        changes = m.ingest(message.events)
        for e in message.events:
            if e.get("type") == "set" and e.get("key") in cfgmod.LIVE_KEYS:
                self.settings[e["key"]] = e.get("new")
        if changes.plot:
            self.loss.data_changed()
        now = time.monotonic()
        repaint = changes.status or m.live != self._was_live or now - self._last_status > STATUS_REFRESH
        if repaint:  # also every few seconds, so ages and the ETA stay current while nothing happens
            self._last_status = now
            self.status.show()
        if repaint or changes.gpu:
            self.query_one(GpuPane).show()
        if changes.samples:
            self.samples.show_samples(changes.samples)
        if changes.log:
            self.log_pane.add(changes.log)
        if m.live != self._was_live:
            self._was_live = m.live
            self.refresh_bindings()
        ooms = [e for e in message.events if e.get("type") == "oom"]
        if ooms and getattr(self, "_replayed", False):  # a new OOM while we watch, not old history
            self.offer_oom_split(ooms[-1])
        self._replayed = True
        self.set_timer(self.poll_interval, self._poll)  # re-armed only now: polls never pile up

    def offer_oom_split(self, oom: dict[str, Any]) -> None:
        """After an OOM shrink, offer to keep the split that fits in the user's preset."""
        mb, accum = oom.get("micro_batch_after"), oom.get("grad_accum_after")
        try:
            preset = self.run.config().name
        except UserError:
            return

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                try:
                    cfg = presets.load(preset)
                except UserError:  # the preset is gone: keep the run's own config instead
                    cfg = self.run.config()
                cfg.train.micro_batch, cfg.train.grad_accum = mb, accum
                path = presets.save_user(cfg, preset)
            except UserError as e:
                self.log_pane.say(str(e), "error")
                return
            self.log_pane.say(f"saved micro_batch {mb} x grad_accum {accum} into your preset {path}", "info")
            self.notify(f"preset {preset}: micro_batch {mb} x grad_accum {accum}", title="preset saved")

        self.app.push_screen(ConfirmScreen(
            f"Out of memory: the run now uses micro_batch {mb} x grad_accum {accum} (same tokens per step). "
            f"Save that into your preset '{preset}' so the next run starts there?", yes="Save"), answered)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state != WorkerState.ERROR:
            return
        error = event.worker.error
        self.log_pane.say(f"{event.worker.group} failed: {error.__class__.__name__}: {error}", "error")
        if event.worker.group == "feed":
            self.set_timer(max(self.poll_interval, 2.0), self._poll)

    # ---------------------------------------------------------------- commands

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.RUN_ACTIONS and not self.model.live:
            return None  # shown dimmed in the Footer: the run is not there to take commands
        if action == "unfocus":
            return isinstance(self.focused, Input)  # offered only while typing
        return True

    @work(thread=True, exit_on_error=False, group="control")
    def _control(self, purpose: str, requests: list[dict[str, Any]], timeout: float) -> None:
        """Send commands one after another; each answer comes back as a ControlDone message."""
        for msg in requests:
            try:
                reply = launch.control(self.run, msg, timeout=timeout)
            except (UserError, OSError, ValueError) as e:
                self.post_message(ControlDone(purpose, msg, error=str(e) or e.__class__.__name__))
            else:
                self.post_message(ControlDone(purpose, msg, reply=reply))

    def _send(self, purpose: str, msg: dict[str, Any], pending: str | None = None,
              timeout: float = CONTROL_TIMEOUT) -> None:
        if pending:
            self.status.pending = pending
            self.status.show()
        self._control(purpose, [msg], timeout)

    def on_control_done(self, message: ControlDone) -> None:
        reply, error, purpose = message.reply, message.error, message.purpose
        if purpose in ("pause", "resume", "stop"):
            self.status.pending = None
            # the event log may already have said more (a reply "stopping" can land after the
            # event "stopped"): a reply never takes a run back out of a final state
            if reply and self.model.state not in FINAL_STATES:
                self.model.state = reply.get("state") or self.model.state
                self.model.reason = ""
            self.status.show()
        if purpose == "sample":
            rid = message.request.get("request_id")
            if reply:
                s = Sample(reply.get("iter"), message.request.get("prompt", ""), reply.get("text", ""),
                           rid, time.time())
                if self.model.add_sample(s):
                    self.samples.show_samples([s])
            else:
                self.samples.fail_pending(rid, error or "no answer")
        if error:
            self.log_pane.say(error, "error")
            self.notify(error, title=f"{purpose} failed", severity="error")
            return
        if purpose == "checkpoint":
            self.notify(f"checkpoint at iter {reply.get('iter')}: {reply.get('path')}", title="checkpoint")
        elif purpose == "set":
            self.notify(f"{reply.get('key')}: {reply.get('old')} → {reply.get('new')}", title="set")
        elif purpose in ("pause", "resume", "stop"):
            self.notify(f"run {self.run.name}: {reply.get('state', purpose)}", title=purpose)

    def action_toggle_pause(self) -> None:
        if self.model.state == "paused":
            self._send("resume", {"cmd": "resume"}, pending="resuming")
        else:
            self._send("pause", {"cmd": "pause"}, pending="pausing")

    def action_checkpoint(self) -> None:
        self.notify("checkpoint requested; written after the current step", title="checkpoint")
        self._send("checkpoint", {"cmd": "checkpoint"})

    def action_stop(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._send("stop", {"cmd": "stop"}, pending="stopping")

        self.app.push_screen(ConfirmScreen(
            f"Stop run {self.run.name}?\n\nIt finishes the current step, writes a checkpoint and exits. "
            f"'gpt2-cockpit resume {self.run.name}' continues it later.", yes="Stop"), answered)

    def action_edit_settings(self) -> None:
        if self.cfg is None:
            self.notify(self.config_error or "the run's config.toml cannot be read", severity="error")
            return
        try:
            current = cfgmod.with_overrides(self.cfg, dict(self.settings), origin="live settings")
        except UserError:
            current = self.cfg

        def apply(changes: dict[str, Any] | None) -> None:
            if changes:
                self._control("set", [{"cmd": "set", "key": k, "value": v} for k, v in changes.items()],
                              CONTROL_TIMEOUT)

        self.app.push_screen(LiveSettingsScreen(current, self.run.name), apply)

    def action_focus_prompt(self) -> None:
        self.samples.prompt_input.focus()

    def on_sample_pane_sample_requested(self, message: SamplePane.SampleRequested) -> None:
        if not self.model.live:
            text = (f"run {self.run.name} is not running; sample its last checkpoint with "
                    f"'gpt2-cockpit sample {self.run.name} PROMPT'")
            self.log_pane.say(text, "warn")
            self.notify(text, severity="warning")
            return
        rid = uuid.uuid4().hex[:12]
        self.samples.add_pending(rid, message.prompt)
        self._control("sample", [{"cmd": "sample", "prompt": message.prompt,
                                  "max_new_tokens": message.max_new_tokens,
                                  "temperature": message.temperature, "top_k": message.top_k,
                                  "request_id": rid}], SAMPLE_TIMEOUT)

    # ---------------------------------------------------------------- view

    def action_toggle_log_scale(self) -> None:
        self.loss.toggle_log()

    def action_toggle_x_axis(self) -> None:
        self.loss.toggle_x_axis()

    def action_smoothing(self, direction: int) -> None:
        self.loss.cycle_smoothing(direction)

    def action_unfocus(self) -> None:
        self.set_focus(None)

    def action_home(self) -> None:
        self.app.go_home()

    def action_leave(self) -> None:
        self.app.exit(message=self._goodbye())

    def _goodbye(self) -> str:
        if self.model.live:
            return (f"Left the cockpit; run {self.run.name} goes on. "
                    f"'gpt2-cockpit attach {self.run.name}' to come back.")
        return f"Left the cockpit (run {self.run.name}: {self.model.display_state})."
