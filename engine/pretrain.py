"""The pretrain engine's workload: our GPT on memory-mapped token files (nanoGPT-style)."""

from __future__ import annotations

from typing import Iterator

import torch

from . import config as cfgmod
from .data import TokenData, prepare
from .hardware import flops_per_token
from .model import GPT, GPTConfig


def gpt_config(cfg: cfgmod.Config, vocab_size: int) -> GPTConfig:
    m = cfg.model
    return GPTConfig(block_size=m.block_size, vocab_size=vocab_size, n_layer=m.n_layer, n_head=m.n_head,
                     n_embd=m.n_embd, dropout=m.dropout, bias=m.bias)


class PretrainWorkload:
    def __init__(self, cfg: cfgmod.Config, data: TokenData | None = None, progress=None, on_prepare=None):
        """progress: one-line messages; on_prepare: structured preparation progress
        (engine.prepare.PrepareProgress), which the run process logs as `prepare` events."""
        self.cfg = cfg
        d = cfg.data
        self.data = data or prepare(d.source, d.tokenizer, d.val_fraction, cfg.model.block_size, d.text_column,
                                    progress=progress, workers=d.workers or None, shard_tokens=d.shard_tokens,
                                    on_progress=on_prepare)
        self.tokenizer = self.data.tokenizer()
        self.model = GPT(gpt_config(cfg, self.data.vocab_size))

    def sample_batch(self, split: str, n: int, gen: torch.Generator, step: int | None):
        # offsets into the split's shards read as one stream: the batch depends on the generator's
        # state alone (seeded from (seed, step) by the Stepper), so exact resume and OOM re-splits hold
        T = self.cfg.model.block_size
        offsets = torch.randint(self.data.num_windows(split, T), (n,), generator=gen).numpy()
        rows = torch.from_numpy(self.data.windows(split, offsets, T))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if ids:
            return ids
        # an empty prompt starts from a document boundary: EOT for BPE, a newline for chars
        if self.tokenizer.eot is not None:
            return [self.tokenizer.eot]
        return self.tokenizer.encode("\n") or [0]

    @property
    def context_window(self) -> int:
        return self.cfg.model.block_size

    def stream(self, ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
               gen: torch.Generator) -> Iterator[int]:
        """The new token ids after `ids`, one at a time (KV cache; the window slides past the context)."""
        idx = torch.tensor([ids], dtype=torch.long, device=next(self.model.parameters()).device)
        for token in self.model.generate_stream(idx, max_new_tokens, temperature, top_k or None, gen):
            yield int(token)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def generate(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int, gen: torch.Generator) -> str:
        return prompt + self.decode(list(self.stream(self.encode_prompt(prompt), max_new_tokens, temperature, top_k, gen)))

    def flops_per_token(self) -> float:
        m = self.cfg.model
        return flops_per_token(self.model.num_params(), m.n_layer, m.n_embd, m.block_size)

    def tokenizer_state(self) -> dict:
        """Saved in checkpoints, so a char-level run's vocabulary travels with its weights."""
        chars = getattr(self.tokenizer, "chars", None)
        return {"kind": self.tokenizer.kind, "chars": list(chars) if chars is not None else None}

    def on_checkpoint(self, run_dir, iter: int, best: bool) -> None:
        pass  # the checkpoint holds everything; `gpt2-cockpit export` makes a Hugging Face folder from it
