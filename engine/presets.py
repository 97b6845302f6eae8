"""Presets: the shipped TOML files (package data) and the user's own under $GPT2_COCKPIT_HOME/presets."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import config as cfgmod
from .errors import UserError
from .paths import user_presets_dir


@dataclass
class PresetInfo:
    name: str
    path: Path
    origin: str  # "shipped" or "user"


def shipped_dir() -> Path:
    return Path(str(resources.files("gpt2_cockpit.presets")))


def available() -> list[PresetInfo]:
    """Every preset by name; a user preset of the same name shadows the shipped one."""
    found: dict[str, PresetInfo] = {}
    for origin, folder in (("shipped", shipped_dir()), ("user", user_presets_dir())):
        if folder.is_dir():
            for p in sorted(folder.glob("*.toml")):
                found[p.stem] = PresetInfo(p.stem, p, origin)
    return sorted(found.values(), key=lambda i: (i.origin != "shipped", i.name))


def find(name_or_path: str) -> Path:
    """A preset name (user's first, then shipped) or a path to a .toml file."""
    p = Path(name_or_path).expanduser()
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        if p.is_file():
            return p
        raise UserError(f"preset file {name_or_path} does not exist")
    for info in available():
        if info.name == name_or_path:
            return info.path
    names = ", ".join(i.name for i in available())
    raise UserError(f"unknown preset '{name_or_path}' (available: {names})")


def load(name_or_path: str, overrides: list[str] | None = None) -> cfgmod.Config:
    cfg = cfgmod.load(find(name_or_path))
    return cfgmod.with_overrides(cfg, overrides) if overrides else cfg


def default_name() -> str:
    """shakespeare-char on a CUDA machine, cpu-tiny otherwise (without importing torch)."""
    from .machine.hardware import has_cuda

    return "shakespeare-char" if has_cuda() else "cpu-tiny"


def save_user(cfg: cfgmod.Config, name: str) -> Path:
    """Save a (validated) config as the user's preset NAME; returns its path."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise UserError(f"'{name}' is not a usable preset name (letters, digits, '-', '_')")
    folder = user_presets_dir()
    folder.mkdir(parents=True, exist_ok=True)
    cfg.name = name
    path = folder / f"{name}.toml"
    cfgmod.save(cfg, path)
    return path
