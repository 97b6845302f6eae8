"""Side-by-side CPU comparison with nanoGPT's train.py on the same corpus and settings.

    NANOGPT_DIR=/path/to/nanoGPT python tests/benchmarks/compare_nanogpt.py [--iters 2000] [--rounds 2]
        [--against CHECKOUT]

nanoGPT is not part of this project: point NANOGPT_DIR at a checkout of karpathy/nanoGPT.
Both train nanoGPT's CPU baby GPT (4 layers, 4 heads, 128 wide, context 64, micro-batch 12,
lr 1e-3, warm-up 100, no dropout, eval_iters 20) on the char-level text of CPython's bundled
docs (our builtin:python-docs token files, copied into nanoGPT's data layout). The runs
alternate (ours, theirs, ours, theirs...) so background load hits both alike; the report is
the median per-iteration time (eval iterations excluded) and the final val loss of each.
`--against CHECKOUT` adds another checkout of gpt2-cockpit to the rotation (against.py): ours
before and after a change, beside nanoGPT.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from against import checkout_env

BABY = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0)


def prepare(home: Path, nano: Path) -> None:
    os.environ["GPT2_COCKPIT_HOME"] = str(home)
    from gpt2_cockpit.engine.data import prepare

    d = prepare.prepare_and_open("builtin:python-docs", "char", 0.1, 64)
    target = nano / "data" / "cockpit_pydocs"
    target.mkdir(parents=True, exist_ok=True)
    for name, tokens in (("train.bin", d.train), ("val.bin", d.val)):  # our shards as nanoGPT's one file
        tokens.take(np.arange(len(tokens))).astype(np.uint16).tofile(target / name)
    with open(target / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": d.vocab_size}, f)


def run_nanogpt(nano: Path, iters: int, out: Path) -> tuple[list[float], float]:
    args = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--dataset=cockpit_pydocs",
            "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", f"--max_iters={iters}",
            f"--lr_decay_iters={iters}", f"--out_dir={out}", "--always_save_checkpoint=False",
            "--eval_interval=250"] + [f"--{k}={v}" for k, v in BABY.items()]
    log = subprocess.run(args, cwd=nano, capture_output=True, text=True, check=True).stdout
    times = [float(m) for m in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", log, re.M)]
    evals = re.findall(r"val loss ([\d.]+)", log)
    eval_iters = {int(i) for i in re.findall(r"^step (\d+):", log, re.M)}
    times = [t for i, t in enumerate(times) if i not in eval_iters]  # an eval iteration's time includes the eval
    return times, float(evals[-1])


def run_ours(home: Path, iters: int, name: str, checkout: Path | None = None) -> tuple[list[float], float]:
    env = checkout_env(checkout, dict(os.environ, GPT2_COCKPIT_HOME=str(home)))
    sets = ["train.log_interval=1", "train.eval_iters=20", "train.sample_interval=0", f"train.max_iters={iters}",
            f"train.lr_decay_iters={iters}", "train.checkpoint_interval=0"]
    cmd = [sys.executable, "-m", "gpt2_cockpit.cli", "train", "cpu-tiny", "--headless", "--name", name]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    from gpt2_cockpit.engine.runs.events import read_all

    events = read_all(home / "runs" / name / "events.jsonl")
    times = [e["ms"] for e in events if e["type"] == "step"]
    val = [e["val_loss"] for e in events if e["type"] == "eval"][-1]
    return times, val


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--against", type=Path, help="another checkout of gpt2-cockpit, run in the same rotation")
    args = p.parse_args()
    nano = Path(os.environ.get("NANOGPT_DIR", ""))
    if not (nano / "train.py").is_file():
        print("set NANOGPT_DIR to a checkout of karpathy/nanoGPT", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="cockpit-vs-nanogpt-"))
    prepare(home, nano)
    results: dict[str, list] = {"ours": [], "nanogpt": []}
    if args.against:
        results["against"] = []
    for r in range(args.rounds):
        results["ours"].append(run_ours(home, args.iters, f"ours-{r}"))
        results["nanogpt"].append(run_nanogpt(nano, args.iters, home / f"nano-{r}"))
        if args.against:
            results["against"].append(run_ours(home, args.iters, f"against-{r}", args.against))
        for who in results:
            t, v = results[who][-1]
            print(f"round {r + 1} {who:8s} median {statistics.median(t):6.1f} ms/iter  mean {statistics.mean(t):6.1f}  "
                  f"val loss {v:.4f}", flush=True)
    for who, runs in results.items():
        med = statistics.median([statistics.median(t) for t, _ in runs])
        vals = ", ".join(f"{v:.4f}" for _, v in runs)
        print(f"{who:8s} {med:6.1f} ms/iter (median over rounds)  val loss {vals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
