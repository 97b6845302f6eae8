"""The pretrain token cache: memory-mapped uint16 shards (uint32 when the vocabulary needs it) with
a train/val split, keyed by source, tokenizer, split and shard size.

engine/data/prepare.py writes a cache folder (meta.json last: a folder with one is complete);
TokenData reads the shards of a split as one stream, a batch is a fancy-index into it.
Also the home of two rules the finetune cache shares: the one check of a source too short for
the block (check_split_long_enough) and the atomic folder build (build_atomically).
Never imports torch (the planner asks `cached_vocab_size` from the cockpit).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..paths import cache_dir
from .sources import source_identity
from .tokenizers import GPT2_VOCAB_PADDED, tokenizer_from_meta

CACHE_VERSION = 2  # 2: sharded, parallel preparation (engine/data/prepare.py)
DEFAULT_SHARD_TOKENS = 100_000_000  # tokens per shard (about 200 MB of uint16); data.shard_tokens in a preset


def cache_key(source: str, tokenizer: str, val_fraction: float, text_column: str = "text",
              shard_tokens: int = DEFAULT_SHARD_TOKENS) -> str:
    ident = json.dumps([CACHE_VERSION, source_identity(source), tokenizer, val_fraction, text_column, shard_tokens])
    slug = "".join(c if c.isalnum() else "-" for c in source.split("/")[-1])[:40].strip("-")
    return f"{slug}-{tokenizer}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def cached_vocab_size(cfg) -> int | None:
    """The vocabulary of a config's prepared data, if it was already tokenized (for the planner)."""
    if cfg.data.tokenizer == "gpt2":
        return GPT2_VOCAB_PADDED
    try:
        key = cache_key(cfg.data.source, "char", cfg.data.val_fraction, cfg.data.text_column, cfg.data.shard_tokens)
        meta = json.loads((cache_dir() / "tokens" / key / "meta.json").read_text())
        return int(meta["vocab_size"])
    except (OSError, ValueError, KeyError, UserError):
        return None


class ShardedTokens:
    """The shards of one split read as one token stream: index i of the stream is a position in
    one memory-mapped shard. One shard reads exactly as that shard's array would."""

    def __init__(self, arrays: list[np.ndarray], dtype):
        self.arrays = [a for a in arrays if len(a)]
        self.dtype = np.dtype(dtype)
        lengths = [len(a) for a in self.arrays]
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # shard s is [starts[s], starts[s+1])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The tokens at positions `idx` (any shape), as int64."""
        if len(self.arrays) == 1:
            return self.arrays[0][idx].astype(np.int64)
        out = np.empty(idx.shape, dtype=np.int64)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        for s in np.unique(shard):  # a window can straddle two shards
            mask = shard == s
            out[mask] = self.arrays[s][idx[mask] - self.starts[s]]
        return out

    def tolist(self) -> list[int]:
        return self.take(np.arange(len(self))).tolist()


@dataclass
class TokenData:
    """The train and val token streams of one prepared corpus, memory-mapped shards."""

    folder: Path
    meta: dict
    train: ShardedTokens
    val: ShardedTokens

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def tokenizer(self):
        return tokenizer_from_meta(self.meta)

    def windows(self, split: str, offsets: np.ndarray, block_size: int) -> np.ndarray:
        """(n, block_size + 1) int64 windows starting at `offsets`: x is [:, :-1], y is [:, 1:]."""
        arr = self.train if split == "train" else self.val
        return arr.take(offsets[:, None] + np.arange(block_size + 1))

    def num_windows(self, split: str, block_size: int) -> int:
        return len(self.train if split == "train" else self.val) - block_size


def open_tokens(folder: Path) -> TokenData:
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])

    def split(name: str) -> ShardedTokens:
        return ShardedTokens([np.memmap(folder / f, dtype=dtype, mode="r") for f, n in meta["shards"][name] if n],
                             dtype)

    return TokenData(folder, meta, split("train"), split("val"))


def check_long_enough(data, source: str, block_size: int) -> None:
    """check_split_long_enough for both splits of `data` (a TokenData, a packing.PackedData)."""
    for split in ("train", "val"):
        check_split_long_enough(source, split, len(getattr(data, split)), block_size)


def check_split_long_enough(source: str, split: str, tokens: int, block_size: int, where: str = "") -> None:
    """The one rule for a source too short for the block: a split needs one window of block_size
    + 1 tokens (a block's inputs and, shifted by one, its targets). Random windows (n - block_size
    of them), packed blocks and a shard's windows ((n - 1) // block_size) all need that, and no
    more. `tokens`: the split's tokens one window can span; `where` says which when not all."""
    need = block_size + 1
    if tokens < need:
        raise UserError(
            f"data.source {source} is too short: its {split} split has {tokens} tokens{where} and "
            f"model.block_size {block_size} needs at least {need} (use a longer corpus, a smaller "
            f"model.block_size, or a larger data.val_fraction)"
        )


def build_atomically(folder: Path, fill: Callable[[Path], dict]) -> None:
    """Let fill() write token files into a temporary folder and return their meta; then rename
    the folder into place, so a cache folder with a meta.json is always complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = fill(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)
        except OSError:  # another run prepared the same data meanwhile: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
