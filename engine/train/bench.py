"""Timed warmed-up training steps (ms/iter, tokens/s, MFU), for `gpt2-cockpit bench [PRESET]`.

Times the Stepper's own optimizer step, so what is measured is what a run does: autocast,
accumulation, clipping, fused AdamW, torch.compile. By default the batches are random token
ids (no dataset download; throughput does not depend on the text); --real-data uses the
preset's corpus.
"""

from __future__ import annotations

import statistics
import time

from .. import config as cfgmod


class SyntheticWorkload:
    """Our GPT on random token ids: the pretrain workload without a corpus or a tokenizer, so
    nothing is downloaded (throughput does not depend on the text). A batch depends on the
    generator alone, so on (seed, step) as the real workloads' do: OOM re-splits and exact
    resume behave as in a real run. Decoded text is one printable character per id."""

    def __init__(self, cfg: cfgmod.Config, vocab: int | None = None):
        import torch

        from ..data.tokenizers import GPT2_VOCAB_PADDED
        from .model import GPT
        from .pretrain import gpt_config

        self.cfg = cfg
        self.vocab = vocab or (GPT2_VOCAB_PADDED if cfg.data.tokenizer == "gpt2" else 256)
        self.model = GPT(gpt_config(cfg, self.vocab))
        self._torch = torch

    @property
    def context_window(self) -> int:
        return self.cfg.model.block_size

    def sample_batch(self, split, n, gen, step):
        rows = self._torch.randint(self.vocab, (n, self.cfg.model.block_size + 1), generator=gen)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def encode_prompt(self, prompt: str) -> list[int]:
        return [b % self.vocab for b in prompt.encode()] or [0]

    def stream(self, ids, max_new_tokens, temperature, top_k, gen):
        idx = self._torch.tensor([ids], dtype=self._torch.long, device=next(self.model.parameters()).device)
        for token in self.model.generate_stream(idx, max_new_tokens, temperature, top_k or None, gen):
            yield int(token)

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(33 + i % 94) for i in ids)

    def flops_per_token(self):
        from ..machine.hardware import flops_per_token

        m = self.cfg.model
        return flops_per_token(self.model.num_params(), m.n_layer, m.n_embd, m.block_size)

    def tokenizer_state(self):
        return None

    def on_checkpoint(self, *a):
        pass

    def missing(self, k, rows):
        return None  # random ids: never anything to wait for

    data_complete = True

    def close(self):
        pass


def measure(cfg: cfgmod.Config, steps: int, warmup: int, real_data: bool = False, log=lambda s: None) -> dict:
    import torch

    from .runner import build_workload
    from .dist import Dist
    from .step import Stepper, lr_at, resolve_device

    if steps < 1 or warmup < 0:
        from ..errors import UserError

        raise UserError("--steps must be at least 1 and --warmup not negative")
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg, Dist())
    workload = build_workload(cfg) if real_data or cfg.engine == "finetune" else SyntheticWorkload(cfg)
    try:
        return measure_stepper(cfg, Stepper(cfg, workload, device, Dist()), steps, warmup, log)
    finally:
        workload.close()  # a preparation still going on in the background


def measure_stepper(cfg: cfgmod.Config, stepper, steps: int, warmup: int, log=lambda s: None) -> dict:
    """Median ms/iter of `steps` optimizer steps after `warmup` untimed ones (compile, allocator)."""
    import torch

    from .step import lr_at

    device = stepper.device
    sync = torch.cuda.synchronize if stepper.device_type == "cuda" else (lambda: None)
    times, first = [], None
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        stepper.step(i, lr_at(i, cfg.train))
        sync()
        dt = time.perf_counter() - t0
        first = dt if first is None else first  # torch.compile compiles in the first step
        if i >= warmup:
            times.append(dt)
        elif i == warmup - 1 and stepper.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # the timed steps' peak, not compile's
        log(f"step {i + 1}/{warmup + steps}: {dt * 1000:.1f} ms{' (warm-up)' if i < warmup else ''}")
    ms = statistics.median(times) * 1000
    tps = stepper.tokens_per_step / (ms / 1000)
    mfu = stepper.mfu(tps)
    out = {
        "preset": cfg.name, "device": device,
        "device_name": torch.cuda.get_device_name(device) if stepper.device_type == "cuda" else "cpu",
        "dtype": str(stepper.dtype).replace("torch.", ""), "compile": stepper.compiled,
        "params": stepper.raw_model.num_params() if hasattr(stepper.raw_model, "num_params") else None,
        "micro_batch": cfg.train.micro_batch, "grad_accum": cfg.train.grad_accum,
        "tokens_per_step": stepper.tokens_per_step,
        "ms_per_iter": round(ms, 2), "ms_min": round(min(times) * 1000, 2), "tokens_per_sec": round(tps, 1),
        "mfu": mfu, "peak_tflops": stepper.peak_tflops, "steps": steps, "first_step_seconds": round(first, 3),
    }
    if stepper.device_type == "cuda":
        out["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def format_result(result: dict) -> str:
    """measure()'s result as a few lines for a terminal."""
    mfu = (f"{result['mfu'] * 100:.1f}% of {result['peak_tflops']:.0f} TFLOP/s" if result["mfu"] is not None
           else "n/a (no peak known for this device)")
    lines = [
        f"{result['preset']} on {result['device_name']} ({result['dtype']}, compile={result['compile']}), "
        f"{result['micro_batch']}x{result['grad_accum']} micro-batches, {result['tokens_per_step']:,} tokens/step",
        f"  ms/iter   {result['ms_per_iter']:.1f} (median of {result['steps']}, best {result['ms_min']:.1f})",
        f"  tokens/s  {result['tokens_per_sec']:,.0f}",
        f"  MFU       {mfu}",
    ]
    if "max_memory_gb" in result:
        lines.append(f"  memory    {result['max_memory_gb']:.2f} GB peak allocated")
    return "\n".join(lines)
