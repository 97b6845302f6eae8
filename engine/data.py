"""Corpora become token files once; training reads random windows from them.

A source (builtin:python-docs, builtin:tiny-shakespeare, a text file, a folder of text files,
a .csv/.jsonl with a text column, hf:NAME[:CONFIG] via `datasets`) is read as documents,
tokenized (char: vocabulary from the corpus; gpt2: tiktoken BPE) and written once to a cache
keyed by source and tokenizer, as memory-mapped uint16 arrays (uint32 when the vocabulary
needs it) with a train/val split. Reading batches is a fancy-index into the memmap.

Never imports torch at module level (the planner asks `cached_vocab_size` from the cockpit).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import NetworkUnavailable, UserError
from .paths import cache_dir

CACHE_VERSION = 1
GPT2_VOCAB = 50257  # GPT-2's BPE: 50,000 merges, 256 bytes and <|endoftext|>
GPT2_EOT = 50256  # <|endoftext|> in GPT-2's BPE, placed between documents
GPT2_VOCAB_PADDED = 50304  # 50257 rounded up to a multiple of 64: faster matmuls, unused rows never trained
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ".py", ".tex", ".html", ".csv", ".jsonl", ".json"}
Progress = Callable[[str], None]


# --------------------------------------------------------------------------- reading sources


def _check_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"data.source {path} cannot be read ({e.strerror})") from None
    if b"\x00" in raw[:1 << 20]:
        raise UserError(f"data.source {path} is not a text file (it contains NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"data.source {path} is not UTF-8 text") from None


def _file_documents(path: Path, text_column: str) -> Iterator[str]:
    if path.suffix == ".jsonl":
        for n, line in enumerate(_check_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{path}:{n} is not a JSON object") from None
            if not isinstance(row, dict) or text_column not in row:
                raise UserError(f"{path}:{n} has no '{text_column}' field (set data.text_column)")
            yield str(row[text_column])
    elif path.suffix == ".csv":
        reader = csv.DictReader(_check_text(path).splitlines())
        if reader.fieldnames is None or text_column not in reader.fieldnames:
            raise UserError(f"{path} has no '{text_column}' column (columns: {reader.fieldnames}; set data.text_column)")
        for row in reader:
            yield row[text_column] or ""
    else:
        yield _check_text(path)


def _python_docs() -> Iterator[str]:
    """CPython's bundled documentation topics: present in every Python install, offline."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def _download(url: str, dest: Path, what: str) -> Path:
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            data = r.read()
    except OSError as e:
        raise NetworkUnavailable(
            f"{what} could not be downloaded ({getattr(e, 'reason', e)}); without network use "
            f"--set data.source=builtin:python-docs, or put the text in a local file and pass its path"
        ) from None
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hf_documents(spec: str, text_column: str, split: str = "train") -> Iterator[str]:
    name, _, config = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise UserError("hf: sources need the `datasets` package (pip install datasets)") from None
    online = _hub_reachable()
    if not online:
        # use only what is already cached, without retrying the network
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=online)
    except Exception as e:  # datasets raises many types; the user needs one sentence
        if not online:
            raise NetworkUnavailable(
                f"data.source hf:{spec} is not in the local cache and the Hugging Face Hub cannot be reached; "
                f"use a local text file or builtin:python-docs"
            ) from None
        raise UserError(f"data.source hf:{spec} could not be loaded: {str(e).splitlines()[0]}") from None
    for row in ds:
        if text_column not in row:
            raise UserError(f"hf:{spec} has no '{text_column}' column (columns: {list(row)}; set data.text_column)")
        yield row[text_column]


def source_identity(source: str) -> str:
    """What the cache key depends on: the name for builtins/hub, path+size+mtime for local files."""
    if source.startswith("builtin:python-docs"):
        return f"{source}@{sys.version_info.major}.{sys.version_info.minor}"
    if source.startswith(("builtin:", "hf:", "url:")):
        return source
    p = Path(source).expanduser().resolve()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return f"{p}|" + "|".join(f"{f.relative_to(p)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if p.is_file():
        st = p.stat()
        return f"{p}:{st.st_size}:{st.st_mtime_ns}"
    raise UserError(f"data.source {source} does not exist (a text file, a folder, builtin:python-docs, "
                    f"builtin:tiny-shakespeare or hf:NAME[:CONFIG])")


def read_documents(source: str, text_column: str = "text") -> Iterator[str]:
    """The documents of a source, as strings."""
    if source == "builtin:python-docs":
        yield from _python_docs()
    elif source == "builtin:tiny-shakespeare":
        yield _check_text(_download(TINY_SHAKESPEARE_URL, cache_dir() / "corpora" / "tiny-shakespeare.txt",
                                    "tiny Shakespeare"))
    elif source.startswith("builtin:"):
        raise UserError(f"unknown builtin corpus '{source}' (builtin:python-docs or builtin:tiny-shakespeare)")
    elif source.startswith("url:"):
        url = source[4:]
        name = hashlib.sha1(url.encode()).hexdigest()[:12] + ".txt"
        yield _check_text(_download(url, cache_dir() / "corpora" / name, url))
    elif source.startswith("hf:"):
        yield from _hf_documents(source[3:], text_column)
    else:
        p = Path(source).expanduser()
        source_identity(source)  # raises the 'does not exist' sentence
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            if not files:
                raise UserError(f"data.source {source} has no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
            for f in files:
                yield from _file_documents(f, text_column)
        else:
            yield from _file_documents(p, text_column)


# --------------------------------------------------------------------------- tokenizers


class CharTokenizer:
    """One token per character; the vocabulary is the set of characters in the corpus."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)
        self.eot = None

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text if c in self.stoi]  # characters never seen are dropped

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids if 0 <= i < len(self.chars))


class GPT2Tokenizer:
    """tiktoken's GPT-2 BPE (the encoding file is downloaded once and cached by tiktoken)."""

    kind = "gpt2"
    vocab_size = GPT2_VOCAB

    def __init__(self):
        try:
            import tiktoken

            self.enc = tiktoken.get_encoding("gpt2")
        except ImportError:
            raise UserError("the gpt2 tokenizer needs tiktoken (pip install tiktoken)") from None
        except Exception:
            raise NetworkUnavailable(
                "tiktoken's GPT-2 encoding is not cached and could not be downloaded; connect once to cache it "
                "(or set TIKTOKEN_CACHE_DIR to a folder holding it), or use --set data.tokenizer=char"
            ) from None
        self.eot = GPT2_EOT

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids) -> str:
        return self.enc.decode([i for i in ids if i < self.vocab_size])


def tokenizer_from_meta(meta: dict):
    return CharTokenizer(meta["chars"]) if meta["tokenizer"] == "char" else GPT2Tokenizer()


# --------------------------------------------------------------------------- token files


def cache_key(source: str, tokenizer: str, val_fraction: float, text_column: str = "text") -> str:
    ident = json.dumps([CACHE_VERSION, source_identity(source), tokenizer, val_fraction, text_column])
    slug = "".join(c if c.isalnum() else "-" for c in source.split("/")[-1])[:40].strip("-")
    return f"{slug}-{tokenizer}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def cached_vocab_size(cfg) -> int | None:
    """The vocabulary of a config's prepared data, if it was already tokenized (for the planner)."""
    if cfg.data.tokenizer == "gpt2":
        return GPT2_VOCAB_PADDED
    try:
        meta = json.loads((cache_dir() / "tokens" / cache_key(cfg.data.source, "char", cfg.data.val_fraction,
                                                                cfg.data.text_column) / "meta.json").read_text())
        return int(meta["vocab_size"])
    except (OSError, ValueError, KeyError, UserError):
        return None


@dataclass
class TokenData:
    """The train and val token arrays of one prepared corpus, memory-mapped."""

    folder: Path
    meta: dict
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def tokenizer(self):
        return tokenizer_from_meta(self.meta)

    def windows(self, split: str, offsets: np.ndarray, block_size: int) -> np.ndarray:
        """(n, block_size + 1) int64 windows starting at `offsets`: x is [:, :-1], y is [:, 1:]."""
        arr = self.train if split == "train" else self.val
        idx = offsets[:, None] + np.arange(block_size + 1)
        return arr[idx].astype(np.int64)

    def num_windows(self, split: str, block_size: int) -> int:
        return len(self.train if split == "train" else self.val) - block_size


def _open(folder: Path) -> TokenData:
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    return TokenData(folder, meta,
                     np.memmap(folder / "train.bin", dtype=dtype, mode="r"),
                     np.memmap(folder / "val.bin", dtype=dtype, mode="r"))


def prepare(source: str, tokenizer: str, val_fraction: float, block_size: int, text_column: str = "text",
            progress: Progress | None = None) -> TokenData:
    """Tokenize `source` once into the cache (or open the cached files) and check it is long enough."""
    key = cache_key(source, tokenizer, val_fraction, text_column)
    folder = cache_dir() / "tokens" / key
    if not (folder / "meta.json").exists():
        _build(folder, source, tokenizer, val_fraction, text_column, progress or (lambda msg: None))
    data = _open(folder)
    need = block_size + 2
    for split, arr in (("train", data.train), ("val", data.val)):
        if len(arr) < need:
            raise UserError(
                f"data.source {source} is too short: its {split} split has {len(arr)} tokens and "
                f"block_size {block_size} needs at least {need} (use a longer corpus, a smaller "
                f"model.block_size, or a larger data.val_fraction)"
            )
    return data


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


def _build(folder: Path, source: str, tokenizer: str, val_fraction: float, text_column: str,
           progress: Progress) -> None:
    def fill(tmp: Path) -> dict:
        meta = (_build_char if tokenizer == "char" else _build_gpt2)(tmp, source, val_fraction, text_column, progress)
        meta.update(source=source, tokenizer=tokenizer, val_fraction=val_fraction, created=time.time())
        return meta

    build_atomically(folder, fill)


def _goes_to_val(counts: dict[str, int], val_fraction: float) -> bool:
    """Whole documents go to val while val is behind its share of what was seen so far."""
    return counts["val"] < val_fraction * (counts["train"] + counts["val"])


def _split_docs(docs: list[str], val_fraction: float) -> tuple[str, str]:
    """Many documents: whole documents are held out for val. Few: the tail of the text."""
    if len(docs) >= 20:
        parts: dict[str, list[str]] = {"train": [], "val": []}
        counts = {"train": 0, "val": 0}
        for d in docs:
            split = "val" if _goes_to_val(counts, val_fraction) else "train"
            parts[split].append(d)
            counts[split] += len(d)
        return "\n\n".join(parts["train"]), "\n\n".join(parts["val"])
    text = "\n\n".join(docs)
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def _build_char(tmp: Path, source: str, val_fraction: float, text_column: str, progress: Progress) -> dict:
    progress(f"reading {source}")
    docs = [d for d in read_documents(source, text_column) if d]
    if not any(d.strip() for d in docs):
        raise UserError(f"data.source {source} is empty")
    train, val = _split_docs(docs, val_fraction)
    chars = sorted(set(train) | set(val))
    tok = CharTokenizer(chars)
    dtype = np.uint16 if len(chars) < 65536 else np.uint32
    for name, text in (("train", train), ("val", val)):
        np.array(tok.encode(text), dtype=dtype).tofile(tmp / f"{name}.bin")
    progress(f"{len(train) + len(val):,} characters, vocabulary of {len(chars)}")
    return {"dtype": np.dtype(dtype).name, "vocab_size": len(chars), "chars": chars,
            "n_train": len(train), "n_val": len(val)}


def _build_gpt2(tmp: Path, source: str, val_fraction: float, text_column: str, progress: Progress) -> dict:
    """Stream documents, BPE them in batches (threads), append to the files: works for 10B tokens."""
    tok = GPT2Tokenizer()
    counts = {"train": 0, "val": 0}
    files = {s: open(tmp / f"{s}.bin", "wb") for s in counts}
    n_docs, last = 0, 0.0
    try:
        batch: list[str] = []

        def flush() -> None:
            nonlocal batch, n_docs
            for ids in tok.encode_batch(batch):
                # whole documents per split, EOT before each one
                split = "val" if _goes_to_val(counts, val_fraction) else "train"
                arr = np.array([GPT2_EOT] + ids, dtype=np.uint16)
                arr.tofile(files[split])
                counts[split] += len(arr)
            n_docs += len(batch)
            batch = []

        docs = read_documents(source, text_column)
        for doc in docs:
            batch.append(doc)
            if len(batch) >= 1024:
                flush()
                if time.time() - last > 5:
                    last = time.time()
                    progress(f"tokenized {n_docs:,} documents, {sum(counts.values()) / 1e6:,.1f}M tokens")
        if batch:
            flush()
    finally:
        for f in files.values():
            f.close()
    if n_docs < 20:  # too few documents to hold some out whole: split the token stream at its tail
        ids = np.concatenate([np.fromfile(tmp / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
        cut = int(len(ids) * (1 - val_fraction))
        ids[:cut].tofile(tmp / "train.bin")
        ids[cut:].tofile(tmp / "val.bin")
        counts = {"train": cut, "val": len(ids) - cut}
    if sum(counts.values()) <= n_docs:
        raise UserError(f"data.source {source} is empty")
    progress(f"{sum(counts.values()):,} tokens from {n_docs:,} documents")
    return {"dtype": "uint16", "vocab_size": GPT2_VOCAB_PADDED, "n_train": counts["train"], "n_val": counts["val"]}
