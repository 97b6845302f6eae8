"""The pretrain engine's workload: our GPT on memory-mapped token files (nanoGPT-style)."""

from __future__ import annotations

from typing import Iterator

import torch

from .. import config as cfgmod
from ..data.shards import TokenData, check_long_enough, open_tokens
from ..data.stream import ShardStream, wait_for_manifest, wait_for_meta
from ..data.tokenizers import tokenizer_from_meta
from ..machine.hardware import flops_per_token
from .model import GPT, GPTConfig


def gpt_config(cfg: cfgmod.Config, vocab_size: int) -> GPTConfig:
    m = cfg.model
    return GPTConfig(block_size=m.block_size, vocab_size=vocab_size, n_layer=m.n_layer, n_head=m.n_head,
                     n_embd=m.n_embd, dropout=m.dropout, bias=m.bias)


class PretrainWorkload:
    def __init__(self, cfg: cfgmod.Config, data: TokenData | None = None, progress=None, on_prepare=None,
                 on_disk_full=None, prepare_rest: bool = True):
        """progress: one-line messages; on_prepare: structured preparation progress
        (engine.data.prepare.PrepareProgress), which the run process logs as `prepare` events;
        on_disk_full(path): the background preparation filled the disk (the run pauses, and the
        preparation starts again once the run is resumed); prepare_rest=False: a run's shards
        read in order need not all be prepared (sampling from a checkpoint needs the plan alone)."""
        self.cfg = cfg
        self.prepare_rest = prepare_rest
        self._prepare_args = (progress, on_prepare, on_disk_full)
        self.data = data  # all the shards, read as random windows (nanoGPT); or
        self.shards: ShardStream | None = None  # the shards in order, while they are prepared (llm.c)
        self.preparation = None  # the background preparation this process runs, if any
        if data is None:
            self._open_data()
        meta = self.shards.meta if self.shards is not None else self.data.meta
        vocab_size = self.shards.vocab_size if self.shards is not None else self.data.vocab_size
        self.tokenizer = tokenizer_from_meta(meta)
        self.model = GPT(gpt_config(cfg, vocab_size))

    def _open_data(self) -> None:
        """data.order "random": prepare the whole corpus, then read random windows of it.
        "shards" (and "auto" with more than one shard): prepare in the background and read the
        shards in order as they become ready (engine/data/stream.py); the model needs only the plan."""
        from ..data import prepare as prep

        d = self.cfg.data
        progress, on_prepare, _ = self._prepare_args
        if d.order == "random":
            self.data = prep.prepare_and_open(d.source, d.tokenizer, d.val_fraction, self.cfg.model.block_size,
                                              d.text_column, progress=progress, workers=d.workers or None,
                                              shard_tokens=d.shard_tokens, on_progress=on_prepare)
            return
        files, folder = prep.locate(d.source, d.tokenizer, d.val_fraction, d.text_column, d.shard_tokens, progress,
                                    on_prepare)
        self._files = files
        planned = (folder / "manifest.json").exists()
        if not (folder / "meta.json").exists() and _local_rank() == 0 and (self.prepare_rest or not planned):
            self._start_preparation(folder)  # one preparer per machine
        wait_for_manifest(folder, self.preparation, d.tokenizer)
        stream = ShardStream(folder, self.cfg.model.block_size, self.cfg.train.seed)
        if d.order == "shards" or stream.train_units > 1:
            self.shards = stream
            return
        # "auto" and a single shard of training text (a small corpus): nanoGPT's random windows of
        # the whole corpus, once it is prepared
        if self.preparation is None and not (folder / "meta.json").exists() and _local_rank() == 0:
            self._start_preparation(folder)
        wait_for_meta(folder, self.preparation)
        self.data = open_tokens(folder)
        check_long_enough(self.data, d.source, self.cfg.model.block_size)

    def _start_preparation(self, folder) -> None:
        from ..data import prepare as prep

        d = self.cfg.data
        progress, on_prepare, on_disk_full = self._prepare_args
        self.preparation = prep.Preparation(folder, d.source, self._files, d.tokenizer, d.val_fraction, d.text_column,
                                            workers=d.workers or None, shard_tokens=d.shard_tokens, say=progress,
                                            on_progress=on_prepare, on_disk_full=on_disk_full)

    def missing(self, k: int, rows: int) -> str | None:
        """Why step k's batch of `rows` rows cannot be drawn yet (its shards are being prepared), or None."""
        if self.shards is None:
            return None
        error = self.preparation.error if self.preparation is not None else None
        if error is not None:
            from ..data.prepare import PrepareDiskFull

            if not (isinstance(error, PrepareDiskFull) and self._prepare_args[2] is not None):
                raise error
            # the disk filled up, the run paused, and it was resumed: prepare the rest again
            self._start_preparation(self.shards.folder)
        return self.shards.missing(k, rows)

    @property
    def data_complete(self) -> bool:
        """Every shard is prepared (or the corpus was prepared whole before the run): no more waiting."""
        return self.shards is None or self.shards.complete

    def close(self) -> None:
        """Stop the preparation still going on in the background, if any."""
        if self.preparation is not None:
            self.preparation.close()

    def sample_batch(self, split: str, n: int, gen: torch.Generator, step: int | None):
        """n rows for step `step` (train) or for evaluation (step None). Random windows of the whole
        split, drawn with `gen` (nanoGPT); or, streaming the shards in order, step k's windows of
        the sequence (training) and random windows of the eval shards (evaluation). Either way a
        batch depends on (seed, step) alone: exact resume and OOM re-splits hold."""
        T = self.cfg.model.block_size
        if self.shards is not None:
            if split == "train" and step is not None:
                rows = torch.from_numpy(self.shards.batch(step, n))
            else:
                count = len(self.shards.eval_tokens(split)) - T
                offsets = torch.randint(count, (n,), generator=gen).numpy()
                rows = torch.from_numpy(self.shards.eval_windows(split, offsets))
        else:
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

    def flops_per_token(self) -> float:
        m = self.cfg.model
        return flops_per_token(self.model.num_params(), m.n_layer, m.n_embd, m.block_size)

    def tokenizer_state(self) -> dict:
        """Saved in checkpoints, so a char-level run's vocabulary travels with its weights."""
        chars = getattr(self.tokenizer, "chars", None)
        return {"kind": self.tokenizer.kind, "chars": list(chars) if chars is not None else None}

    def on_checkpoint(self, run_dir, iter: int, best: bool) -> None:
        pass  # the checkpoint holds everything; `gpt2-cockpit export` makes a Hugging Face folder from it


def _local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))
