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
from typing import Any

from .. import config as cfgmod
from ..errors import UserError
from ..paths import runs_dir
from .events import FINAL_STATES, EventReader

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


def summarize(run: RunDir, events: list[dict[str, Any]] | None = None) -> RunSummary:
    s = RunSummary(run.name, run.path)
    if events is None:
        events = EventReader(run.events_path).poll()
    try:
        cfg = run.config()
        s.preset, s.engine, s.max_iters = cfg.name, cfg.engine, cfg.train.max_iters
    except UserError:
        pass
    for e in events:
        t = e.get("type")
        if t == "run":
            s.preset = e.get("preset", s.preset)
            s.engine = e.get("engine", s.engine)
            s.started = s.started or e.get("time")
        elif t == "state":
            s.state, s.reason = e.get("state", s.state), e.get("reason") or ""
        elif t == "step":
            s.iter, s.loss = e.get("iter", s.iter), e.get("loss")
        elif t == "eval":
            s.val_loss = e.get("val_loss")
        elif t == "set" and e.get("key") == "train.max_iters":
            s.max_iters = e.get("new", s.max_iters)
        s.updated = e.get("time", s.updated)
    s.alive = run.alive()
    s.state = effective_state(s.state, s.alive)
    return s


def effective_state(logged: str, alive: bool | None) -> str:
    """The state to show: the logged one, or "crashed" when the process died without logging
    a final state (alive None: not known yet, so the log is trusted)."""
    if alive is False and logged not in FINAL_STATES and logged != "new":
        return "crashed"
    return logged
