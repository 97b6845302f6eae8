"""The run's event log, read fast and folded into typed messages for the UI.

`LogReader` reads events.jsonl from where it left off, in large chunks, and returns what the
cockpit needs of it: decoded events, and runs of consecutive `step` lines left raw (`StepLines`:
RunModel folds a run of them without decoding each one, see series.py). Two kinds of lines that
make up most of a long log are not decoded line by line: `gpu` readings (eight GPUs every five
seconds for a week is most of a million lines) of which only the newest few per GPU matter, and
`prepare` progress, of which only the newest line of each chunk is decoded (the status pane
shows it while the run prepares its data). Lines in the EventWriter's layout
(`{"type":"gpu",...`) are recognised by that prefix; any other line is decoded and handled as
usual, so a hand-written log still reads correctly, just slower. The contract's rules hold: a
partial last line waits for its newline, an undecodable line is skipped.

`EventFeed.poll()` runs in a thread worker (file reads and parsing stay off the UI thread). The
first poll replays the whole history into a new RunModel there, chunk by chunk, so memory stays
bounded however long the log, and the screen takes that model over in one message: attaching to
a long run costs one repaint, not thousands. The screen re-arms its poll timer only after it has
handled a batch, so slow polls never pile up.

Measured with tests/benchmarks/attach_big_log.py (1,000,000 lines, 172 MB: 200,000 steps, 8 GPUs
sampled every 5 s, on a 2-core box): first full frame 13.5 s and a 1.6 GB peak (1.25 GB held)
when every line was decoded and every step kept; 1.4 s and 93 MB (70 MB held) this way.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

from textual.message import Message

from gpt2_cockpit.engine.runs.rundir import RunDir

from .model import GPU_HISTORY, REPLAY_LOG, Changes, RunModel

CHUNK_BYTES = 8 << 20  # one read; big enough that per-chunk costs vanish, small enough to hold twice
GPU_LINES_KEPT = 64 * GPU_HISTORY  # the newest `gpu` lines a replay decodes (64 GPUs' short history)
GPU_BACKFILL_BYTES = 64 << 20  # how far back from the end a replay looks for them
_STEP = b'\n{"type":"step",'
# A whole line (after its newline) that is neither a gpu reading nor prepare progress in the
# writer's layout (findall, in C, skips those without making a bytes object of each), and, when
# it is a step in the writer's layout (type, time, iter, loss, ...), its loss as written.
_WANTED = re.compile(rb'\n(?!\{"type":"(?:gpu|prepare)")'
                     rb'((?:\{"type":"step","time":[^,]*,"iter":\d+,"loss":(-?\d[^,}]*|null)[,}])?[^\n]*)')
_GPU = re.compile(rb'\n(\{"type":"gpu"[^\n]*)')
_PREPARE = b'\n{"type":"prepare",'


class StepLines:
    """Consecutive raw `step` lines in the writer's layout, in log order, with each one's loss
    as written (b"1.234" or b"null")."""

    __slots__ = ("lines", "losses")

    def __init__(self, lines: list[bytes], losses: list[bytes]) -> None:
        self.lines = lines
        self.losses = losses

    def decoded(self) -> Iterator[dict[str, Any]]:
        for line in self.lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict):
                yield e


class LogReader:
    """Reads an event log from the start, then what is appended, in chunks.

    `batches()` yields lists of items (decoded events and StepLines) up to the end of the file
    as it is now, one list per chunk, then the newest `gpu` readings (at most `gpu_lines`,
    oldest first; 0: none). `poll()` is all of them in one list.
    """

    def __init__(self, path: Path, gpu_lines: int = GPU_LINES_KEPT, chunk_bytes: int = CHUNK_BYTES):
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self.gpu_lines = gpu_lines
        self.offset = 0  # bytes read so far (the partial line included)
        self._partial = b"\n"  # the newline before the line not yet complete, and that line's start
        self.expected_steps = 0.0  # set by a read of more than one chunk: the first one's share, scaled

    def poll(self) -> list[Any]:
        return [item for batch in self.batches() for item in batch]

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
                    self.expected_steps = chunk.count(_STEP, first, last) * remaining / len(chunk)
                if self.gpu_lines:
                    if last - first > self.chunk_bytes // 8:
                        skipped_gpu = True
                    else:
                        gpu.extend(_GPU.findall(head) + _GPU.findall(chunk, first, last))
                # preparation progress matters only after the last step (a run that trains has
                # prepared): searching from there costs nothing in a long log's chunks
                after_steps = max(chunk.rfind(_STEP, first, last), first)
                newest = _newest_prepare(chunk, after_steps, last) or _newest_prepare(head, 0, len(head))
                yield self._items(head, 0, len(head)) + self._items(chunk, first, last) + newest
            if skipped_gpu:
                gpu = self._newest_gpu_lines(f, self.offset - len(self._partial) + 1)
        if gpu:
            yield [e for e in map(_decode, gpu) if e is not None]

    @staticmethod
    def _items(data: bytes, start: int, end: int) -> list[Any]:
        """The items in data[start:end], whole lines each after a newline."""
        items: list[Any] = []
        found = _WANTED.findall(data, start, end)
        if not found:
            return items
        lines, losses = zip(*found)
        i, n = 0, len(lines)
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
        return items

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
            lines = _GPU.findall(block)
            found.extendleft(reversed(lines[-(self.gpu_lines - len(found)):] if lines else []))
            pos = start
        return found


def _newest_prepare(data: bytes, start: int, end: int) -> list[dict[str, Any]]:
    """The last `prepare` event among the whole lines of data[start:end] (a search from the end,
    as fast as memchr: a long log's chunks hold none)."""
    at = data.rfind(_PREPARE, start, end)
    if at < 0:
        return []
    stop = data.find(b"\n", at + 1, end + 1)
    e = _decode(data[at + 1:stop if stop >= 0 else end])
    return [e] if e is not None else []


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        e = json.loads(line)
    except ValueError:
        return None
    return e if isinstance(e, dict) and "type" in e else None


def replay(reader: LogReader, model: RunModel, changes: Changes | None = None) -> Changes:
    """Fold everything the reader has into `model`, chunk by chunk (memory stays bounded)."""
    ch = changes or Changes()
    for batch in reader.batches():
        if reader.expected_steps:
            model.steps.expect(reader.expected_steps)
        model.ingest(batch, ch)
        ch.trim(REPLAY_LOG)
    return ch


class EventsArrived(Message):
    """New events from one run's log (possibly none), and whether its process is alive.

    The first poll's message is the replay: `model` is the whole history folded off the UI
    thread and `changes` what it touched; `events` is empty. Later ones carry `events` (decoded
    events and StepLines) for the screen's model to ingest.
    """

    def __init__(self, run_path: Path, events: list[Any], alive: bool, replay: bool,
                 model: RunModel | None = None, changes: Changes | None = None) -> None:
        super().__init__()
        self.run_path = run_path
        self.events = events
        self.alive = alive
        self.replay = replay
        self.model = model
        self.changes = changes

    def can_replace(self, message: Message) -> bool:
        # Textual drops this (older) message when a newer one it can be replaced by is queued.
        # Batches must not be lost, so the newer one absorbs our events in front of its own.
        # A replay (a model, not events) is never merged.
        if (isinstance(message, EventsArrived) and message.run_path == self.run_path
                and self.model is None and message.model is None):
            message.events[:0] = self.events
            message.replay = message.replay or self.replay
            return True
        return False


class EventFeed:
    """Follows one run: new events since the last poll plus a liveness check. The first poll
    replays the history into `blank()`, a new model."""

    def __init__(self, run: RunDir, blank: Callable[[], RunModel] | None = None):
        self.run = run
        self.reader = LogReader(run.events_path)
        self.blank = blank
        self.polls = 0

    def backlog(self) -> int:
        """Bytes appended to the log since the last poll (one stat, no read)."""
        try:
            return max(os.stat(self.reader.path).st_size - self.reader.offset, 0)
        except OSError:
            return 0

    def poll(self) -> EventsArrived:
        self.polls += 1
        if self.polls == 1 and self.blank is not None:
            model = self.blank()
            changes = replay(self.reader, model)
            return EventsArrived(self.run.path, [], self.run.alive(), replay=True, model=model, changes=changes)
        events = self.reader.poll() if self.polls == 1 or self.backlog() else []
        return EventsArrived(self.run.path, events, self.run.alive(), replay=self.polls == 1)
