"""Crash-safe file writes: a reader sees the old file or the new one, never half of either;
and what a full disk looks like to the user. A full disk can be faked (engine/faults.py).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from . import faults


def check_space(path: Path) -> None:
    """Raise the OSError of a full disk for `path` while GPT2_COCKPIT_FAKE_FULL_DISK's file exists."""
    flag = faults.active().full_disk
    if flag is not None and flag.exists():
        raise OSError(errno.ENOSPC, f"No space left on device ({faults.FULL_DISK})", str(path))


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(path: Path | str) -> str:
    """One sentence naming the path and the free space on its disk."""
    path = Path(path)
    where = path if path.is_dir() else path.parent
    try:
        free = shutil.disk_usage(where).free
        left = f"{free / 1024**3:.2f} GiB" if free >= 1024**3 else f"{free / 1024**2:.1f} MiB"
    except OSError:
        left = "an unknown amount"
    return f"no space left to write {path} ({left} free on that disk)"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        check_space(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a signal: leave no half-written temp file behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class _SurvivingStream:
    """A text stream (stdout or stderr) whose failures never reach the code that prints.

    A write or flush that fails (a reader gone from a pipe, a closed terminal, a full disk under
    stdout.log) points the file descriptor at /dev/null, so this stream, C-level writers and child
    processes all go on quietly; what the failed write held is lost, the event log keeps the record.
    """

    def __init__(self, stream):
        self._stream = stream
        self.lost = False  # True once output goes nowhere

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed under us
            self._lose()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._lose()

    def _lose(self) -> None:
        if self.lost:
            return
        self.lost = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            self._stream.flush()  # what it still buffers now goes to /dev/null
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ... as the real stream
        return getattr(self._stream, name)


def survive_lost_output() -> None:
    """From now on, printing can never fail this process: see _SurvivingStream. For a run's own
    process, whose output is a courtesy (its event log is the record)."""
    import sys

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _SurvivingStream):
            setattr(sys, name, _SurvivingStream(stream))


def quiet_broken_pipe(exit_code: int = 141) -> int:
    """After a BrokenPipeError on stdout (`gpt2-cockpit runs | head -1`): point stdout at
    /dev/null so the interpreter's last flush stays silent, and give the exit code of a process
    ended by SIGPIPE, as `git log | head` ends."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return exit_code


def as_plain_files(folder: Path) -> None:
    """Give every file the mode a plain write gives (0644 under the usual umask 022).

    safetensors writes model.safetensors through a private temp file (mode 0600), so without
    this the weights, alone of the folder, could not be read by the group or other users."""
    mask = os.umask(0)
    os.umask(mask)
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.chmod(0o666 & ~mask)
