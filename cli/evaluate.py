"""`gpt2-cockpit eval TARGET`: HellaSwag acc and acc_norm of a run, a checkpoint file, a Hugging
Face model folder or a hub name, beside the GPT-2 figure it compares with (engine/train/hellaswag.py)."""

from __future__ import annotations

import argparse
import json
import sys

from gpt2_cockpit.engine.errors import UserError


def evaluate(args: argparse.Namespace) -> int:
    from gpt2_cockpit.engine.train import hellaswag

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: expected at least 1 (leave it out for every item)")
    # the items first: a bad file is told before a model is loaded
    path, items = hellaswag.load_source(args.hellaswag or hellaswag.DEFAULT_SOURCE, args.limit or 0)
    model, what = hellaswag.load_target(args.target, best=args.best, warn=_warn)
    result = _on_a_fair_share(lambda: hellaswag.evaluate(model, items)) if model.device == "cpu" \
        else hellaswag.evaluate(model, items)
    params = model.params
    ref = hellaswag.reference_for(params)
    if args.json:
        print(json.dumps({
            "target": args.target, "model": what, "source": str(path), "n": result.n, "acc": result.acc,
            "acc_norm": result.acc_norm, "correct": result.correct, "correct_norm": result.correct_norm,
            "seconds": round(result.seconds, 3), "items_per_sec": round(result.items_per_sec, 2),
            "device": model.device, "params": params,
            "reference": {"name": ref.name, "params": ref.params, "acc_norm": ref.acc_norm},
        }))
        return 0
    rows = [
        ("acc", f"{result.acc:.4f}", f"{result.correct:,} of {result.n:,} right by summed loss"),
        ("acc_norm", f"{result.acc_norm:.4f}", f"{result.correct_norm:,} of {result.n:,} right by mean loss per token"),
        ("n", f"{result.n:,}", f"items of {path}"),
        ("items/s", f"{result.items_per_sec:,.1f}", f"{result.seconds:,.1f} s on {model.device}"),
        ("reference", f"{ref.acc_norm:.4f}", f"acc_norm of {ref.name} (llm.c), the GPT-2 nearest this model's "
                                             f"{params / 1e6:,.1f}M parameters"),
    ]
    print(f"HellaSwag of {what}")
    for name, value, note in rows:
        print(f"{name:<10} {value:<8} {note}")
    return 0


def _on_a_fair_share(work):
    """On a CPU, beside runs training on it: this process counts as one more and takes its share of
    the cores, as runs do (engine/train/cpushare.py; threads that spin waiting for a busy core slow
    everyone down)."""
    from gpt2_cockpit.engine.train.cpushare import CpuShare, pinned

    share = CpuShare(pinned=pinned())
    try:
        share.apply()
        return work()
    finally:
        share.close()


def _warn(message: str) -> None:
    print(f"gpt2-cockpit: {message}", file=sys.stderr)
