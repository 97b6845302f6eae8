"""The planner's VRAM estimate for fine-tuning against PyTorch's memory tracker, without a GPU.

    python tests/benchmarks/finetune_memory.py [--only NAME,...]

For the three 12 GB fine-tune presets and a full gpt2-xl fine-tune (engine/machine/memtrack.py's
FINETUNE_CASES): one training step of the finetune engine's own model (GPT-2 of the real shape,
random weights, with the preset's LoRA adapters and gradient checkpointing) and optimizer, built
on fake CPU tensors (no memory, no compute) under bf16 autocast, its peak counted by
torch.distributed._tools.mem_tracker.MemTracker, beside planner.estimate_vram for the same step
(eager, without the CUDA context). Prints a Markdown table; exits 1 when an estimate is more than
15% off. About two minutes on two CPU cores (gpt2-xl-lora-12gb, two micro-batches of 2 x 1024,
is the longest at about a minute).
"""

from __future__ import annotations

import argparse
import sys
import time

from gpt2_cockpit.engine.machine import memtrack

GIB = 2**30


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated case names (default: all)")
    args = p.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    print("| case | planner GiB | tracker GiB | error | tracker: weights / grads / optimizer / activations (bf16 weight copies included) | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for name, _, _ in memtrack.FINETUNE_CASES:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        planned, tracked = memtrack.planned_and_tracked(memtrack.finetune_case(name))
        error = planned / tracked["Total"] - 1
        worst = max(worst, abs(error))
        parts = " / ".join(f"{tracked.get(k, 0) / GIB:.2f}" for k in ("Parameter", "Gradient", "Optstate"))
        rest = (tracked.get("Activation", 0) + tracked.get("Temp", 0)) / GIB
        print(f"| {name} | {planned / GIB:.2f} | {tracked['Total'] / GIB:.2f} | {100 * error:+.1f}% | "
              f"{parts} / {rest:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)
    ok = worst <= memtrack.TOLERANCE
    print(f"\nworst {100 * worst:.1f}% ({'within' if ok else 'MORE than'} {memtrack.TOLERANCE:.0%})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
