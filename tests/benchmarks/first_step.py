"""Seconds to the first optimizer step against seconds to the end of preparation, on ~1 GB.

    python tests/benchmarks/first_step.py [--mb 1000] [--dir /tmp/prep-bench] [--shard-tokens 10000000]
                                          [--orders shards,random] [--iters 40]

Uses prepare_speed.py's generated corpus (a folder of parquet files) and its locally trained BPE
(GPT-2's own file cannot be downloaded here). For each data.order, a fresh token cache and a
real run process (engine.train.runner.run_process, in a child process with the encoding injected) of
a small GPT-2-vocabulary model on the CPU; the times come from the run's event log:

- first step: the first `step` event, counted from the run's start;
- prepared: the `prepare` event of phase "done" (then the run is stopped).

With data.order "shards" the run trains on the shards prepared so far while the others are
tokenized in the background (engine/data/stream.py); with "random" (nanoGPT's order) it waits for all
of them. Prints one line per order.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from prepare_speed import corpus_and_encoding  # noqa: E402

CHILD = """
import pickle, sys
sys.path.insert(0, {tests!r})
from gpt2_cockpit.engine.data import tokenizers
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.train import runner
enc = pickle.loads(open({enc!r}, 'rb').read())
tokenizers.load_gpt2_encoding = lambda: enc
if __name__ == "__main__":
    run = launch.create_run("cpu-tiny", {overrides!r}, "bench")
    sys.exit(runner.run_process(run.path))
"""


def measure(order: str, corpus: Path, enc: Path, root: Path, shard_tokens: int, iters: int) -> dict:
    home = Path(tempfile.mkdtemp(dir=root, prefix=f"first-step-{order}-"))
    overrides = [f'data.source="{corpus / "parquet"}"', 'data.tokenizer="gpt2"', "data.val_fraction=0.005",
                 f"data.shard_tokens={shard_tokens}", f'data.order="{order}"', f"train.max_iters={iters}",
                 "train.log_interval=1", "train.eval_interval=20", "train.eval_iters=5",
                 "train.checkpoint_interval=0", "train.sample_interval=0", "train.device=\"cpu\""]
    script = home / "child.py"
    script.write_text(CHILD.format(tests=str(HERE.parent), enc=str(enc), overrides=overrides))
    env = dict(os.environ, GPT2_COCKPIT_HOME=str(home))
    start = time.time()
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = home / "runs" / "bench" / "events.jsonl"
    first = prepared = None
    while proc.poll() is None and (first is None or prepared is None):
        time.sleep(0.5)
        events = [json.loads(line) for line in open(log)] if log.exists() else []
        first = next((e["time"] for e in events if e["type"] == "step"), None)
        prepared = next((e for e in events if e["type"] == "prepare" and e["phase"] == "done"), None)
    proc.terminate()  # SIGTERM: the run checkpoints and stops
    out, _ = proc.communicate()
    if first is None or prepared is None:
        raise SystemExit(f"the {order} run ended early ({proc.returncode}):\n{out[-3000:]}")
    events = [json.loads(line) for line in open(log)]
    waits = sum(1 for e in events if e["type"] == "state" and e["state"] == "preparing" and "shard" in e["reason"])
    steps = [e["iter"] for e in events if e["type"] == "step" and e["time"] <= prepared["time"]]
    return {"order": order, "first_step": first - start, "prepared": prepared["time"] - start,
            "tokens": prepared["total"], "waits": waits, "steps": max(steps, default=0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=1000)
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "gpt2-cockpit-prepare-bench"))
    p.add_argument("--shard-tokens", type=int, default=10_000_000)
    p.add_argument("--orders", default="shards,random")
    p.add_argument("--iters", type=int, default=100000, help="max_iters of the runs (stopped once prepared)")
    args = p.parse_args()
    root = Path(args.dir)
    corpus, enc = corpus_and_encoding(root, args.mb)
    for order in args.orders.split(","):
        r = measure(order, corpus, enc, root, args.shard_tokens, args.iters)
        print(f"order {r['order']:<7} {r['tokens']:>13,.0f} tokens: first step {r['first_step']:6.1f} s, "
              f"preparation done {r['prepared']:6.1f} s ({r['steps']} steps trained by then; "
              f"waited for shards {r['waits']} time(s))", flush=True)


if __name__ == "__main__":
    main()
