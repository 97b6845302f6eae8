"""`gpt2-cockpit bench [PRESET]`: time warmed-up training steps (ms/iter, tokens/s, MFU).

Times the Trainer's own optimizer step, so what is measured is what a run does: autocast,
accumulation, clipping, fused AdamW, torch.compile. By default the batches are random token
ids (no dataset download; throughput does not depend on the text); --real-data uses the
preset's corpus.
"""

from __future__ import annotations

import argparse
import statistics
import time

from . import config as cfgmod
from . import presets


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", nargs="?", help="preset name or .toml path (default: as for train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator; default 3)")
    p.add_argument("--real-data", action="store_true", help="read batches from the preset's corpus instead of random ids")
    p.add_argument("--json", action="store_true", help="print one JSON object")


class _RandomWorkload:
    """Our GPT on random ids (the pretrain workload without a corpus)."""

    def __init__(self, cfg: cfgmod.Config):
        import torch

        from .data import GPT2_VOCAB_PADDED
        from .model import GPT
        from .pretrain import gpt_config

        self.cfg = cfg
        self.vocab = GPT2_VOCAB_PADDED if cfg.data.tokenizer == "gpt2" else 256
        self.model = GPT(gpt_config(cfg, self.vocab))
        self._torch = torch

    def sample_batch(self, split, n, gen, step):
        rows = self._torch.randint(self.vocab, (n, self.cfg.model.block_size + 1), generator=gen)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def generate(self, *a, **k):
        return ""

    def flops_per_token(self):
        from .hardware import flops_per_token

        m = self.cfg.model
        return flops_per_token(self.model.num_params(), m.n_layer, m.n_embd, m.block_size)

    def on_checkpoint(self, *a):
        pass


def measure(cfg: cfgmod.Config, steps: int, warmup: int, real_data: bool = False, log=lambda s: None) -> dict:
    import torch

    from .runner import build_workload
    from .train import Dist, Trainer, resolve_device

    if steps < 1 or warmup < 0:
        from .errors import UserError

        raise UserError("--steps must be at least 1 and --warmup not negative")
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg, Dist())
    workload = build_workload(cfg) if real_data or cfg.engine == "finetune" else _RandomWorkload(cfg)
    trainer = Trainer(cfg, workload, device, log=log)
    sync = torch.cuda.synchronize if trainer.device_type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        trainer.train_step(i)
        sync()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        log(f"step {i + 1}/{warmup + steps}: {dt * 1000:.1f} ms{' (warm-up)' if i < warmup else ''}")
    ms = statistics.median(times) * 1000
    tps = trainer.tokens_per_step / (ms / 1000)
    mfu = trainer.flops_per_token * tps / (trainer.peak * 1e12) if trainer.peak and trainer.flops_per_token else None
    out = {
        "preset": cfg.name, "device": device,
        "device_name": torch.cuda.get_device_name(device) if trainer.device_type == "cuda" else "cpu",
        "dtype": str(trainer.dtype).replace("torch.", ""), "compile": trainer.compiled,
        "params": trainer.raw_model.num_params() if hasattr(trainer.raw_model, "num_params") else None,
        "micro_batch": cfg.train.micro_batch, "grad_accum": cfg.train.grad_accum,
        "tokens_per_step": trainer.tokens_per_step,
        "ms_per_iter": round(ms, 2), "ms_min": round(min(times) * 1000, 2), "tokens_per_sec": round(tps, 1),
        "mfu": mfu, "peak_tflops": trainer.peak, "steps": steps,
    }
    if trainer.device_type == "cuda":
        out["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def run(args: argparse.Namespace) -> int:
    import json

    cfg = presets.load(args.preset or presets.default_name(), args.overrides)
    result = measure(cfg, args.steps, args.warmup, args.real_data, log=(lambda s: None) if args.json else print)
    if args.json:
        print(json.dumps(result))
        return 0
    mfu = f"{result['mfu'] * 100:.1f}% of {result['peak_tflops']:.0f} TFLOP/s" if result["mfu"] is not None else "n/a (no peak known for this device)"
    print(f"{result['preset']} on {result['device_name']} ({result['dtype']}, compile={result['compile']}), "
          f"{result['micro_batch']}x{result['grad_accum']} micro-batches, {result['tokens_per_step']:,} tokens/step")
    print(f"  ms/iter   {result['ms_per_iter']:.1f} (median of {result['steps']}, best {result['ms_min']:.1f})")
    print(f"  tokens/s  {result['tokens_per_sec']:,.0f}")
    print(f"  MFU       {mfu}")
    if "max_memory_gb" in result:
        print(f"  memory    {result['max_memory_gb']:.2f} GB peak allocated")
    return 0
