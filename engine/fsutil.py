"""Crash-safe file writes: a reader sees the old file or the new one, never half of either;
and what a full disk looks like to the user.

GPT2_COCKPIT_FAKE_FULL_DISK=FILE: while FILE exists, the run's writes (checkpoints, the event
log, config.toml) fail as on a full disk, so the handling can be rehearsed and tested; delete
FILE to "free space".
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

FAKE_FULL_DISK = "GPT2_COCKPIT_FAKE_FULL_DISK"


def check_space(path: Path) -> None:
    """Raise the OSError of a full disk for `path` while the fault-injection file exists."""
    flag = os.environ.get(FAKE_FULL_DISK)
    if flag and os.path.exists(flag):
        raise OSError(errno.ENOSPC, "No space left on device (GPT2_COCKPIT_FAKE_FULL_DISK)", str(path))


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
