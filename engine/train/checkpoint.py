"""The one checkpoint writer and reader.

A checkpoint is data: tensors, numbers, strings, lists and dicts, loaded with
weights_only=True onto the CPU first (resuming can't run out of GPU memory where training fit).
Writes go to a temporary name, are fsynced and renamed, so `checkpoints/` only ever holds
complete files. The newest two and the best (by val loss) are kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UserError
from ..fsutil import check_space, fsync_dir

FORMAT = 1
KEEP_LAST = 2
BEST = "best.pt"  # a pretrain run's checkpoint of its lowest val loss
BEST_DIR = "model-best"  # a finetune run's model folder of its lowest val loss (model/ is the newest)
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def path_for(folder: Path, iter: int) -> Path:
    return folder / f"ckpt-{iter:08d}.pt"


def save(folder: Path, iter: int, state: dict[str, Any], best: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = path_for(folder, iter)
    tmp = folder / f".{path.name}.tmp{os.getpid()}"
    try:
        check_space(path)
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "iter": iter, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a signal: the last complete checkpoint stays, no partial file
        tmp.unlink(missing_ok=True)
        raise
    if best:
        # best.pt is a hard link to the same bytes: no second write, survives pruning
        link = folder / f".best.pt.tmp{os.getpid()}"
        if link.exists():
            link.unlink()
        os.link(path, link)
        os.replace(link, folder / BEST)
    fsync_dir(folder)
    prune(folder)
    return path


def listing(folder: Path) -> list[Path]:
    """Complete checkpoints, newest first (temporary files never match)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune(folder: Path) -> None:
    for old in listing(folder)[KEEP_LAST:]:
        old.unlink()


def load_file(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code in it, disk error: all unreadable
        raise UserError(f"checkpoint {path} is unreadable ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise UserError(f"checkpoint {path} is not a gpt2-cockpit checkpoint")
    return state


def load_latest(folder: Path, warn: Callable[[str], None] = lambda message: None) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint; an unreadable newer one is skipped and reported through `warn`."""
    candidates = listing(folder)
    best = folder / BEST
    if best.exists():
        candidates.append(best)
    if not candidates:
        raise UserError(f"no checkpoint in {folder}: the run stopped before it wrote one; start it again with 'gpt2-cockpit train'")
    errors = []
    for path in candidates:
        try:
            state = load_file(path)
        except UserError as e:
            errors.append(str(e))
            warn(f"warning: {e}; falling back to an older checkpoint")
            continue
        return path, state
    raise UserError(f"every checkpoint in {folder} is unreadable ({errors[0]})")


# --------------------------------------------------------------------------- a run's choice


def load_chosen(run, best: bool, warn: Callable[[str], None] = lambda message: None) -> tuple[Path, dict[str, Any]]:
    """A pretrain run's checkpoint to export or score: its best (best.pt) or its newest readable one."""
    if not best:
        return load_latest(run.checkpoints, warn=warn)
    path = run.checkpoints / BEST
    if not path.is_file():
        raise UserError(f"run {run.name} has no best checkpoint yet (it is written when an eval improves val loss)")
    return path, load_file(path)


def chosen_model_folder(run, best: bool) -> Path:
    """A finetune run's model folder to export or score: model-best/ or model/ (newest), once
    written (a full model's folder, or a LoRA run's adapter folder)."""
    folder = run.path / BEST_DIR if best else run.model_dir
    if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        raise UserError(f"run {run.name} has no {folder.name}/ folder yet (a finetune run writes it at each "
                        f"checkpoint{' that improves val loss' if best else ''}); try again after one")
    return folder
