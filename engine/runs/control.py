"""The control channel a run owns: a Unix socket in its run directory, JSON lines, never pickle.

One request per connection: the client sends one JSON object and a newline, the run answers
with one JSON object and a newline. Every command waits for the training loop, which handles
commands between optimizer steps (so pausing, sampling or setting a value never lands mid-step).

Requests: {"cmd": "pause" | "resume" | "stop" | "checkpoint"
                | "sample", "prompt", "max_new_tokens", "temperature", "top_k", "request_id"
                | "cancel", "request_id"
                | "set", "key", "value"}
Replies:  {"ok": true} (accepted) or {"ok": false, "error": "one sentence"} (refused), nothing more.

The reply only says accepted or refused: what a command did is in the run's event log, the one
source of truth for every viewer. pause, resume, stop, checkpoint and set are answered once
applied, so the events they caused are in the log before the reply; a sample is answered when
accepted, and its text follows as a `sample` event with the request's `request_id` (or an `error`
event with it, if generation failed; a cancelled sample's event has `cancelled: true` and the text
generated until then). A sample is generated a slice at a time
between optimizer steps, so it never holds up training or the other commands.

Never imports torch: the cockpit and the CLI use the client half.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError

COMMANDS = ("cancel", "pause", "resume", "stop", "checkpoint", "sample", "set")
REPLY_FLUSH_SECONDS = 2.0  # at exit, how long replies already given may take to reach their clients
MAX_REQUEST = 1 << 20  # a 100,000-character prompt (sampling.MAX_PROMPT_CHARS) fits, JSON-escaped
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; leave room


@contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path to `path` that fits in sockaddr_un (deep run dirs go through /proc/self/fd)."""
    if len(str(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- client


def request(sock_path: Path, msg: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one command to a run; raise UserError when nobody is listening."""
    data = json.dumps(msg).encode() + b"\n"
    if len(data) > MAX_REQUEST:
        raise UserError(f"the request is larger than {MAX_REQUEST // 1024} KiB")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with _short_path(Path(sock_path)) as addr:
            s.connect(addr)
        s.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise UserError(f"the run at {Path(sock_path).parent} is not running (no process answers its control socket)") from None
    except socket.timeout:
        raise UserError(f"the run at {Path(sock_path).parent} did not answer within {timeout:.0f}s") from None
    finally:
        s.close()
    if not buf:
        raise UserError(f"the run at {Path(sock_path).parent} closed the connection without answering (it may be exiting)")
    return json.loads(buf)


# --------------------------------------------------------------------------- server


@dataclass
class Command:
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _reply: dict[str, Any] | None = field(default=None, repr=False)

    def accept(self) -> None:
        """Answer {"ok": true}; later answers to the same command are ignored."""
        if self._reply is None:
            self._reply = {"ok": True}
            self._done.set()

    def refuse(self, error: str) -> None:
        if self._reply is None:
            self._reply = {"ok": False, "error": error}
            self._done.set()

    def wait(self, timeout: float) -> dict[str, Any]:
        if not self._done.wait(timeout):
            return {"ok": False, "error": "the run did not handle the command in time"}
        return self._reply or {"ok": False, "error": "no reply"}

    def to_wire(self) -> dict[str, Any]:
        return {"cmd": self.cmd, **self.args}


class ControlServer:
    """Listens on the run's control socket in a daemon thread; the loop drains `poll()`."""

    def __init__(self, sock_path: Path, reply_timeout: float = 900.0):
        self.path = Path(sock_path)
        self.reply_timeout = reply_timeout
        self.queue: queue.Queue[Command] = queue.Queue()
        self._handlers: set[threading.Thread] = set()  # connections being answered
        self._closed = False
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is created owner-only (0600)
        try:
            with _short_path(self.path) as addr:
                self.sock.bind(addr)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self.thread.start()

    def submit(self, cmd: Command) -> None:
        """A command from inside the run process (a signal handler's stop): nobody waits for it."""
        self.queue.put(cmd)

    def poll(self) -> list[Command]:
        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.close()
        finally:
            try:
                self.path.unlink()
            except OSError:
                pass
        # answer anything still waiting, so no client hangs on a run that is gone
        for c in self.poll():
            c.refuse("the run has exited")
        # and let answers already given reach their clients (a `stop` is answered just before
        # the run exits: on a busy box the reply's thread may not have sent it yet)
        deadline = time.monotonic() + REPLY_FLUSH_SECONDS
        for thread in list(self._handlers):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._handlers.add(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        finally:
            self._handlers.discard(threading.current_thread())

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                buf = b""
                while not buf.endswith(b"\n") and len(buf) < MAX_REQUEST:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                if len(buf) >= MAX_REQUEST and not buf.endswith(b"\n"):
                    reply = {"ok": False, "error": f"the request is larger than {MAX_REQUEST // 1024} KiB"}
                else:
                    reply = self._dispatch(buf)
                conn.settimeout(None)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                return

    def _dispatch(self, raw: bytes) -> dict[str, Any]:
        try:
            msg = json.loads(raw)
        except ValueError:
            return {"ok": False, "error": "the request is not JSON"}
        if not isinstance(msg, dict) or msg.get("cmd") not in COMMANDS:
            return {"ok": False, "error": f"unknown command; expected one of {', '.join(COMMANDS)}"}
        if self._closed:
            return {"ok": False, "error": "the run has exited"}
        cmd = Command(msg.pop("cmd"), msg)
        self.queue.put(cmd)
        return cmd.wait(self.reply_timeout)
