"""The finetune engine's data: documents tokenized once with the model's own tokenizer, packed into blocks.

Documents come from engine/data/sources.py (read_documents; an hf: source's own "validation"
split through `datasets` when it has one). They are tokenized once into a cache (uint16/uint32
memmaps under cache/finetune/, keyed by the source and the tokenizer's full definition), an EOS
token before every document, packed without padding. A plain text file with no blank lines and at
least 20 lines is one sample per line; anything else is free text kept whole. The held-out split:
the hf: dataset's validation split, else whole documents (20 or more), else the tail of the stream.

Never imports torch (the tokenizer is passed in); engine/train/finetune.py cuts the blocks into batches.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import UserError
from ..paths import cache_dir
from .shards import build_atomically, check_long_enough
from .sources import hf_dataset_documents, read_documents, source_identity

CACHE_VERSION = 1
LINE_SAMPLES_MIN_LINES = 20  # a text file with no blank lines and this many lines: one sample per line
WHOLE_DOCS_MIN = 20  # with fewer documents, val is the tail of the token stream, not whole documents
CHUNK_CHARS = 1 << 20  # long documents are tokenized in pieces of about this many characters


def tokenizer_identity(tokenizer) -> str:
    """What the token cache depends on: the tokenizer's full definition, hashed."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = backend.to_str()
    else:
        spec = json.dumps(sorted(tokenizer.get_vocab().items()))
    return f"{tokenizer.__class__.__name__}:{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def eos_id(tokenizer) -> int | None:
    """The document separator: EOS, else BOS, else none (documents simply abut)."""
    for tid in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    return None


def split_samples(text: str) -> tuple[list[str], str]:
    """A plain text file's samples: its lines, when it looks like one sample per line; else itself."""
    lines = text.splitlines()
    if len(lines) >= LINE_SAMPLES_MIN_LINES and all(line.strip() for line in lines):
        return lines, "one sample per line (no blank lines)"
    return [text], "free text (blank lines or few lines: kept whole)"


def _is_plain_text(source: str) -> bool:
    if source.startswith("hf:") or source == "builtin:python-docs":
        return False
    if source.startswith(("builtin:", "url:")):
        return True
    p = Path(source).expanduser()
    return p.is_file() and p.suffix.lower() not in (".csv", ".jsonl")


def documents(source: str, text_column: str) -> tuple[Iterable[str], str]:
    """The documents of a source and how they were read (for the progress line)."""
    if _is_plain_text(source):
        docs = [d for d in read_documents(source, text_column) if d]
        if len(docs) == 1:
            return split_samples(docs[0])
        return docs, "documents"
    return read_documents(source, text_column), "documents"


def _validation_documents(source: str, text_column: str) -> Iterator[str] | None:
    """An hf: dataset's own validation split, or None when it has none (or it cannot be had)."""
    if not source.startswith("hf:"):
        return None
    docs = hf_dataset_documents(source[3:], text_column, split="validation")
    try:
        first = next(docs)
    except (StopIteration, UserError):
        return None

    def chained() -> Iterator[str]:
        yield first
        yield from docs

    return chained()


def finetune_cache_key(source: str, tokenizer, val_fraction: float, text_column: str) -> str:
    ident = json.dumps([CACHE_VERSION, source_identity(source), tokenizer_identity(tokenizer), val_fraction,
                        text_column])
    slug = "".join(c if c.isalnum() else "-" for c in source.split("/")[-1])[:40].strip("-")
    return f"{slug}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


class PackedData:
    """The train and val token streams of one source under one tokenizer, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.train = np.memmap(folder / "train.bin", dtype=dtype, mode="r")
        self.val = np.memmap(folder / "val.bin", dtype=dtype, mode="r")

    def num_blocks(self, split: str, block_size: int) -> int:
        """Non-overlapping blocks of block_size + 1 tokens (the last token of one is the first of the next)."""
        arr = self.train if split == "train" else self.val
        return max(0, (len(arr) - 1) // block_size)

    def blocks(self, split: str, index: np.ndarray, block_size: int) -> np.ndarray:
        """(n, block_size + 1) int64 rows: block i is tokens [i*block_size, (i+1)*block_size]."""
        arr = self.train if split == "train" else self.val
        idx = index[:, None] * block_size + np.arange(block_size + 1)
        return arr[idx].astype(np.int64)


def prepare(source: str, tokenizer, val_fraction: float, block_size: int, text_column: str = "text",
            progress=lambda msg: None) -> PackedData:
    """Tokenize `source` once into the cache (or open the cached files) and check it is long enough."""
    folder = cache_dir() / "finetune" / finetune_cache_key(source, tokenizer, val_fraction, text_column)
    if not (folder / "meta.json").exists():
        _build(folder, source, tokenizer, val_fraction, text_column, progress)
    data = PackedData(folder)
    check_long_enough(data, source, block_size)
    return data


def _batches(docs: Iterable[str], max_docs: int = 1024, max_chars: int = 4 * CHUNK_CHARS) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for d in docs:
        if not d:
            continue
        batch.append(d)
        chars += len(d)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _chunks(text: str) -> list[str]:
    """A long document in pieces cut after a newline (tokenized apart, joined back into one stream)."""
    out, start = [], 0
    while len(text) - start > CHUNK_CHARS:
        cut = text.rfind("\n", start, start + CHUNK_CHARS)
        cut = start + CHUNK_CHARS if cut <= start else cut + 1
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def _encode(tokenizer, batch: list[str]) -> list[list[int]]:
    """Token ids of each document (long ones in pieces), without special tokens."""
    pieces, owners = [], []
    for i, doc in enumerate(batch):
        for piece in _chunks(doc) if len(doc) > CHUNK_CHARS else [doc]:
            pieces.append(piece)
            owners.append(i)
    enc = tokenizer(pieces, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    out: list[list[int]] = [[] for _ in batch]
    for i, ids in zip(owners, enc):
        out[i].extend(ids)
    return out


def _build(folder: Path, source: str, tokenizer, val_fraction: float, text_column: str, progress) -> None:
    """Write train.bin/val.bin/meta.json into a temporary folder, then rename it into place."""
    build_atomically(folder, lambda tmp: _tokenize_into(tmp, source, tokenizer, val_fraction, text_column, progress))


def _tokenize_into(tmp: Path, source: str, tokenizer, val_fraction: float, text_column: str, progress) -> dict:
    eos = eos_id(tokenizer)
    vocab = max(len(tokenizer), tokenizer.vocab_size)
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    progress(f"reading {source}")
    docs, mode = documents(source, text_column)
    val_docs = _validation_documents(source, text_column)
    counts = {"train": 0, "val": 0}
    n_docs, last = 0, time.time()
    with open(tmp / "train.bin", "wb") as ftrain, open(tmp / "val.bin", "wb") as fval:
        files = {"train": ftrain, "val": fval}

        def write(split: str, ids: list[int]) -> None:
            arr = np.array(([eos] if eos is not None else []) + ids, dtype=dtype)
            arr.tofile(files[split])
            counts[split] += len(arr)

        for batch in _batches(docs):
            for ids in _encode(tokenizer, batch):
                # whole documents per split (unless the source brings its own validation split)
                held_out = val_docs is None and goes_to_val(counts, val_fraction)
                write("val" if held_out else "train", ids)
            n_docs += len(batch)
            if time.time() - last > 5:
                last = time.time()
                progress(f"tokenized {n_docs:,} documents, {sum(counts.values()) / 1e6:,.1f}M tokens")
        if val_docs is not None:
            mode += "; val from the dataset's validation split"
            for batch in _batches(val_docs):
                for ids in _encode(tokenizer, batch):
                    write("val", ids)
    if n_docs == 0 or counts["train"] + counts["val"] <= n_docs:
        raise UserError(f"data.source {source} is empty")
    if val_docs is None and n_docs < WHOLE_DOCS_MIN:
        # too few documents to hold some out whole: the tail of the token stream is val
        ids = np.concatenate([np.fromfile(tmp / f"{s}.bin", dtype=dtype) for s in ("train", "val")])
        cut = int(len(ids) * (1 - val_fraction))
        ids[:cut].tofile(tmp / "train.bin")
        ids[cut:].tofile(tmp / "val.bin")
        counts = {"train": cut, "val": len(ids) - cut}
    progress(f"{source}: {mode}; {n_docs:,} documents, {counts['train']:,} train and {counts['val']:,} val tokens")
    return {"dtype": np.dtype(dtype).name, "n_train": counts["train"], "n_val": counts["val"], "eos": eos,
            "n_docs": n_docs, "mode": mode, "source": source, "tokenizer": tokenizer.name_or_path,
            "val_fraction": val_fraction, "created": time.time()}


def goes_to_val(counts: dict[str, int], val_fraction: float) -> bool:
    """Whole documents go to val while val is behind its share of what was seen so far (finetune)."""
    return counts["val"] < val_fraction * (counts["train"] + counts["val"])
