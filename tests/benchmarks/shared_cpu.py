"""Two runs on one CPU box: each run's ms/iter alone and with a second run beside it.

    python tests/benchmarks/shared_cpu.py [--iters 150] [--timeout 180] [--python PYTHON] [--module MODULE]

Starts `cpu-tiny` runs (headless, in a fresh GPT2_COCKPIT_HOME) first alone, then two at once,
and reports the median ms/iter of each (the first 10 steps are warm-up and not counted). The
goal: together, each run is no worse than 2.5x its time alone. --python/--module run another
install (e.g. the landed tree's venv and gpt2_cockpit.engine.cli) for a before/after figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 10


def step_ms(home: Path, name: str) -> list[float]:
    path = home / "runs" / name / "events.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e["ms"] for e in events if e.get("type") == "step"][WARMUP:]


def run_together(n: int, iters: int, timeout: float, python: str, module: str) -> list[float]:
    home = Path(tempfile.mkdtemp(prefix="cockpit-shared-cpu-"))
    env = dict(os.environ, GPT2_COCKPIT_HOME=str(home))
    sets = [f"train.max_iters={iters}", "train.eval_interval=0", "train.log_interval=1",
            "train.checkpoint_interval=0", "train.sample_interval=0"]
    procs = []
    for i in range(n):
        cmd = [python, "-m", module, "train", "cpu-tiny", "--headless", "--name", f"r{i}"]
        for s in sets:
            cmd += ["--set", s]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()  # far too slow: what it logged so far is the figure
            p.wait()
    return [statistics.median(ms) if ms else float("nan") for ms in (step_ms(home, f"r{i}") for i in range(n))]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--module", default="gpt2_cockpit.cli")
    args = p.parse_args()
    (alone,) = run_together(1, args.iters, args.timeout, args.python, args.module)
    pair = run_together(2, args.iters, args.timeout, args.python, args.module)
    print(f"alone    {alone:8.1f} ms/iter")
    for i, ms in enumerate(pair):
        print(f"pair #{i + 1}  {ms:8.1f} ms/iter  ({ms / alone:.1f}x alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
