"""A stand-in for a training run, for the cockpit's tests: no torch, no model. (A helper
module, not a test file; tests/test_tui_realrun.py drives the cockpit against a real run.)

`FakeRun` owns a real run directory (config.toml, events.jsonl, pid, control socket) and a
thread that does what a run does from the outside, speaking the control protocol: a command is
applied between "steps", the events it causes are written, and only then the reply goes back,
`{"ok": true}` or `{"ok": false, "error": ...}`, nothing more. A sample is accepted first; its
text follows as a `sample` event with the request's id (or an `error` event with it).

Also the small helpers every cockpit test uses to drive the app with Pilot, and to start a real
run process for it to watch.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import threading
import time

import pytest

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.control import ControlServer
from gpt2_cockpit.engine.runs.events import EventWriter
from gpt2_cockpit.engine.runs.rundir import RunDir, create, pid_alive


def make_run(name: str = "fake", preset: str = "cpu-tiny", overrides: list[str] | None = None) -> RunDir:
    cfg = presets.load(preset, overrides or [])
    return create(cfg, name)


def loss_at(it: int) -> float:
    return 1.2 + 3.0 * math.exp(-it / 400) + 0.05 * math.sin(it / 7)


def lr_at(it: int) -> float:
    return 1e-3 * min(1.0, it / 100)


def grad_norm_at(it: int) -> float:
    return 0.5 + 2.0 * math.exp(-it / 300)


class FakeRun:
    """Answers commands and writes events like a live run; `step_every` seconds per logged step
    while running (None: no steps of its own, only what the test writes).

    Tests can script misbehaviour: `refuse[cmd] = "why"` refuses that command; `sample_error`
    makes every accepted sample end in an `error` event; `slow_samples` accepts samples and
    leaves them in progress until cancelled; `silent` accepts pause/resume/stop without writing
    any event (a reply must never change what the cockpit shows)."""

    def __init__(self, run: RunDir, step_every: float | None = None, log_interval: int = 10, loss_offset: float = 0.0):
        self.run = run
        self.loss_offset = loss_offset  # runs of a sweep differ
        self.cfg = run.config()
        self.events = EventWriter(run.events_path)
        self.log_interval = log_interval
        self.iter = 0
        self.state = "running"
        self.received: list[dict] = []
        self.step_every = step_every
        self.refuse: dict[str, str] = {}
        self.sample_error: str | None = None
        self.slow_samples = False
        self.in_progress: set[str] = set()
        self.silent = False
        self._stop = threading.Event()
        run.pid_path.write_text(f"{os.getpid()}\n")
        self.server = ControlServer(run.socket_path)
        self.thread = threading.Thread(target=self._loop, daemon=True)

    # ---------------------------------------------------------------- history

    def start_events(self, device: str = "cpu") -> None:
        self.events.emit("state", state="preparing", reason="loading data and model")
        self.events.emit("run", name=self.run.name, preset=self.cfg.name, engine=self.cfg.engine,
                         config=self.cfg.to_dict(), device=device, world_size=1, resumed_from=None)
        self.events.emit("state", state="running", reason="")

    def step(self) -> None:
        self.iter += self.log_interval
        t = self.cfg.train
        tokens = self.iter * t.micro_batch * t.grad_accum * self.cfg.model.block_size
        loss = loss_at(self.iter) + self.loss_offset
        self.events.emit("step", iter=self.iter, loss=loss, lr=lr_at(self.iter), tokens=tokens,
                         tokens_per_sec=25000.0, ms=30.0, mfu=None, micro_batch=t.micro_batch,
                         grad_accum=t.grad_accum, grad_norm=grad_norm_at(self.iter))
        if self.iter % t.eval_interval == 0:
            self.events.emit("eval", iter=self.iter, train_loss=loss, val_loss=loss + 0.1)
        if self.iter % t.checkpoint_interval == 0:
            self.events.emit("checkpoint", iter=self.iter, path=str(self.run.checkpoints / f"ckpt-{self.iter}.pt"),
                             best=True)

    def history(self, steps: int) -> None:
        self.start_events()
        for _ in range(steps):
            self.step()

    # ---------------------------------------------------------------- live

    def start(self) -> "FakeRun":
        self.thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.server.close()
        self.events.close()

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            for cmd in self.server.poll():
                self.handle(cmd)
            if self.step_every is not None and self.state == "running" and time.monotonic() - last >= self.step_every:
                last = time.monotonic()
                self.step()
            self._stop.wait(0.01)

    def handle(self, cmd) -> None:
        self.received.append(cmd.to_wire())
        a = cmd.args
        if cmd.cmd in self.refuse:
            cmd.refuse(self.refuse[cmd.cmd])
        elif cmd.cmd in ("pause", "resume", "stop") and self.silent:
            cmd.accept()
        elif cmd.cmd in ("pause", "resume"):
            self.state = "paused" if cmd.cmd == "pause" else "running"
            self.events.emit("state", state=self.state, reason="from the cockpit")
            cmd.accept()
        elif cmd.cmd == "stop":
            self.events.emit("state", state="stopping", reason="stop requested")
            self.events.emit("checkpoint", iter=self.iter, path=str(self.run.checkpoints / f"ckpt-{self.iter}.pt"),
                             best=False)
            self.events.emit("state", state="stopped", reason="stop requested")
            self.state = "stopped"
            cmd.accept()
        elif cmd.cmd == "checkpoint":
            self.events.emit("checkpoint", iter=self.iter, path=str(self.run.checkpoints / f"ckpt-{self.iter}.pt"),
                             best=False)
            cmd.accept()
        elif cmd.cmd == "sample":
            cmd.accept()  # taken; the text (or the failure) follows as an event
            rid = a.get("request_id")
            if self.slow_samples:
                self.in_progress.add(rid)
            elif self.sample_error:
                self.events.emit("error", message=self.sample_error, request_id=rid)
            else:
                prompt = a.get("prompt", "")
                self.events.emit("sample", iter=self.iter, prompt=prompt,
                                 text=f"{prompt} -> generated at iter {self.iter}", request_id=rid)
        elif cmd.cmd == "cancel" and a.get("request_id") in self.in_progress:
            self.in_progress.discard(a["request_id"])
            self.events.emit("sample", iter=self.iter, prompt="", text="half a", request_id=a["request_id"],
                             cancelled=True)
            cmd.accept()
        elif cmd.cmd == "set":
            key = a.get("key")
            if key not in cfgmod.LIVE_KEYS:
                cmd.refuse(f"{key} cannot change during a run")
                return
            old = self.cfg.get(key)
            self.cfg = cfgmod.with_overrides(self.cfg, {key: a.get("value")})
            self.events.emit("set", key=key, old=old, new=self.cfg.get(key))
            cmd.accept()
        else:
            cmd.refuse(f"unknown command {cmd.cmd}")


def fake_spawns(monkeypatch) -> list[FakeRun]:
    """launch.spawn replaced: a run the cockpit starts is a FakeRun with 3 steps of history, live;
    the list holds them in the order started (close each at the end)."""
    started: list[FakeRun] = []

    def spawn(run, resume, gpus, wait=20.0):
        f = FakeRun(run)
        f.history(3)
        started.append(f.start())
        return 1234

    monkeypatch.setattr(launch, "spawn", spawn)
    return started


# --------------------------------------------------------------------------- driving the app

POLL = 0.05  # seconds between the run screen's reads of the log, in tests that fix it


def fake_doctor(checks) -> list[str]:
    """The command home runs for its diagnostics, printing `checks` as `doctor --json` would."""
    return [sys.executable, "-c", f"import json; print(json.dumps({checks!r}))"]


def run_app(app, size=(80, 24)):
    """Decorator: run an async test body against `app` inside run_test()."""
    def wrap(body):
        async def main():
            async with app.run_test(size=size) as pilot:
                await body(pilot)
        asyncio.run(main())
    return wrap


async def wait_for(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Let the app run until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def text_of(widget) -> str:
    return str(widget.render())


def status_text(app) -> str:
    from gpt2_cockpit.tui.widgets.status import StatusPane

    return text_of(app.screen.query_one(StatusPane))


def shown_iter(app) -> int:
    """The iteration the status pane shows (it repaints new figures at its pace, not at once)."""
    return int(status_text(app).split("iter", 1)[1].split("/", 1)[0])


def notifications(app) -> list[str]:
    """What the app tells the user from now on ("title: message"), in a list that grows."""
    told: list[str] = []
    notify = app.notify

    def recording(message, **kw):
        told.append(f"{kw.get('title', '')}: {message}")
        return notify(message, **kw)

    app.notify = recording
    return told


async def more_polls(pilot, screen, n: int = 3, timeout: float = 20.0) -> None:
    """Let the run screen read the log `n` more times (and handle all but the last read): what a
    poll would change has had its chance to show."""
    target = screen.feed.polls + n
    await wait_for(pilot, lambda: screen.feed.polls >= target, timeout=timeout, what=f"{n} more polls")


# --------------------------------------------------------------------------- a real run process

START = 60.0  # seconds for the run process to import torch, tokenize and take its first steps


def spawn_real_run(corpus, name: str, **train) -> tuple[RunDir, int]:
    """A detached tiny run on the CPU that would train for a long time unless stopped (no eval, no
    checkpoint but the one a stop writes); (its run directory, its pid)."""
    from conftest import tiny_overrides

    run = launch.create_run("cpu-tiny", tiny_overrides(corpus, **{
        "max_iters": 100_000, "lr_decay_iters": 100_000, "warmup_iters": 2, "log_interval": 1,
        "eval_interval": 100_000, "checkpoint_interval": 100_000, **train}), name)
    return run, launch.spawn(run, resume=False, gpus=None)


def process_gone(pid: int) -> bool:
    """Exited (a zombie, not yet reaped by its parent, this test process, counts as gone)."""
    return not pid_alive(pid)


def kill_if_running(pid: int | None) -> None:
    """A failed test must not leave a run training (conftest kills leftovers too): SIGKILL its group."""
    if pid is None or process_gone(pid):
        return
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except OSError:
        pass


@pytest.fixture
def fake():
    """start(steps, step_every, **make_run kwargs) -> a started FakeRun with `steps` logged
    steps of history; every run started is closed after the test."""
    runs = []

    def start(steps: int = 20, step_every: float | None = None, **kw) -> FakeRun:
        f = FakeRun(make_run(**kw), step_every=step_every)
        f.history(steps)
        runs.append(f.start())
        return f

    yield start
    for f in runs:
        f.close()
