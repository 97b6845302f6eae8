"""The run's event log, events.jsonl: one JSON object per line, append-only.

The writer appends each event as one whole line with a single write() on an O_APPEND
descriptor, so concurrent readers never see half an event except at the very end of the
file while it is being written. When the disk is full, a line that did not fit is cut off
again and kept in memory with the ones after it, to be written once there is room.

One reader, `LogReader`, serves every client: the cockpit, `runs`, `compare`, `metrics`, and a
command that waits for the events it caused. It reads from where it left off in large chunks,
holds back a partial last line until its newline arrives and skips an undecodable line. By
default it does not decode what makes up most of a week-long log: runs of consecutive `step`
lines come back raw (`StepLines`, with each line's loss as written, so a plot folds them without
decoding each one), of the `gpu` readings (eight GPUs every five seconds for a week is most of a
million lines) only the newest few are decoded, and of the `prepare` progress only the newest
line of each chunk. Lines are recognised by their first key, `{"type":"step"`, in any spacing
(the writer's compact separators, json.dumps' default `", "`, a pretty-printer's); any other line
is decoded and handled as usual, so a hand-written log still reads correctly, just slower.
`EventReader` is the same reader decoding every line. Never imports torch.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import threading
import time
from collections import deque
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


CHUNK_BYTES = 8 << 20  # one read; big enough that per-chunk costs vanish, small enough to hold twice
GPU_BACKFILL_BYTES = 64 << 20  # how far back from the end a reader looks for the newest `gpu` lines

# A line (after its newline) whose first key is "type", in any JSON spacing, of one kind.
_TYPE = rb'\{\s*"type"\s*:\s*"'
_STEP = re.compile(rb"\n" + _TYPE + rb'step"')
_PREPARE = re.compile(rb"\n" + _TYPE + rb'prepare"')
# A whole line that is neither a gpu reading nor prepare progress (findall, in C, skips those
# without making a bytes object of each), and, when it is a step whose keys start as the writer
# writes them (type, time, iter, loss, ...), its loss as written. Twice: in the writer's compact
# layout (twice as fast, for a part of the log whose every line starts `{"type":"`), and in any.
_WANTED = {
    True: re.compile(rb'\n(?!\{"type":"(?:gpu|prepare)")'
                     rb'((?:\{"type":"step","time":[^,]*,"iter":\d+,"loss":(-?\d[^,}]*|null)[,}])?[^\n]*)'),
    False: re.compile(rb"\n(?!" + _TYPE + rb'(?:gpu|prepare)")'
                      rb"((?:" + _TYPE + rb'step"\s*,\s*"time"\s*:[^,]*,\s*"iter"\s*:\s*\d+\s*,'
                      rb'\s*"loss"\s*:\s*(-?\d[^,}\s]*|null)\s*[,}])?[^\n]*)'),
}
_GPU = {True: re.compile(rb'\n(\{"type":"gpu"[^\n]*)'), False: re.compile(rb"\n(" + _TYPE + rb'gpu"[^\n]*)')}
# A read with the compact pattern that finds more lines other than steps (GPU readings and
# progress left out) than this, or more than steps, checks its layout (a part in another one).
FEW_OTHER_LINES = 256
_NOT_COMPACT = re.compile(rb'\n(?!\{"type":")')


def _compact(data: bytes, start: int, end: int) -> bool:
    """Every line of data[start:end] (each after a newline) starts as the writer writes it."""
    return _NOT_COMPACT.search(data, start, end) is None


class StepLines:
    """Consecutive raw `step` lines, in log order, with each one's loss as written (b"1.234" or
    b"null")."""

    __slots__ = ("lines", "losses")

    def __init__(self, lines: list[bytes], losses: list[bytes]) -> None:
        self.lines = lines
        self.losses = losses

    def newest(self) -> dict[str, Any] | None:
        """The last step that decodes."""
        for line in reversed(self.lines):
            e = _decode(line)
            if e is not None:
                return e
        return None

    def decoded(self, lines: slice | None = None) -> Iterator[dict[str, Any]]:
        """The steps decoded (those of `lines`, a slice, when given); an undecodable one is skipped."""
        for line in self.lines if lines is None else self.lines[lines]:
            e = _decode(line)
            if e is not None:
                yield e


class LogReader:
    """Reads an event log from the start (or, `from_end`, from its end as it is now), then what is
    appended, in chunks.

    `batches()` yields lists of items (decoded events and StepLines) up to the end of the file
    as it is now, one list per chunk, then the newest `gpu` readings (at most `gpu_lines`,
    oldest first; 0, the default: none). `poll()` is all of them in one list.
    """

    def __init__(self, path: Path, gpu_lines: int = 0, chunk_bytes: int = CHUNK_BYTES,
                 from_end: bool = False):
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self.gpu_lines = gpu_lines
        self.offset = 0  # bytes read so far (the partial line included)
        self._partial = b"\n"  # the newline before the line not yet complete, and that line's start
        self.expected_steps = 0.0  # set by a read of more than one chunk: the first one's share, scaled
        self._compact = True  # the last read's lines were all in the writer's layout
        if from_end:
            try:
                self.offset = self.path.stat().st_size
            except FileNotFoundError:
                pass

    def poll(self) -> list[Any]:
        return [item for batch in self.batches() for item in batch]

    def shrank(self) -> bool:
        """The file is shorter than what was read of it (made afresh, or cut): read it again from
        the start with a new reader."""
        try:
            return os.stat(self.path).st_size < self.offset
        except OSError:
            return False

    def backlog(self) -> int:
        """Bytes appended since the last read (one stat, no read)."""
        try:
            return max(os.stat(self.path).st_size - self.offset, 0)
        except OSError:
            return 0

    def batches(self) -> Iterator[list[Any]]:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            remaining = max(os.fstat(f.fileno()).st_size - self.offset, 0)
            f.seek(self.offset)
            gpu: deque[bytes] = deque(maxlen=self.gpu_lines)
            skipped_gpu = False  # a big chunk's gpu lines were not collected: look back at the end
            while True:
                chunk = f.read(self.chunk_bytes)
                if not chunk:
                    break
                self.offset += len(chunk)
                first = chunk.find(b"\n")
                if first < 0:
                    self._partial += chunk
                    continue
                # the line that was pending ends at `first`; the chunk's own whole lines lie
                # between its first and last newline, read in place (no copy of the chunk)
                head, last = self._partial + chunk[:first], chunk.rfind(b"\n")
                self._partial = chunk[last:]
                if remaining > len(chunk) and not self.expected_steps:
                    steps = sum(1 for _ in _STEP.finditer(chunk, first, last))
                    self.expected_steps = steps * remaining / len(chunk)
                items, compact = self._whole_lines(head, chunk, first, last)
                if self.gpu_lines:
                    if last - first > self.chunk_bytes // 8:
                        skipped_gpu = True
                    else:
                        gpu.extend(_GPU[False].findall(head) + _GPU[compact].findall(chunk, first, last))
                yield items
            if skipped_gpu:
                gpu = self._newest_gpu_lines(f, self.offset - len(self._partial) + 1)
        if gpu:
            yield [e for e in map(_decode, gpu) if e is not None]

    def _whole_lines(self, head: bytes, chunk: bytes, first: int, last: int) -> tuple[list[Any], bool]:
        """The items of one read: `head` (the line that was pending, after its newline) and the
        whole lines of chunk[first:last]; of the preparation progress, the newest line, which
        matters only after the last step (a run that trains has prepared). And whether the
        chunk's lines are all in the writer's compact layout."""
        rest, compact = _items(chunk, first, last, self._compact)
        self._compact = compact
        after = chunk.rfind(b'\n{"type":"step",', first, last) if compact else -1
        newest = _newest_prepare(chunk, max(after, first), last) or _newest_prepare(head, 0, len(head))
        items, _ = _items(head, 0, len(head), None)
        if items and rest and isinstance(items[-1], StepLines) and isinstance(rest[0], StepLines):
            items[-1].lines += rest[0].lines  # one run of steps across the read's boundary
            items[-1].losses += rest[0].losses
            rest = rest[1:]
        return items + rest + newest, compact

    def _newest_gpu_lines(self, f, end: int) -> deque[bytes]:
        """The last `gpu_lines` gpu lines before byte `end`, read backwards in blocks."""
        found: deque[bytes] = deque(maxlen=self.gpu_lines)
        pos, carry, block_size = end, b"", 1 << 20
        while pos > 0 and len(found) < self.gpu_lines and end - pos < GPU_BACKFILL_BYTES:
            start = max(0, pos - block_size)
            f.seek(start)
            block = f.read(pos - start) + carry
            if start > 0:  # the first line may begin in the block before
                cut = block.find(b"\n")
                if cut < 0:
                    carry, pos = block, start
                    continue
                carry, block = block[:cut], block[cut:]
            else:
                block = b"\n" + block
            lines = _GPU[_compact(block, 0, len(block))].findall(block)
            found.extendleft(reversed(lines[-(self.gpu_lines - len(found)):] if lines else []))
            pos = start
        return found


class EventReader(LogReader):
    """The same reader, decoding every line: `poll()` returns every complete event appended since
    the last call, in log order (never blocks). For a client that wants every field of a few
    events (a command waiting for the events it caused), and for tests."""

    def __init__(self, path: Path, from_end: bool = False):
        """from_end: skip what the log holds now and read only what is appended from here on."""
        super().__init__(path, gpu_lines=0, from_end=from_end)

    def _whole_lines(self, head: bytes, chunk: bytes, first: int, last: int) -> tuple[list[Any], bool]:
        lines = [head[1:]] + chunk[first + 1:last].split(b"\n") if last > first else [head[1:]]
        return [e for e in map(_decode, lines) if e is not None], False

    def follow(self, interval: float = 0.25, stop=lambda: False) -> Iterator[dict[str, Any]]:
        """Yield every event, then new ones as they come, until stop() is true."""
        while True:
            for event in self.poll():
                yield event
            if stop():
                return
            time.sleep(interval)


def _items(data: bytes, start: int, end: int, layout: bool | None = True) -> tuple[list[Any], bool]:
    """The items in data[start:end], whole lines each after a newline, gpu and prepare lines left
    out: runs of steps as StepLines, every other line decoded. And whether all the lines start as
    the writer writes them. `layout` says what to expect: True, the compact layout (read with its
    pattern; a part of the log in another one shows as many lines it did not recognise, and is
    read again with the pattern for any); False, another one, as the last read found (checked
    first); None, read with the pattern for any at once."""
    if layout is False:
        layout = True if _compact(data, start, end) else None
    compact = layout is True
    found = _WANTED[compact].findall(data, start, end)
    items: list[Any] = []
    if not found:
        return items, compact
    lines, losses = zip(*found)
    n = len(lines)
    others = losses.count(b"")
    if compact and (others > FEW_OTHER_LINES or 2 * others > n) and not _compact(data, start, end):
        return _items(data, start, end, None)
    i = 0
    while i < n:  # one turn per event that is not a step: runs of steps are sliced in C
        try:
            j = losses.index(b"", i)
        except ValueError:
            j = n
        if j > i:
            items.append(StepLines(list(lines[i:j]), list(losses[i:j])))
        if j < n:
            e = _decode(lines[j])
            if e is not None:
                items.append(e)
        i = j + 1
    return items, compact


def _newest_prepare(data: bytes, start: int, end: int) -> list[dict[str, Any]]:
    """The last `prepare` event among the whole lines of data[start:end], if no step comes after
    it (a search from the end, as fast as memchr: a long log's chunks hold none)."""
    at = data.rfind(b'"prepare"', start, end)
    while at >= 0:
        line = data.rfind(b"\n", start, at)
        if line < 0:
            return []
        if _PREPARE.match(data, line):
            stop = data.find(b"\n", line + 1, end + 1)
            stop = stop if stop >= 0 else end
            if _STEP.search(data, stop, end):
                return []  # the run trains: it has prepared
            e = _decode(data[line + 1:stop])
            return [e] if e is not None else []
        at = data.rfind(b'"prepare"', start, line)
    return []


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        e = json.loads(line)
    except ValueError:
        return None
    return e if isinstance(e, dict) and "type" in e else None


def read_all(path: Path) -> list[dict[str, Any]]:
    return EventReader(path).poll()
