"""How fast the cockpit attaches to a week-long run, and how much memory it then holds.

    python tests/benchmarks/attach_big_log.py [--dir DIR] [--size 80x24] [--rounds 1]
        [--layout compact|spaced|both] [--commands] [--against CHECKOUT]

The first call writes a realistic 1,000,000-line events.jsonl (about 180 MB) into DIR (default:
a folder under the system temp dir, reused by later calls): 200,000 `step` events with every
field the engine logs, an `eval` every 250 steps, a checkpoint every 1000, 8 GPUs' `gpu` lines
every 5 s for the ~6 days the run took, a few samples, state changes, a `set`, a few anomalies.
Lines are written exactly as engine/runs/events.py's EventWriter writes them (compact JSON), or,
with `--layout spaced`, as json.dumps writes by default (`", "` and `": "` separators: a log
rewritten by another tool); `both` measures each.

Each round then starts a fresh Python process that imports the cockpit, opens
`make_app("run", DIR/run)` under `App.run_test()` and times how long it takes until the loss
plot has drawn the whole history (its train series ends at the last iteration and the canvas
has rendered) and the status pane shows the last iteration. It prints that time and the
process's memory (VmRSS before the app starts, VmHWM peak and VmRSS after), as one line each.
`--commands` also times `gpt2-cockpit runs`, `compare` (the run and its spaced twin, with
`--layout both`) and `metrics RUN --csv`, each in a fresh process, with its peak memory.

`--against CHECKOUT` measures another checkout of gpt2-cockpit (against.py) in the same way, alternating with this one round by round so that background load hits
both alike: before and after a change, on the same log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from against import checkout_env

STEPS = 200_000
LINES = 1_000_000
GPUS = 8
EVAL_EVERY = 250
CKPT_EVERY = 1000
SAMPLE_EVERY = 5000
STEP_SECONDS = 2.5  # one optimizer step on the 8 GPUs
GPU_SECONDS = 5.0  # the run's GPU sampling period
RUN_NAME = "week-long"
VERSION = "2"  # bump when the generated log changes
LAYOUTS = {"compact": (",", ":"), "spaced": (", ", ": ")}


def loss_at(it: int) -> float:
    return 2.8 + 8.0 * math.exp(-it / 4000) + 0.4 * math.exp(-it / 60000)


def generate(home: Path, layout: str = "compact") -> Path:
    """Write the run (config.toml and events.jsonl) under home/runs/, unless a complete one is there."""
    os.environ["GPT2_COCKPIT_HOME"] = str(home)
    from gpt2_cockpit.engine import presets
    from gpt2_cockpit.engine.runs import rundir as runs

    name = RUN_NAME if layout == "compact" else f"{RUN_NAME}-{layout}"
    run_path = home / "runs" / name
    done = run_path / f"complete-v{VERSION}"
    if done.exists():
        return run_path
    if run_path.exists():
        import shutil

        shutil.rmtree(run_path)
    cfg = presets.load("gpt2-124m", [f"train.max_iters={STEPS}", "train.eval_interval=250"])
    run = runs.create(cfg, name)
    rng = random.Random(0)
    others = STEPS + STEPS // EVAL_EVERY + STEPS // CKPT_EVERY + STEPS // SAMPLE_EVERY + 10  # +states, run, set, anomalies
    gpu_samples = (LINES - others) // GPUS
    prepare_lines = LINES - others - gpu_samples * GPUS  # tokenizing progress pads the log to LINES
    t0 = 1_760_000_000.0
    dumps = json.JSONEncoder(separators=LAYOUTS[layout], allow_nan=False).encode
    written = 0
    started = time.perf_counter()
    with open(run.events_path, "w") as f:
        def emit(type_: str, t: float, **fields) -> None:
            nonlocal written
            f.write(dumps({"type": type_, "time": round(t, 3), **fields}) + "\n")
            written += 1

        emit("state", t0, state="preparing", reason="loading data and model")
        for n in range(prepare_lines):
            emit("prepare", t0 + n, phase="tokenize", done=n + 1, total=prepare_lines, unit="shards", rate=1.0,
                 eta=prepare_lines - n - 1)
        emit("run", t0 + 20, name=name, preset=cfg.name, engine="pretrain", config=cfg.to_dict(),
             device="cuda:0", world_size=GPUS, resumed_from=None)
        emit("state", t0 + 30, state="running", reason="")
        tokens_per_step = 524_288
        next_gpu, gpu_done = t0 + 30, 0
        for it in range(1, STEPS + 1):
            t = t0 + 30 + it * STEP_SECONDS
            while gpu_done < gpu_samples and next_gpu <= t:
                for g in range(GPUS):
                    emit("gpu", next_gpu, index=g, name="NVIDIA H100 80GB HBM3", util=float(rng.randint(90, 100)),
                         mem_used=71_000_000_000 + rng.randint(0, 10**9), mem_total=85_899_345_920,
                         temp=rng.randint(60, 75), power=round(rng.uniform(550, 700), 1))
                next_gpu += GPU_SECONDS
                gpu_done += 1
            loss = loss_at(it) * (1 + rng.gauss(0, 0.01))
            if it in (31_337, 120_000):
                loss *= 20
            emit("step", t, iter=it, loss=loss, lr=6e-4 * min(1.0, it / 2000) * (0.1 + 0.9 * (1 - it / STEPS)),
                 tokens=it * tokens_per_step, tokens_per_sec=round(tokens_per_step / STEP_SECONDS * rng.uniform(.98, 1.02), 1),
                 ms=round(1000 * STEP_SECONDS * rng.uniform(0.98, 1.02), 2), mfu=round(rng.uniform(0.38, 0.42), 4),
                 micro_batch=16, grad_accum=4, grad_norm=round(rng.uniform(0.2, 0.5), 4))
            if it in (31_337, 120_000):
                emit("anomaly", t, iter=it, kind="loss_spike", action="none", value=loss, zscore=41.5)
            if it % EVAL_EVERY == 0:
                emit("eval", t + 1, iter=it, train_loss=loss_at(it), val_loss=loss_at(it) + 0.05)
            if it % CKPT_EVERY == 0:
                emit("checkpoint", t + 2, iter=it, path=str(run.checkpoints / f"ckpt-{it:08d}.pt"), best=True)
            if it % SAMPLE_EVERY == 0:
                emit("sample", t + 3, iter=it, prompt="", text="The meaning of life is " + "text " * 40,
                     request_id=None)
            if it == 50_000:
                emit("state", t, state="paused", reason="paused by user")
                emit("set", t, key="train.learning_rate", old=6e-4, new=5e-4)
                emit("state", t, state="running", reason="resumed by user")
        emit("state", t0 + 30 + STEPS * STEP_SECONDS + 10, state="stopping", reason="max_iters reached")
        emit("state", t0 + 30 + STEPS * STEP_SECONDS + 20, state="done", reason="max_iters reached")
    done.write_text(f"{written} lines in {time.perf_counter() - started:.1f}s\n")
    return run_path


def vm(field: str) -> float:
    """A /proc/self/status figure (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(run_path: Path, size: tuple[int, int]) -> dict:
    """In this (fresh) process: attach the cockpit and time the first full frame."""
    import asyncio

    from gpt2_cockpit.tui.app import make_app
    from gpt2_cockpit.tui.widgets.loss_plot import LossPane
    from gpt2_cockpit.tui.widgets.status import StatusPane

    rss_before = vm("VmRSS")
    result: dict = {}

    async def main() -> None:
        started = time.perf_counter()
        app = make_app("run", str(run_path), poll_interval=0.4)
        async with app.run_test(size=size) as pilot:
            def drawn() -> bool:
                screen = app.screen
                try:
                    loss = screen.query_one(LossPane)
                    status = screen.query_one(StatusPane)
                except Exception:
                    return False
                series = loss.canvas.figure.series
                return (bool(series) and bool(series[0].xs) and series[0].xs[-1] >= STEPS
                        and loss.canvas.renders > 0 and f"{STEPS}/{STEPS}" in str(status.render()))

            while not drawn():
                if time.perf_counter() - started > 120:
                    raise SystemExit("the cockpit did not draw the whole history in 120 s")
                await pilot.pause(0.01)
            result["first_full_frame_s"] = round(time.perf_counter() - started, 3)
            result["vm_hwm_mb"] = round(vm("VmHWM"), 1)
            await pilot.pause(2.0)  # a few more polls and redraws: what the cockpit holds while watching
            result["vm_rss_after_mb"] = round(vm("VmRSS"), 1)

    asyncio.run(main())
    result["vm_rss_before_mb"] = round(rss_before, 1)
    return result


def time_command(args: list[str], env: dict[str, str]) -> str:
    """One command in a fresh process: its wall time and peak memory (VmHWM, via getrusage)."""
    script = ("import resource, sys, time; t = time.perf_counter(); from gpt2_cockpit.cli.main import main; "
              "sys.stdout = open('/dev/null', 'w'); code = main(sys.argv[1:]); "
              "sys.stderr.write(f'{time.perf_counter() - t:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}\\n'); "
              "sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return f"failed ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})"
    seconds, mb = out.stderr.strip().splitlines()[-1].split()
    return f"{float(seconds):.2f} s, peak {mb} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "gpt2-cockpit-attach-bench")
    parser.add_argument("--size", default="80x24", help="terminal size, COLSxROWS")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--layout", choices=[*LAYOUTS, "both"], default="compact")
    parser.add_argument("--commands", action="store_true", help="time runs, compare and metrics too")
    parser.add_argument("--against", type=Path, help="another checkout of gpt2-cockpit, measured alternately")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.measure:
        print(json.dumps(measure(args.measure, size)))
        return 0
    home = args.dir.resolve()
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
    paths = {}
    for layout in layouts:
        started = time.perf_counter()
        paths[layout] = run_path = generate(home, layout)
        log = run_path / "events.jsonl"
        print(f"log ({layout}): {log} ({sum(1 for _ in open(log, 'rb')):,} lines, {log.stat().st_size / 1e6:.0f} MB; "
              f"ready in {time.perf_counter() - started:.1f}s)")
    env = {**os.environ, "GPT2_COCKPIT_HOME": str(home)}
    sides = [("this checkout", env)]
    if args.against:
        sides.append((f"{args.against}", checkout_env(args.against, env)))
    for n in range(args.rounds):
        for side, env in sides:
            for layout, run_path in paths.items():
                out = subprocess.run([sys.executable, __file__, "--measure", str(run_path), "--size", args.size],
                                     env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return out.returncode
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"round {n + 1}, {side}, {layout}: first full frame {r['first_full_frame_s']:.2f} s · RSS "
                      f"before attach {r['vm_rss_before_mb']:.0f} MB, peak {r['vm_hwm_mb']:.0f} MB, after "
                      f"{r['vm_rss_after_mb']:.0f} MB")
            if args.commands:
                names = [p.name for p in paths.values()]
                compare = [["compare", *names]] if len(names) > 1 else []
                for command in (["runs"], *compare, *(["metrics", name, "--csv"] for name in names)):
                    print(f"round {n + 1}, {side}: gpt2-cockpit {' '.join(command)}: {time_command(command, env)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
