"""The run screen: loss plot, status, GPU, sampling and log of one run, plus its remote control.

Data flow: a thread worker polls the event log (`EventFeed`) and posts one `EventsArrived`
per poll; the first one carries the whole history already folded into a model off the UI thread
(the screen's model takes it over), later ones the new events, which the handler folds into the
`RunModel`. It redraws only the panes that changed and re-arms the poll timer. The event log is the one source of truth: the panes change only from
events, whoever caused them (this cockpit, another viewer, the command line).

Commands go over the run's control socket in a thread worker, so a slow answer (a command waits
for the current optimizer step) never blocks the UI. An accepted command's effects arrive as
events; the reply only matters when the run refused it or could not be reached: that comes back
as a `ControlFailed` message, which clears the command's pending marker and says why.

A run that is not live (stopped, failed, crashed) still answers two keys: `p` restarts it from
its last checkpoint in the background (engine.runs.launch.restart, as `gpt2-cockpit resume RUN
--detach`), and `s` samples its newest checkpoint through `gpt2-cockpit sample` in a subprocess
(which loads torch; this process never does), which `k` can end. Keys that cannot act are dimmed
in the Footer and, pressed anyway, say why in a notification.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input
from textual.worker import Worker, WorkerState

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.events import FINAL_STATES
from gpt2_cockpit.engine.runs.rundir import RunDir

from ..feed import EventFeed, EventsArrived
from ..model import Changes, RunModel, Sample
from ..pace import NORMAL, IdleCores, Pace, next_pace
from ..widgets.dialogs import ConfirmScreen, LiveSettingsScreen
from ..widgets.log_pane import LogPane
from ..widgets.loss_plot import LossPane, view_bindings
from ..widgets.samples import SamplePane
from ..widgets.status import GpuPane, StatusPane

INLINE_READ_BYTES = 64 << 10  # new log bytes read on the UI thread (~250 step lines); more go to a worker
CONTROL_TIMEOUT = 120.0  # a command is answered once the current optimizer step has ended


class ControlFailed(Message):
    """The run refused a command, or it could not be delivered (`error`: one sentence)."""

    def __init__(self, request: dict[str, Any], error: str) -> None:
        super().__init__()
        self.request = request
        self.error = error


class CommandAnswered(Message):
    """The run accepted a command and has logged what it did."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__()
        self.request = request


class Restarted(Message):
    """The run's process was started again (a failure comes back as ControlFailed)."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid


class CheckpointSampled(Message):
    """A sample from a stopped run's newest checkpoint: its text, or why there is none."""

    def __init__(self, request_id: str, prompt: str, text: str | None = None, error: str | None = None,
                 cancelled: bool = False) -> None:
        super().__init__()
        self.request_id = request_id
        self.prompt = prompt
        self.text = text
        self.error = error
        self.cancelled = cancelled


def checkpoint_sample_argv(run: RunDir, prompt: str, max_new_tokens: int, temperature: float, top_k: int) -> list[str]:
    """`gpt2-cockpit sample RUN PROMPT ...` (the newest checkpoint of a run that is not live)."""
    return [sys.executable, "-m", "gpt2_cockpit.cli", "sample", "--max-new-tokens", str(max_new_tokens),
            "--temperature", repr(temperature), "--top-k", str(top_k), "--", str(run.path), prompt]


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
        Binding("k", "cancel_sample", "Cancel sample", tooltip="Stop generating the newest sample in progress"),
        Binding("c", "checkpoint", "Checkpoint", tooltip="Write a checkpoint now"),
        Binding("x", "stop", "Stop", tooltip="Checkpoint and stop the run (asks first)"),
        Binding("e", "edit_settings", "Settings", tooltip="Change live settings: learning rate, max iters, intervals"),
        Binding("q", "leave", "Leave", tooltip="Leave the cockpit; the run goes on"),
        *view_bindings(show=False),  # l, t, [ and ]: the loss plot's PlotView (its actions below)
        Binding("z", "zoom", "Zoom: all/last 50%/last 10%", show=False, tooltip="Loss plot: the whole run or its recent part"),
        Binding("left", "cursor(-1)", "Cursor left", show=False, tooltip="Loss plot: a cursor that reads out one point"),
        Binding("right", "cursor(1)", "Cursor right", show=False, tooltip="Loss plot: a cursor that reads out one point"),
        Binding("shift+left", "cursor(-10)", "Cursor far left", show=False),
        Binding("shift+right", "cursor(10)", "Cursor far right", show=False),
        Binding("g", "toggle_aux", "LR / grad norm plot", show=False,
                tooltip="A small plot of the learning rate and gradient norm under the loss"),
        Binding("a", "toggle_hellaswag", "HellaSwag plot", show=False,
                tooltip="A small plot of HellaSwag acc_norm under the loss, GPT-2's as a dashed line "
                        "(shown by itself once the run has scored it)"),
        Binding("v", "screenshot", "Save SVG", show=False, tooltip="Save this screen as an SVG file in the run's folder"),
        Binding("h", "home", "Home", show=False, tooltip="Presets, runs and diagnostics"),
        Binding("escape", "unfocus", "Keys", tooltip="Leave the text box so single keys act again"),
        Binding("escape", "hide_cursor", "Hide cursor", tooltip="Hide the loss plot's cursor"),
        # a dimmed key, pressed, says why it cannot act (these run only when the one above is dimmed)
        *(Binding(key, f"why('{action}')", show=False) for key, action in
          (("p", "toggle_pause"), ("c", "checkpoint"), ("x", "stop"), ("e", "edit_settings"))),
    ]
    RUN_ACTIONS = {"toggle_pause", "checkpoint", "stop", "edit_settings"}

    def __init__(self, run: RunDir, poll_interval: float | None = None) -> None:
        """`poll_interval`: None follows the machine's CPU (tui/pace.py: normal, or lean while no
        core is idle); a number fixes the pace at the normal one, polling that often (tests)."""
        super().__init__()
        self.run = run
        self.pace = NORMAL if poll_interval is None else Pace(poll_interval, NORMAL.status, NORMAL.plot_share,
                                                              NORMAL.plot_max)
        self.idle_cores: IdleCores | None = IdleCores() if poll_interval is None else None
        self.config_error: str | None = None
        try:
            self.cfg: cfgmod.Config | None = run.config()
        except UserError as e:
            self.cfg, self.config_error = None, str(e)
        t = self.cfg.train if self.cfg else None
        self.model = RunModel(run.name, max_iters=t.max_iters if t else 0,
                              micro_batch=t.micro_batch if t else None, grad_accum=t.grad_accum if t else None)
        self.feed = EventFeed(run, blank=self.model.blank)
        self._last_status = 0.0
        self._poll_timer: Timer | None = None
        self._polling = False  # a thread worker is reading the log
        self._was_live: bool | None = None
        # samples from the checkpoint in progress: request id -> its `gpt2-cockpit sample` process
        # (None until started); ids in _cancelled were cancelled with k
        self._checkpoint_samples: dict[str, subprocess.Popen | None] = {}
        self._cancelled: set[str] = set()

    @property
    def poll_interval(self) -> float:
        return self.pace.poll

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield LossPane(self.model, id="loss", cpu_share=self.pace.plot_share, max_gap=self.pace.plot_max)
            with Vertical(id="side"):
                yield StatusPane(self.model, id="status")
                yield GpuPane(self.model, id="gpu")
        with Horizontal(id="bottom"):
            yield SamplePane(id="samples")
            yield LogPane(id="log")
        yield Footer(compact=True)

    @property
    def settings(self) -> dict[str, Any]:
        """Live settings the run changed by `set` events: key -> new value."""
        return {k: v for k, v in self.model.settings.items() if k in cfgmod.LIVE_KEYS}

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
        self._tick()
        self._probe_gpu()

    def on_unmount(self) -> None:
        for request_id in list(self._checkpoint_samples):  # no sampling process outlives the cockpit
            self._end_checkpoint_sample(request_id)

    @work(thread=True, exclusive=True, exit_on_error=False, group="gpu-probe")
    def _probe_gpu(self) -> None:
        from gpt2_cockpit.engine.machine.hardware import has_cuda# NVML, never torch

        self.post_message(GpuProbed(has_cuda()))

    def on_gpu_probed(self, message: GpuProbed) -> None:
        self.query_one(GpuPane).nvidia = message.present

    # ---------------------------------------------------------------- the feed

    def _tick(self) -> None:
        """The poll timer. The history's replay and a big catch-up are read in a thread worker;
        a few new lines (what a live run appends between ticks) or none are read here, which
        costs a stat and a small read instead of a thread, three worker messages and a
        message round trip on every tick."""
        self._poll_timer = None
        if self.feed.polls == 0 or self.feed.backlog() > INLINE_READ_BYTES:
            self._polling = True
            self._poll()
        else:
            self.on_events_arrived(self.feed.poll())

    def _arm(self, delay: float) -> None:
        """The next poll in `delay` seconds (one timer at a time: polls never pile up)."""
        if self._poll_timer is not None:
            self._poll_timer.stop()
        self._poll_timer = self.set_timer(delay, self._tick)

    def poll_soon(self) -> None:
        """Read the log now rather than at the next tick (a command of ours was answered: what
        it did is in the log), unless a read is on its way."""
        if not self._polling:
            self._arm(0.01)

    @work(thread=True, exclusive=True, exit_on_error=False, group="feed")
    def _poll(self) -> None:
        self.post_message(self.feed.poll())

    def on_events_arrived(self, message: EventsArrived) -> None:
        m = self.model
        if message.model is not None:  # the replayed history, folded off the UI thread
            m.take_over(message.model)
            changes = message.changes or Changes()
        else:
            changes = m.ingest(message.events)
        m.alive = message.alive
        if changes.plot:
            self.loss.data_changed()  # drawn with the status below, as often as its budget allows
        if changes.state:  # what a pause, resume or stop on its way did is now in the log
            self.status.pending = None
        now = time.monotonic()
        if self.idle_cores is not None:
            self.set_pace(next_pace(self.pace, self.idle_cores.update()))
        # What the log pane reports too (a state change, an eval, a checkpoint, a `set`, ...), the
        # run coming or going, and the replay show at once; new steps' figures (iter, loss,
        # speed) and preparation progress at most every `pace.status` seconds, which also keeps
        # ages and the ETA current while nothing happens. Each repaint costs the viewer a few ms
        # of CPU, which a run training on the CPU loses; the panes skip one that changes nothing.
        urgent = bool(changes.log) or changes.state or m.live != self._was_live or message.model is not None
        repaint = urgent or now - self._last_status >= self.pace.status - self.pace.poll / 2  # the nearest tick
        if repaint:
            self._last_status = now
            self.status.show()
            self.loss.catch_up(now, slack=self.pace.poll / 2, urgent=urgent)  # the iteration the status shows
        if repaint or changes.gpu:
            self.query_one(GpuPane).show()
        sampling = bool(self.samples.pending_ids())
        if changes.samples:
            self.samples.show_samples(changes.samples)
        for request_id, error in changes.sample_errors:
            self.samples.fail_pending(request_id, error)
        if not m.live:  # an accepted sample that the run ended before answering
            for request_id in self.samples.pending_ids():
                if request_id in self._checkpoint_samples:
                    continue  # from the checkpoint, in a process of ours
                self.samples.fail_pending(request_id, f"the run ended ({m.display_state}) before answering")
        if sampling != bool(self.samples.pending_ids()):
            self.refresh_bindings()  # k (cancel) is offered only while a sample is on its way
        if changes.log:
            self.log_pane.add(changes.log)
        if m.live != self._was_live:
            self._was_live = m.live
            self.refresh_bindings()
        if changes.ooms and not message.replay:  # a new OOM while we watch, not old history
            self.offer_oom_split(changes.ooms[-1])
        self._polling = False
        self._arm(self.poll_interval)  # re-armed only now: polls never pile up

    def set_pace(self, pace: Pace) -> None:
        """Read and repaint at this pace from now on (tui/pace.py)."""
        if pace != self.pace:
            self.pace = pace
            self.loss.set_budget(pace.plot_share, pace.plot_max)

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
            self._polling = False
            self._arm(max(self.poll_interval, 2.0))

    # ---------------------------------------------------------------- commands

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "toggle_pause" and self.model.resumable:
            return True  # p restarts it
        if action in self.RUN_ACTIONS and not self.model.live:
            return None  # shown dimmed in the Footer: the run is not there to take commands
        if action == "why":
            return self.check_action(str(parameters[0]), ()) is None  # only while that key is dimmed
        if action == "unfocus":
            return isinstance(self.focused, Input)  # offered only while typing
        if action == "hide_cursor":
            return self.loss.cursor is not None and not isinstance(self.focused, Input)
        if action == "cancel_sample":  # offered only while one is on its way
            return bool(self._checkpoint_samples) or (bool(self.samples.pending_ids()) and self.model.live)
        return True

    def why_not(self, action: str) -> str:
        """Why a dimmed key cannot act now, in one sentence."""
        m, name = self.model, self.run.name
        state = m.display_state
        if m.alive is None:
            return "reading the run's log; try again in a moment"
        if m.resumable:
            return f"run {name} is {state}: no process to take commands; p restarts it from its last checkpoint"
        if m.alive and state in FINAL_STATES:
            return f"run {name} is {state}; its process is exiting"
        if state == "done":
            return (f"run {name} is done{f' ({m.reason})' if m.reason else ''}; "
                    f"'gpt2-cockpit resume {name} --set train.max_iters=N' trains it further")
        return f"run {name} is {state}: it takes no commands"

    def action_why(self, action: str) -> None:
        binding = next((b for b in self.BINDINGS if isinstance(b, Binding) and b.action == action), None)
        self.notify(self.why_not(action), title=binding.description if binding else action, severity="warning")

    @work(thread=True, exit_on_error=False, group="control")
    def _control(self, requests: list[dict[str, Any]]) -> None:
        """Send commands one after another. An accepted one is done: its events follow in the
        log. A refused or undelivered one comes back as ControlFailed."""
        for msg in requests:
            try:
                launch.control(self.run, msg, timeout=CONTROL_TIMEOUT)
            except (UserError, OSError, ValueError) as e:
                self.post_message(ControlFailed(msg, str(e) or e.__class__.__name__))
            else:
                self.post_message(CommandAnswered(msg))

    def _send(self, msg: dict[str, Any], pending: str | None = None) -> None:
        if pending:
            self.status.pending = pending  # until the run's next `state` event
        self._control([msg])

    def on_command_answered(self, message: CommandAnswered) -> None:
        self.poll_soon()  # show what it did now, not at the next tick

    def on_control_failed(self, message: ControlFailed) -> None:
        cmd = message.request.get("cmd", "command")
        if cmd in ("pause", "resume", "stop", "restart"):
            self.status.pending = None
        elif cmd == "sample":
            self.samples.fail_pending(message.request.get("request_id"), message.error)
        self.log_pane.say(message.error, "error")
        self.notify(message.error, title=f"{cmd} failed", severity="error")

    def action_toggle_pause(self) -> None:
        if not self.model.live:
            self._offer_restart()
        elif self.model.state == "paused":
            self._send({"cmd": "resume"}, pending="resuming")
        else:
            self._send({"cmd": "pause"}, pending="pausing")

    def _offer_restart(self) -> None:
        ck = self.model.last_checkpoint
        where = f"its last checkpoint (@{ck.get('iter')})" if ck else "its last checkpoint"

        def answered(yes: bool | None) -> None:
            if yes:
                self.status.pending = "restarting"  # until the new process logs its state
                self._restart()

        self.app.push_screen(ConfirmScreen(
            f"Resume run {self.run.name}?\n\nIt is {self.model.display_state}. Its process starts again in the "
            f"background from {where}, as 'gpt2-cockpit resume {self.run.name} --detach' does, and this screen "
            f"follows it.", yes="Resume"), answered)

    @work(thread=True, exclusive=True, exit_on_error=False, group="restart")
    def _restart(self) -> None:
        try:
            pid = launch.restart(self.run)
        except (UserError, OSError) as e:
            self.post_message(ControlFailed({"cmd": "restart"}, str(e) or e.__class__.__name__))
            return
        self.post_message(Restarted(pid))

    def on_restarted(self, message: Restarted) -> None:
        self.log_pane.say(f"restarted run {self.run.name} from its last checkpoint (pid {message.pid})")
        self.poll_soon()

    def action_checkpoint(self) -> None:
        self.notify("checkpoint requested; written after the current step", title="checkpoint")
        self._send({"cmd": "checkpoint"})

    def action_stop(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._send({"cmd": "stop"}, pending="stopping")

        self.app.push_screen(ConfirmScreen(
            f"Stop run {self.run.name}?\n\nIt finishes the current step, writes a checkpoint and exits. "
            f"'gpt2-cockpit resume {self.run.name}' continues it later.", yes="Stop"), answered)

    def action_edit_settings(self) -> None:
        if self.cfg is None:
            self.notify(self.config_error or "the run's config.toml cannot be read", severity="error")
            return
        try:
            current = cfgmod.with_overrides(self.cfg, self.settings, origin="live settings")
        except UserError:
            current = self.cfg

        def apply(changes: dict[str, Any] | None) -> None:
            if changes:
                self._control([{"cmd": "set", "key": k, "value": v} for k, v in changes.items()])

        self.app.push_screen(LiveSettingsScreen(current, self.run.name), apply)

    def action_focus_prompt(self) -> None:
        self.samples.prompt_input.focus()

    def on_sample_pane_sample_requested(self, message: SamplePane.SampleRequested) -> None:
        rid = uuid.uuid4().hex[:12]
        self.set_focus(None)  # out of the prompt: single keys act again (k cancels, as the view says)
        if not self.model.live:  # the newest checkpoint, in a `gpt2-cockpit sample` process
            ck = self.model.last_checkpoint
            self._checkpoint_samples[rid] = None
            self.samples.add_pending(rid, message.prompt,
                                     "from the checkpoint" + (f" @{ck.get('iter')}" if ck else ""))
            self.refresh_bindings()
            self._sample_checkpoint(rid, message.prompt, message.max_new_tokens, message.temperature, message.top_k)
            return
        self.samples.add_pending(rid, message.prompt)  # resolved by the `sample` event with this id
        self.refresh_bindings()
        self._send({"cmd": "sample", "prompt": message.prompt, "max_new_tokens": message.max_new_tokens,
                    "temperature": message.temperature, "top_k": message.top_k, "request_id": rid})

    @work(thread=True, exit_on_error=False, group="checkpoint-sample")
    def _sample_checkpoint(self, rid: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int) -> None:
        """`gpt2-cockpit sample` on the run (it loads torch, so in a process of its own); k ends it."""
        argv = checkpoint_sample_argv(self.run, prompt, max_new_tokens, temperature, top_k)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, encoding="utf-8", errors="replace", start_new_session=True,
                                    env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        except OSError as e:
            self.post_message(CheckpointSampled(rid, prompt, error=f"could not start 'gpt2-cockpit sample': {e}"))
            return
        self._checkpoint_samples[rid] = proc
        if rid in self._cancelled:  # k came before the process did
            _end(proc)
        out, err = proc.communicate()
        if rid in self._cancelled:
            self.post_message(CheckpointSampled(rid, prompt, cancelled=True))
        elif proc.returncode == 0:
            self.post_message(CheckpointSampled(rid, prompt, text=out[:-1] if out.endswith("\n") else out))
        else:
            lines = [line for line in err.strip().splitlines() if line.strip()]
            why = lines[-1].removeprefix("gpt2-cockpit: ") if lines else f"exit code {proc.returncode}"
            self.post_message(CheckpointSampled(rid, prompt, error=why))

    def on_checkpoint_sampled(self, message: CheckpointSampled) -> None:
        rid = message.request_id
        self._checkpoint_samples.pop(rid, None)
        self._cancelled.discard(rid)
        if message.error is not None:
            self.samples.fail_pending(rid, message.error)
            self.log_pane.say(f"sample from the checkpoint failed: {message.error}", "error")
        else:
            ck = self.model.last_checkpoint
            self.samples.show_samples([Sample(ck.get("iter") if ck else None, message.prompt,
                                              message.text if message.text is not None else message.prompt, rid,
                                              time.time(), cancelled=message.cancelled, from_checkpoint=True)])
        self.refresh_bindings()

    def _end_checkpoint_sample(self, request_id: str) -> None:
        self._cancelled.add(request_id)
        proc = self._checkpoint_samples.get(request_id)
        if proc is not None:
            _end(proc)

    def action_cancel_sample(self) -> None:
        """A live run stops generating the newest sample; its `error` event ("sample cancelled")
        closes the view. A sample from the checkpoint ends with its process."""
        pending = self.samples.pending_ids()
        if not pending:
            return
        if pending[-1] in self._checkpoint_samples:
            self._end_checkpoint_sample(pending[-1])
        else:
            self._send({"cmd": "cancel", "request_id": pending[-1]})

    # ---------------------------------------------------------------- view

    def action_toggle_log_scale(self) -> None:
        self.loss.toggle_log()

    def action_toggle_x_axis(self) -> None:
        self.loss.toggle_x_axis()

    def action_smoothing(self, direction: int) -> None:
        self.loss.cycle_smoothing(direction)

    def action_zoom(self) -> None:
        self.loss.cycle_zoom()

    def action_cursor(self, columns: int) -> None:
        self.loss.move_cursor(columns)
        self.refresh_bindings()  # Esc now hides it

    def action_hide_cursor(self) -> None:
        self.loss.hide_cursor()
        self.refresh_bindings()

    def action_toggle_aux(self) -> None:
        self.loss.toggle_aux()

    def action_toggle_hellaswag(self) -> None:
        self.loss.toggle_hellaswag()

    def action_screenshot(self) -> None:
        """The screen as an SVG file in the run's folder (or here, if that cannot be written)."""
        name = f"{self.run.name}-{time.strftime('%Y%m%d-%H%M%S')}.svg"
        try:
            path = self.app.save_screenshot(name, str(self.run.path))
        except OSError:
            try:
                path = self.app.save_screenshot(name, ".")
            except OSError as e:
                self.log_pane.say(f"could not save a screenshot: {e}", "error")
                return
        self.log_pane.say(f"screenshot saved: {path}")
        self.notify(path, title="screenshot saved")

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


def _end(proc: subprocess.Popen) -> None:
    """End a sampling process (it leads its own process group) and whatever it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except OSError:
        pass  # gone already
