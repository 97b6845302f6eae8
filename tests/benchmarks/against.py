"""Measuring another checkout of gpt2-cockpit beside this one (a benchmark's `--against DIR`):
before and after a change, alternately, on the same machine and data.

`checkout_env(DIR, env)` is the environment of a child process that imports gpt2_cockpit from
DIR instead of the installed package: a folder whose gpt2_cockpit/ links to DIR's top folders,
first on PYTHONPATH. Make DIR with e.g. `git worktree add /tmp/before HEAD~3`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TOP = ("cli", "engine", "tui", "presets")


def checkout_env(checkout: Path | None, env: dict[str, str]) -> dict[str, str]:
    """`env` for a child that imports gpt2_cockpit from `checkout` (None: `env` as it is)."""
    if checkout is None:
        return dict(env)
    root = Path(checkout).resolve()
    missing = [top for top in TOP if not (root / top).is_dir()]
    if missing:
        raise SystemExit(f"{root} is not a gpt2-cockpit checkout (no {', '.join(missing)}/)")
    shim = Path(tempfile.mkdtemp(prefix="gpt2-cockpit-against-"))
    (shim / "gpt2_cockpit").mkdir()
    (shim / "gpt2_cockpit" / "__init__.py").write_text("")
    for top in TOP:
        (shim / "gpt2_cockpit" / top).symlink_to(root / top)
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(shim), env.get("PYTHONPATH", "")) if p)}
