"""A stand-in for a training run, for the cockpit's tests: no torch, no model.

`FakeRun` owns a real run directory (config.toml, events.jsonl, pid, control socket) and a
thread that does what engine.runner does from the outside: it answers control commands
between "steps" and appends events. The tests drive the real cockpit against it.
"""

from __future__ import annotations

import math
import os
import threading
import time

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.control import ControlServer
from gpt2_cockpit.engine.events import EventWriter
from gpt2_cockpit.engine.runs import RunDir, create


def make_run(name: str = "fake", preset: str = "cpu-tiny", overrides: list[str] | None = None) -> RunDir:
    cfg = presets.load(preset, overrides or [])
    return create(cfg, name)


def loss_at(it: int) -> float:
    return 1.2 + 3.0 * math.exp(-it / 400) + 0.05 * math.sin(it / 7)


class FakeRun:
    """Answers commands and writes events like a live run; `step_every` seconds per logged step
    while running (None: no steps of its own, only what the test writes)."""

    def __init__(self, run: RunDir, step_every: float | None = None, log_interval: int = 10):
        self.run = run
        self.cfg = run.config()
        self.events = EventWriter(run.events_path)
        self.log_interval = log_interval
        self.iter = 0
        self.state = "running"
        self.received: list[dict] = []
        self.step_every = step_every
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
        self.events.emit("step", iter=self.iter, loss=loss_at(self.iter), lr=1e-3, tokens=tokens,
                         tokens_per_sec=25000.0, ms=30.0, mfu=None, micro_batch=t.micro_batch,
                         grad_accum=t.grad_accum)
        if self.iter % t.eval_interval == 0:
            self.events.emit("eval", iter=self.iter, train_loss=loss_at(self.iter), val_loss=loss_at(self.iter) + 0.1)
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
        if cmd.cmd in ("pause", "resume"):
            self.state = "paused" if cmd.cmd == "pause" else "running"
            self.events.emit("state", state=self.state, reason="from the cockpit")
            cmd.reply(state=self.state)
        elif cmd.cmd == "stop":
            self.state = "stopping"
            cmd.reply(state="stopping")
            self.events.emit("state", state="stopping", reason="stop requested")
            self.events.emit("state", state="stopped", reason="stop requested")
            self.state = "stopped"
        elif cmd.cmd == "checkpoint":
            path = str(self.run.checkpoints / f"ckpt-{self.iter}.pt")
            self.events.emit("checkpoint", iter=self.iter, path=path, best=False)
            cmd.reply(iter=self.iter, path=path)
        elif cmd.cmd == "sample":
            text = a.get("prompt", "") + " -> generated at iter %d" % self.iter
            self.events.emit("sample", iter=self.iter, prompt=a.get("prompt", ""), text=text,
                             request_id=a.get("request_id"))
            cmd.reply(iter=self.iter, text=text, request_id=a.get("request_id"))
        elif cmd.cmd == "set":
            key = a.get("key")
            if key not in cfgmod.LIVE_KEYS:
                cmd.fail(f"{key} cannot change during a run")
                return
            old = self.cfg.get(key)
            self.cfg = cfgmod.with_overrides(self.cfg, {key: a.get("value")})
            self.events.emit("set", key=key, old=old, new=self.cfg.get(key))
            cmd.reply(key=key, old=old, new=self.cfg.get(key))
        else:
            cmd.fail(f"unknown command {cmd.cmd}")
