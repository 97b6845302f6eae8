"""Run directories: create, find, and summarise runs from their event logs. Never imports torch.

runs/<name>/
  config.toml  events.jsonl  stdout.log  checkpoints/  model/  pid  heartbeat  control.sock
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import config as cfgmod
from ..errors import UserError
from ..paths import runs_dir
from .events import FINAL_STATES, LogReader, StepLines

HEARTBEAT_SECONDS = 5.0  # the run touches `heartbeat` this often
HEARTBEAT_STALE = 60.0  # older than this and the pid is not trusted (it may have been reused)


@dataclass
class RunDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def stdout_path(self) -> Path:
        return self.path / "stdout.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def pid_path(self) -> Path:
        return self.path / "pid"

    @property
    def heartbeat_path(self) -> Path:
        return self.path / "heartbeat"

    @property
    def socket_path(self) -> Path:
        return self.path / "control.sock"

    def config(self) -> cfgmod.Config:
        return cfgmod.load(self.config_path)

    def config_or_none(self) -> cfgmod.Config | None:
        """config.toml, or None when it cannot be read or validated (the log then says what it can)."""
        try:
            return self.config()
        except UserError:
            return None

    def write_config(self, cfg: cfgmod.Config) -> None:
        """The one writer of config.toml (atomic): at creation, before a restart with --set, and
        from the run process itself (the resolved config at start, then live `set` and OOM splits)."""
        cfgmod.save(cfg, self.config_path)

    def pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        """Is the run's process still there (and recently heard from)?"""
        pid = self.pid()
        if pid is None or not pid_alive(pid):
            return False
        try:
            age = time.time() - self.heartbeat_path.stat().st_mtime
        except OSError:
            return True  # starting up: pid written, no heartbeat yet
        return age < HEARTBEAT_STALE


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def new_name(preset: str) -> str:
    base = f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 1
    while (runs_dir() / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def create(cfg: cfgmod.Config, name: str | None = None) -> RunDir:
    """Make runs/<name>/ (owner-only) with the resolved config.toml."""
    name = name or new_name(cfg.name)
    if not _NAME_OK.match(name):
        raise UserError(f"run name '{name}' may use letters, digits, '.', '_' and '-' only")
    root = runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise UserError(f"a run named '{name}' already exists in {root}; pick another --name") from None
    run = RunDir(path)
    run.checkpoints.mkdir(mode=0o700)
    run.write_config(cfg)
    return run


def resolve(run: str | None) -> RunDir:
    """A run name under runs/, a path to a run directory, or None for the newest run."""
    if run is None:
        all_runs = list_dirs()
        if not all_runs:
            raise UserError(f"there are no runs yet in {runs_dir()}; start one with 'gpt2-cockpit train'")
        return all_runs[0]
    p = Path(run).expanduser()
    for candidate in (p, runs_dir() / run):
        if (candidate / "config.toml").is_file():
            return RunDir(candidate.resolve())
    raise UserError(f"unknown run '{run}' (see 'gpt2-cockpit runs')")


def list_dirs() -> list[RunDir]:
    """All run directories, newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    dirs = [RunDir(p) for p in root.iterdir() if (p / "config.toml").is_file()]
    return sorted(dirs, key=lambda r: r.config_path.stat().st_mtime, reverse=True)


@dataclass
class RunSummary:
    name: str
    path: Path
    preset: str = "?"
    engine: str = "?"
    state: str = "new"  # an events.jsonl state, or "crashed" when the process died without saying so
    reason: str = ""
    iter: int = 0
    max_iters: int = 0
    loss: float | None = None
    val_loss: float | None = None
    started: float | None = None
    updated: float | None = None
    alive: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def age(self) -> float:
        return time.time() - (self.updated or self.started or time.time())


class LogSummary:
    """What `runs` and the cockpit's list show of a run's log, fed as the log is read (LogReader's
    items: events, and StepLines of which only the newest step is decoded), holding none of it."""

    def __init__(self) -> None:
        self.preset: str | None = None
        self.engine: str | None = None
        self.state, self.reason = "new", ""
        self.iter: int | None = None
        self.loss: float | None = None
        self.val_loss: float | None = None
        self.max_iters: int | None = None  # set live (`set train.max_iters`)
        self.started: float | None = None
        self.updated: float | None = None  # the newest event's time, GPU readings left out

    def add(self, items: Iterable[Any]) -> None:
        for item in items:
            if isinstance(item, StepLines):
                newest = item.newest()
                if newest is not None:
                    self.feed(newest)
            else:
                self.feed(item)

    def feed(self, e: dict[str, Any]) -> None:
        t = e.get("type")
        if t == "run":
            self.preset = e.get("preset", self.preset)
            self.engine = e.get("engine", self.engine)
            self.started = self.started or e.get("time")
        elif t == "state":
            self.state, self.reason = e.get("state", self.state), e.get("reason") or ""
        elif t == "step":
            self.iter, self.loss = e.get("iter", self.iter), e.get("loss")
        elif t == "eval":
            self.val_loss = e.get("val_loss")
        elif t == "set" and e.get("key") == "train.max_iters":
            self.max_iters = e.get("new", self.max_iters)
        elif t == "gpu":  # sampled beside the run, and skipped by the fast reader: not its news
            return
        self.updated = e.get("time", self.updated)

    def summary(self, run: RunDir, cfg: cfgmod.Config | None) -> RunSummary:
        """The run as its config.toml (`cfg`, as read: run.config_or_none()), this log and its
        process say now."""
        s = RunSummary(run.name, run.path)
        if cfg is not None:
            s.preset, s.engine, s.max_iters = cfg.name, cfg.engine, cfg.train.max_iters
        s.preset, s.engine = self.preset or s.preset, self.engine or s.engine
        s.max_iters = self.max_iters if self.max_iters is not None else s.max_iters
        s.state, s.reason, s.iter, s.loss, s.val_loss = self.state, self.reason, self.iter or 0, self.loss, self.val_loss
        s.started, s.updated = self.started, self.updated
        s.alive = run.alive()
        s.state = effective_state(s.state, s.alive)
        return s


def summarize(run: RunDir, events: Iterable[dict[str, Any]] | None = None) -> RunSummary:
    """The run at a glance, from its whole log (read fast: no step but the newest decoded) or
    from `events`."""
    log = LogSummary()
    if events is None:
        for batch in LogReader(run.events_path).batches():
            log.add(batch)
    else:
        log.add(events)
    return log.summary(run, run.config_or_none())


class RunIndex:
    """Summaries of every run, reading only what each log gained since the last look (the
    cockpit's list of runs, refreshed every few seconds)."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[LogReader, LogSummary]] = {}

    def summaries(self) -> list[RunSummary]:
        out = []
        for run in list_dirs():
            reader, log = self._seen.get(run.path, (None, None))
            if reader is None or reader.shrank():  # new, or a run of the same name made afresh
                reader, log = self._seen[run.path] = LogReader(run.events_path), LogSummary()
            for batch in reader.batches():
                log.add(batch)
            out.append(log.summary(run, run.config_or_none()))
        return out


def effective_state(logged: str, alive: bool | None) -> str:
    """The state to show: the logged one, or "crashed" when the process died without logging
    a final state (alive None: not known yet, so the log is trusted)."""
    if alive is False and logged not in FINAL_STATES and logged != "new":
        return "crashed"
    return logged
