"""The run's event log, events.jsonl: one JSON object per line, append-only.

The writer appends each event as one whole line with a single write() on an O_APPEND
descriptor, so concurrent readers never see half an event except at the very end of the
file while it is being written. When the disk is full, a line that did not fit is cut off
again and kept in memory with the ones after it, to be written once there is room. The reader
replays from the start and then follows, holding back a partial last line until its newline
arrives. Never imports torch.
"""

from __future__ import annotations

import errno
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..fsutil import check_space, is_disk_full

EVENT_TYPES = ("run", "state", "step", "prepare", "eval", "sample", "oom", "checkpoint", "gpu", "set", "anomaly", "error")
STATES = ("preparing", "running", "paused", "stopping", "stopped", "done", "failed")
FINAL_STATES = ("stopped", "done", "failed")


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line is standard JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class EventWriter:
    """Appends events to events.jsonl. One per run, owned by the run process (rank 0)."""

    def __init__(self, path: Path, on_disk_full: Callable[[OSError], None] = lambda e: None):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.listeners: list = []  # callables(event): e.g. the headless progress printer
        self.on_disk_full = on_disk_full
        self.pending: list[bytes] = []  # lines the disk had no room for, oldest first
        self._lock = threading.Lock()  # the run's main thread and its heartbeat thread both write

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type, "time": round(time.time(), 3), **fields}
        line = json.dumps(_clean(event), separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            self.pending.append(line.encode("utf-8"))
            error = self._flush()
        if error is not None:
            self.on_disk_full(error)
        for listener in self.listeners:
            try:
                listener(event)
            except OSError:  # a closed terminal or pipe must not stop the run
                pass
        return event

    def flush(self) -> bool:
        """Write what a full disk held back; True when nothing is left pending."""
        with self._lock:
            self._flush()
            return not self.pending

    def _flush(self) -> OSError | None:
        while self.pending:
            line = self.pending[0]
            end = os.fstat(self.fd).st_size
            try:
                check_space(self.path)
                if os.write(self.fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "No space left on device (short write)", str(self.path))
            except OSError as e:
                if not is_disk_full(e):
                    raise
                try:
                    os.ftruncate(self.fd, end)  # never leave half a line for the next one to land on
                except OSError:
                    pass
                return e
            self.pending.pop(0)
        return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class EventReader:
    """Reads events.jsonl from the start, then yields new events as they are appended.

    `poll()` returns the complete events appended since the last call (never blocks);
    a partial last line is kept until its newline arrives; undecodable lines are skipped.
    """

    def __init__(self, path: Path, from_end: bool = False):
        """from_end: skip what the log holds now and read only what is appended from here on
        (a client that sends a command reads the events it caused)."""
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        if from_end:
            try:
                self._offset = self.path.stat().st_size
            except FileNotFoundError:
                pass

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when data ended with a newline
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "type" in obj:
                events.append(obj)
        return events

    def follow(self, interval: float = 0.25, stop=lambda: False) -> Iterator[dict[str, Any]]:
        """Yield every event, then new ones as they come, until stop() is true."""
        while True:
            for event in self.poll():
                yield event
            if stop():
                return
            time.sleep(interval)


def read_all(path: Path) -> list[dict[str, Any]]:
    return EventReader(path).poll()
