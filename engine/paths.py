"""Where gpt2-cockpit keeps runs, user presets and data caches."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """$GPT2_COCKPIT_HOME, else a per-user data directory ($XDG_DATA_HOME/gpt2-cockpit)."""
    env = os.environ.get("GPT2_COCKPIT_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "gpt2-cockpit"


def runs_dir() -> Path:
    return home() / "runs"


def user_presets_dir() -> Path:
    return home() / "presets"


def cache_dir() -> Path:
    """Token files and downloaded corpora, shared by all runs."""
    return home() / "cache"
