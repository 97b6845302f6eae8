"""A CPU run on a box where another program keeps a core busy: ms/iter alone and beside it.

    python tests/benchmarks/busy_cpu.py [--rounds 3] [--iters 150] [--hogs 1] [--timeout 120]
        [--idle-wait SECONDS] [--baseline TREE] [--env KEY=VALUE]... [--python PYTHON] [--module MODULE]

Each round starts one `cpu-tiny` run (`train --headless` in a session of its own, as the cockpit
starts one, in a fresh GPT2_COCKPIT_HOME and a private CPU-run registry; evals only at the start
and the end, no checkpoints or samples) twice: alone, then with `--hogs` unrelated CPU-bound
programs (a `while True: pass` in Python, each in a session of its own, as from another
terminal) started before it and stopped after it, so the run meets them from its first eval on.
Alone and busy alternate, so a drift of a shared box falls on both. For each run it reads from
the run's event log:

- ms/iter: the median `ms` of its `step` events (the first 10 are warm-up and not counted);
- first eval: seconds from the `running` state to the first `eval` event (the loss before any
  training: 2 x eval_iters forward passes);

and prints one line per run (with the `CPU:` lines the run printed, and how busy the rest of the
box was: other users' work on a shared box shows there), then the medians over the rounds and
the busy/alone ratio. The goal: with one hog on a 2-core box, no worse than 2.5x alone.

--idle-wait S waits up to S seconds before each run for the box to be idle (under 0.25 cores
busy over a second): on a shared box, "alone" then means alone. --baseline TREE runs another
checkout's source too (its cli/, engine/, tui/ and presets/, e.g. `git archive HEAD | tar -x -C
/tmp/before`), interleaved with this tree's, for a before/after figure; --python/--module run
another install instead. A run that is far too slow is stopped at --timeout seconds: what it
logged until then is the figure. --env KEY=VALUE sets a variable for the runs (e.g.
OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 10
# a CPU-bound program that ends once the benchmark is gone (checked every ~20 ms of spinning)
HOG = f"import os\nwhile os.getppid() == {os.getpid()}:\n    for _ in range(500_000): pass"


def box_busy() -> float:
    """Busy CPU seconds of the whole box so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_idle(most: float, below: float = 0.25) -> float:
    """Wait (at most `most` seconds) until the box keeps fewer than `below` cores busy over a
    second. Returns the last second's load, in cores."""
    deadline = time.monotonic() + most
    while True:
        busy0, t0 = box_busy(), time.monotonic()
        time.sleep(1.0)
        load = (box_busy() - busy0) / (time.monotonic() - t0)
        if load < below or time.monotonic() >= deadline:
            return load


def shim(tree: Path, under: Path) -> Path:
    """A folder for PYTHONPATH in which `gpt2_cockpit` is TREE's source (ahead of the installed one)."""
    folder = under / "gpt2_cockpit"
    folder.mkdir()
    for part in ("cli", "engine", "tui", "presets"):
        (folder / part).symlink_to(tree.resolve() / part)
    return folder.parent


def read_events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a partial last line
    return events


def one_run(args, hogs: int, env_extra: dict[str, str]) -> dict:
    idle = wait_for_idle(args.idle_wait) if args.idle_wait > 0 else float("nan")
    home = Path(tempfile.mkdtemp(prefix="cockpit-busy-cpu-"))
    (home / "tmp").mkdir()
    # a private TMPDIR: other users' runs in the shared registry count as other programs
    env = dict(os.environ, GPT2_COCKPIT_HOME=str(home), TMPDIR=str(home / "tmp"), **env_extra)
    sets = [f"train.max_iters={args.iters}", f"train.eval_interval={args.iters * 10}", "train.log_interval=1",
            "train.checkpoint_interval=0", "train.sample_interval=0"]
    cmd = [args.python, "-m", args.module, "train", "cpu-tiny", "--headless", "--name", "run"]
    for s in sets:
        cmd += ["--set", s]
    out_path = home / "out.log"
    busy0, mine0, t0 = box_busy(), children_cpu(), time.monotonic()
    hog_procs = [subprocess.Popen([sys.executable, "-c", HOG], start_new_session=True) for _ in range(hogs)]
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                pass  # far too slow: what it logged so far is the figure
            finally:
                proc.kill()
                proc.wait()
    finally:
        for h in hog_procs:
            h.kill()
            h.wait()
    # what the rest of the box (other users' work) kept busy meanwhile, in cores
    other = ((box_busy() - busy0) - (children_cpu() - mine0)) / (time.monotonic() - t0)
    events = read_events(home / "runs" / "run" / "events.jsonl")
    ms = [e["ms"] for e in events if e.get("type") == "step"][WARMUP:]
    running = next((e["time"] for e in events if e.get("type") == "state" and e.get("state") == "running"), None)
    first_eval = next((e["time"] for e in events if e.get("type") == "eval"), None)
    lines = [line for line in out_path.read_text(errors="replace").splitlines() if line.startswith("CPU:")]
    shutil.rmtree(home, ignore_errors=True)
    return {"ms": statistics.median(ms) if ms else float("nan"), "steps": len(ms),
            "eval_s": first_eval - running if running is not None and first_eval is not None else float("nan"),
            "cpu": lines, "other": max(0.0, other), "idle": idle}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--hogs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--idle-wait", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--baseline", type=Path, metavar="TREE")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--module", default="gpt2_cockpit.cli")
    args = p.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    trees = {"this": env}
    with tempfile.TemporaryDirectory(prefix="cockpit-baseline-") as scratch:
        if args.baseline is not None:
            path = os.pathsep.join(filter(None, [str(shim(args.baseline, Path(scratch))), os.environ.get("PYTHONPATH")]))
            trees["baseline"] = {**env, "PYTHONPATH": path}
        results: dict[tuple[str, str], list[dict]] = {}
        for r in range(args.rounds):
            for tree, tree_env in trees.items():
                for label, hogs in (("alone", 0), ("busy", args.hogs)):
                    res = one_run(args, hogs, tree_env)
                    results.setdefault((tree, label), []).append(res)
                    print(f"round {r + 1} {tree:8} {label:5} {res['ms']:8.1f} ms/iter ({res['steps']:3} steps)  "
                          f"first eval {res['eval_s']:6.2f} s  rest of the box: {res['idle']:.2f} cores before, "
                          f"{res['other']:.2f} during  {' / '.join(res['cpu']) or '(no CPU line)'}", flush=True)
    print(f"medians of {args.rounds} rounds; busy: {args.hogs} CPU-bound program{'s' if args.hogs > 1 else ''} "
          f"beside the run, on {os.cpu_count()} cores")
    for tree in trees:
        ms = {label: statistics.median(x["ms"] for x in results[(tree, label)]) for label in ("alone", "busy")}
        ev = {label: statistics.median(x["eval_s"] for x in results[(tree, label)]) for label in ("alone", "busy")}
        print(f"{tree:8}  alone {ms['alone']:8.1f} ms/iter, first eval {ev['alone']:5.2f} s   busy {ms['busy']:8.1f} "
              f"ms/iter, first eval {ev['busy']:5.2f} s   ratio {ms['busy'] / ms['alone']:5.2f}x "
              f"({ev['busy'] / ev['alone']:.2f}x first eval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
