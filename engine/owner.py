"""The run process's hold on its run directory: one object writes every file of a run.

`RunOwner` (rank 0) is the only writer of events.jsonl, config.toml (through
RunDir.write_config), checkpoints, pid and heartbeat, and it serves the control socket.
Every other rank of a torchrun group gets a `NullRunOwner`: the same methods, doing nothing,
so the training loop reads the same on every rank.

Commands reach the loop as plain dicts ({"id", "cmd", ...args}) so they can be broadcast to
all ranks; the loop answers each by id (`answer`), and rank 0 replies on the socket.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Callable

from . import config as cfgmod
from .control import Command, ControlServer
from .events import EventWriter
from .runs import HEARTBEAT_SECONDS, RunDir

GPU_SAMPLE_SECONDS = 5.0


class RunOwner:
    def __init__(self, run: RunDir):
        self.run = run
        self.name = run.name
        self.events = EventWriter(run.events_path)
        self.listeners = self.events.listeners  # callables(event): e.g. the headless progress printer
        self.control: ControlServer | None = None
        self._waiting: dict[str, Command] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()

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
        return self.events.emit(type, **fields)

    def write_config(self, cfg: cfgmod.Config) -> None:
        self.run.write_config(cfg)

    def save_checkpoint(self, iter: int, state: dict[str, Any], best: bool,
                        artefacts: Callable[[RunDir, int, bool], None]) -> None:
        """checkpoints/ckpt-ITER.pt (complete files only), the engine's artefacts, then the event."""
        from . import checkpoint as ckpt

        path = ckpt.save(self.run.checkpoints, iter, state, best)
        artefacts(self.run, iter, best)
        self.emit("checkpoint", iter=iter, path=str(path), best=best)

    # ---------------------------------------------------------------- commands

    def requests(self) -> list[dict[str, Any]]:
        """Commands that arrived since the last call, as plain dicts with an `id` to answer."""
        if self.control is None:
            return []
        out = []
        for cmd in self.control.poll():
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
        """Touch `heartbeat` every few seconds and emit `gpu` events, never disturbing training."""
        try:
            from .gpustats import GpuSampler

            sampler = GpuSampler.create()
        except Exception:
            sampler = None
        last_gpu = 0.0
        while not self._stop.is_set():
            self.run.heartbeat_path.touch()
            now = time.time()
            if sampler and now - last_gpu >= GPU_SAMPLE_SECONDS:
                last_gpu = now
                try:
                    for reading in sampler.sample():
                        self.emit("gpu", **reading)
                except Exception:
                    pass  # a GPU reading must never disturb training
            self._stop.wait(min(HEARTBEAT_SECONDS, GPU_SAMPLE_SECONDS))


class NullRunOwner:
    """Ranks other than 0, benchmarks and checkpoint sampling: same methods, no files, no commands."""

    name = "(no run)"

    def __init__(self) -> None:
        self.listeners: list = []

    def open(self) -> "NullRunOwner":
        return self

    def close(self) -> None:
        pass

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, **fields}

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
