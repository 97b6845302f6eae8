"""The run process's hold on its run directory: one object writes every file of a run.

`RunOwner` (rank 0) is the only writer of events.jsonl, config.toml (through
RunDir.write_config), checkpoints, pid and heartbeat, and it serves the control socket.
Every other rank of a torchrun group gets a `NullRunOwner`: the same methods, doing nothing,
so the training loop reads the same on every rank.

Commands reach the loop as plain dicts ({"id", "cmd", ...args}) so they can be broadcast to
all ranks; the loop answers each by id (`answer`), and rank 0 replies on the socket.

A full disk pauses the run, on every rank at the same step: the owner queues a `pause` for
itself (as a signal queues a `stop`), keeps the events it could not write in memory, writes
them as soon as there is room again (the heartbeat thread keeps trying), and never leaves a
partial checkpoint; `gpt2-cockpit resume RUN` goes on once space is freed.

A torchrun group that loses a rank fails: `fail` logs one `error` sentence and the `failed`
state, once, and no later state event contradicts it. The heartbeat thread also asks a `watch`
function every second whether the group is whole, so the error is in the log even while the
training thread is stuck in a collective that will never complete.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from typing import Any, Callable

from .. import config as cfgmod
from ..fsutil import disk_full_message, is_disk_full
from ..runs.control import Command, ControlServer
from ..runs.events import EventWriter
from ..runs.rundir import HEARTBEAT_SECONDS, RunDir

GPU_SAMPLE_SECONDS = 5.0
WATCH_SECONDS = 1.0  # how often the background thread looks at the group (and at held-back events)


class RunOwner:
    def __init__(self, run: RunDir):
        self.run = run
        self.name = run.name
        self.events = EventWriter(run.events_path, on_disk_full=lambda e: self.disk_full(e.filename or run.events_path))
        self.listeners = self.events.listeners  # callables(event): e.g. the headless progress printer
        self.control: ControlServer | None = None
        self._waiting: dict[str, Command] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._disk_full = False  # a pause for a full disk is queued and not yet resumed from
        self.failed = False  # `fail` was called: the run's last state is `failed`
        self._watch: Callable[[], str | None] | None = None
        self._fail_lock = threading.Lock()

    def open(self) -> "RunOwner":
        """pid, heartbeat and control socket first (before torch loads), then the background thread."""
        self.run.pid_path.write_text(f"{os.getpid()}\n")
        self.run.heartbeat_path.touch()
        self.control = ControlServer(self.run.socket_path)
        threading.Thread(target=self._background, name="heartbeat", daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()
        for cmd in self._waiting.values():
            cmd.refuse("the run has exited")
        if self.control is not None:
            self.control.close()
        self.events.close()

    # ---------------------------------------------------------------- files

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        if type == "state" and self.failed:  # a failed run says so last (e.g. no `stopped` after it)
            return {"type": type, **fields}
        return self.events.emit(type, **fields)

    def fail(self, message: str, reason: str | None = None) -> None:
        """Log why the run cannot go on (an `error` event) and the `failed` state (`reason`, else
        the message); once only, from whichever thread sees it first."""
        with self._fail_lock:
            if self.failed:
                return
            self.emit("error", message=message)
            self.emit("state", state="failed", reason=reason or message)
            self.failed = True

    def watch(self, check: Callable[[], str | None] | None) -> None:
        """Have the background thread call `check` every WATCH_SECONDS: a sentence it returns
        fails the run (a rank of the group is gone). None stops watching."""
        self._watch = check

    def write_config(self, cfg: cfgmod.Config) -> None:
        try:
            self.run.write_config(cfg)
        except OSError as e:
            if not is_disk_full(e):
                raise
            self.disk_full(self.run.config_path)

    def save_checkpoint(self, iter: int, state: dict[str, Any], best: bool,
                        artefacts: Callable[[RunDir, int, bool], None]) -> None:
        """checkpoints/ckpt-ITER.pt (complete files only), the engine's artefacts, then the event."""
        from . import checkpoint as ckpt

        try:
            path = ckpt.save(self.run.checkpoints, iter, state, best)
            artefacts(self.run, iter, best)
        except OSError as e:
            if not is_disk_full(e):
                raise
            self.disk_full(e.filename or self.run.checkpoints)
            return
        self.emit("checkpoint", iter=iter, path=str(path), best=best)

    def disk_full(self, path) -> None:
        """Say which file did not fit and how much room is left, and pause the run (once)."""
        if self._disk_full:
            return
        self._disk_full = True
        message = disk_full_message(path)
        if self.control is not None:
            self.control.submit(Command("pause", {"reason": f"{message}: free some space, then resume the run"}))
        self.emit("error", message=f"{message}; the run pauses, and its last complete checkpoint is kept")

    # ---------------------------------------------------------------- commands

    def requests(self) -> list[dict[str, Any]]:
        """Commands that arrived since the last call, as plain dicts with an `id` to answer."""
        if self.control is None:
            return []
        out = []
        for cmd in self.control.poll():
            if cmd.cmd == "resume" and self._disk_full:
                if not self.events.flush():  # room again? the held-back events go first
                    cmd.refuse(f"{disk_full_message(self.run.events_path)}: free some space first")
                    continue
                self._disk_full = False
            cid = str(next(self._ids))
            self._waiting[cid] = cmd
            out.append({"id": cid, **cmd.to_wire()})
        return out

    def answer(self, cid: str, error: str | None = None) -> None:
        """Reply to command `cid`: accepted (error None) or refused with one sentence. Once only."""
        cmd = self._waiting.pop(cid, None)
        if cmd is None:
            return
        if error is None:
            cmd.accept()
        else:
            cmd.refuse(error)

    def request_stop(self, reason: str) -> None:
        """From a signal handler: stop after the current step, as a `stop` command would."""
        if self.control is not None:
            self.control.submit(Command("stop", {"reason": reason}))

    # ---------------------------------------------------------------- heartbeat and GPU readings

    def _background(self) -> None:
        """Touch `heartbeat`, emit `gpu` events and watch the group, never disturbing training."""
        try:
            from ..machine.gpustats import GpuSampler

            sampler = GpuSampler.create()
        except Exception:
            sampler = None
        last_gpu, last_beat = 0.0, -math.inf
        while not self._stop.is_set():
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                self.run.heartbeat_path.touch()
            if self.events.pending:
                self.events.flush()  # a full disk held events back: write them once there is room
            now = time.time()
            if sampler and now - last_gpu >= GPU_SAMPLE_SECONDS:
                last_gpu = now
                try:
                    for reading in sampler.sample():
                        self.emit("gpu", **reading)
                except Exception:
                    pass  # a GPU reading must never disturb training
            self._check_group()
            self._stop.wait(min(HEARTBEAT_SECONDS, GPU_SAMPLE_SECONDS, WATCH_SECONDS))

    def _check_group(self) -> None:
        check = self._watch
        if check is None or self.failed:
            return
        try:
            message = check()
        except Exception:
            return  # a liveness check must never disturb training
        if message and self._watch is check:  # still watching: the run did not finish meanwhile
            self.fail(message)


class NullRunOwner:
    """Ranks other than 0, benchmarks and checkpoint sampling: same methods, no files, no commands."""

    name = "(no run)"
    failed = False

    def __init__(self) -> None:
        self.listeners: list = []

    def open(self) -> "NullRunOwner":
        return self

    def close(self) -> None:
        pass

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, **fields}

    def fail(self, message: str, reason: str | None = None) -> None:
        pass

    def watch(self, check) -> None:
        pass

    def write_config(self, cfg: cfgmod.Config) -> None:
        pass

    def save_checkpoint(self, iter: int, state: dict[str, Any], best: bool, artefacts) -> None:
        pass

    def requests(self) -> list[dict[str, Any]]:
        return []

    def answer(self, cid: str, error: str | None = None) -> None:
        pass

    def request_stop(self, reason: str) -> None:
        pass
