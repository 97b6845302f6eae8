"""Muon against AdamW on cpu-tiny: iterations and seconds to reach AdamW's final val loss.

    python tests/benchmarks/muon_vs_adamw.py [--iters 1500] [--eval-every 25] [--set KEY=VALUE]...

Both train cpu-tiny's baby GPT (4 layers, 4 heads, 128 wide, context 64, micro-batch 12) on its
char-level corpus (builtin:python-docs) from the same initial weights, on the same batches
(same seed), with the same schedule (warm-up 100, cosine to min_lr over --iters) and clipping;
the one difference is train.optimizer ("adamw", or "muon" with its default settings, or those
--set gives). They run in one process on one thread, alternately, --chunk steps at a time, so
background load hits both alike. Val loss is measured every --eval-every steps on the same
batches (not timed). Printed: AdamW's val loss at --iters (the target), the first measured
iteration at which Muon's val loss is at or below it, each optimizer's median ms/iter, and the
training time to the target (iterations x ms/iter). The goal (issue 23): Muon gets there in at
most 60% of AdamW's iterations and 75% of its time.

A benchmark, not a test: pytest does not collect it (select the package's benchmarks by hand).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

GOAL_ITERS = 0.60
GOAL_TIME = 0.75


def make_stepper(optimizer: str, iters: int, extra: list[str]):
    import torch

    from gpt2_cockpit.engine import presets
    from gpt2_cockpit.engine.train.pretrain import PretrainWorkload
    from gpt2_cockpit.engine.train.step import Stepper

    sets = [f"train.max_iters={iters}", f"train.optimizer=\"{optimizer}\"", "train.device=\"cpu\""]
    cfg = presets.load("cpu-tiny", sets + (extra if optimizer == "muon" else []))
    torch.manual_seed(cfg.train.seed)  # the same initial weights for both
    return Stepper(cfg, PretrainWorkload(cfg), "cpu")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=1500, help="AdamW's run, and the schedule of both (default 1500)")
    p.add_argument("--eval-every", type=int, default=25, help="steps between val losses (default 25)")
    p.add_argument("--chunk", type=int, default=50, help="steps of one before the other's (default 50)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a Muon setting to try, e.g. train.muon_lr=0.03 (repeatable)")
    args = p.parse_args()
    os.environ.setdefault("GPT2_COCKPIT_HOME", tempfile.mkdtemp(prefix="cockpit-muon-bench-"))

    import torch

    from gpt2_cockpit.engine.train.step import lr_at

    torch.set_num_threads(args.threads)
    runs = {name: make_stepper(name, args.iters, args.sets) for name in ("adamw", "muon")}
    ms = {name: [] for name in runs}
    val = {name: {} for name in runs}
    for name, stepper in runs.items():
        val[name][0] = stepper.evaluate()["val"]
    for start in range(0, args.iters, args.chunk):
        for name, stepper in runs.items():  # alternately: adamw's chunk, then muon's
            t = stepper.cfg.train
            for k in range(start, min(start + args.chunk, args.iters)):
                t0 = time.perf_counter()
                stepper.step(k, lr_at(k, t))
                ms[name].append((time.perf_counter() - t0) * 1000)
                if (k + 1) % args.eval_every == 0 or k + 1 == args.iters:
                    val[name][k + 1] = stepper.evaluate()["val"]
        done = min(start + args.chunk, args.iters)
        print(f"  {done:5d}/{args.iters}  val adamw {val['adamw'][max(val['adamw'])]:.4f}  "
              f"muon {val['muon'][max(val['muon'])]:.4f}", file=sys.stderr, flush=True)

    target = val["adamw"][args.iters]
    per_iter = {name: statistics.median(v) for name, v in ms.items()}
    reached = next((k for k in sorted(val["muon"]) if val["muon"][k] <= target), None)
    print(f"cpu-tiny, {args.iters} iterations, {args.threads} thread(s), Muon settings: "
          f"{' '.join(args.sets) or 'defaults'}")
    print(f"AdamW  val {target:.4f} at {args.iters}   {per_iter['adamw']:.2f} ms/iter   "
          f"{args.iters * per_iter['adamw'] / 1000:.1f} s")
    print(f"Muon   val {val['muon'][args.iters]:.4f} at {args.iters}   {per_iter['muon']:.2f} ms/iter "
          f"({per_iter['muon'] / per_iter['adamw']:.2f}x)")
    if reached is None:
        print(f"Muon never reached AdamW's {target:.4f}: FAIL")
        return 1
    iters_share = reached / args.iters
    time_share = reached * per_iter["muon"] / (args.iters * per_iter["adamw"])
    print(f"Muon reached {target:.4f} at {reached} iterations ({iters_share:.0%} of AdamW's), "
          f"{reached * per_iter['muon'] / 1000:.1f} s ({time_share:.0%} of AdamW's time)")
    ok = iters_share <= GOAL_ITERS and time_share <= GOAL_TIME
    print(f"goal <= {GOAL_ITERS:.0%} of the iterations and <= {GOAL_TIME:.0%} of the time: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
