"""Sharded, parallel, resumable tokenization of a pretrain corpus (FineWeb-scale, bounded memory).

    prepare_tokens(source, "gpt2", 0.1, "text", workers=2, on_progress=print) -> cache folder

prepare_and_open also opens the shards and checks the source is long enough (a run with
data.order "random"); Preparation prepares in a background thread while a run trains on the
shards ready so far (engine/data/stream.py).

1. **Plan** (once, kept in the folder's manifest.json): the source's files are cut into *units*
   of about `shard_tokens` tokens each: row ranges of a parquet file (from its metadata alone),
   line-aligned byte ranges of a .jsonl or text file, a whole .csv, the builtin corpus. Every
   document gets its position in the source (file by file, row or line by line) as its index.
2. **Split**, decided per document and never by arrival order. A corpus with enough documents
   (val_fraction x documents >= MIN_VAL_DOCS) holds out whole documents: document i is val when
   a hash of i falls below val_fraction. A corpus of few documents (a book, the builtin docs)
   holds out the last val_fraction of every document instead.
3. **Vocabulary** (char only): a first pass over the units collects the character set; it is
   kept in the manifest, so a resumed preparation does not read the corpus twice.
4. **Tokenize**: a pool of worker processes takes units (the evaluation units first, then in
   order); each streams its unit (parquet record batches of the text column only, blocks of
   lines), encodes, and writes the unit's train and val tokens to `.train-NNNNN.bin.PID.tmp` /
   `.val-...`, renamed to `train-NNNNN.bin` / `val-NNNNN.bin` when complete, then its own
   `unit-NNNNN.json`; the main process records each finished unit in the manifest too, and a
   restart adopts unit records the manifest missed. A shard's bytes depend only on its unit, so
   the result is byte-identical whatever the number of workers and however often it was
   interrupted; a SIGKILL loses the units in flight, at most one per worker. Memory per process
   is one record batch or block plus a token buffer.
5. **meta.json** is written last: a folder with one is complete (shards.open_tokens reads it).

Progress goes to `on_progress(PrepareProgress)` (phase, done, total or None, unit, rate, eta or
None), at most every half second per phase and once at its end; the run process turns these
into `prepare` events, `gpt2-cockpit prepare` into one updating line.

Workers are spawned (not forked): the run process has threads and torch loaded, and a spawned
worker gets the tokenizer itself (the char set, or the tiktoken Encoding, pickled), so an
encoding injected in tests reaches the workers too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import queue as queue_mod
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import faults
from ..errors import UserError
from ..fsutil import check_space, disk_full_message, is_disk_full
from ..paths import cache_dir
from . import shards, sources, tokenizers

MANIFEST_VERSION = 1
MIN_VAL_DOCS = 20  # whole documents are held out only when about this many would land in val
BYTES_PER_TOKEN = {"gpt2": 4.0, "char": 1.0}  # to size units and estimate disk: English text in GPT-2 BPE ~4 bytes/token
TEXT_BLOCK = 4 << 20  # text and jsonl units are read in blocks of about 4 MB, cut after a newline
FLUSH_TOKENS = 1 << 20  # a worker writes its token buffer out every million tokens
REPORT_EVERY = 0.25  # seconds between a worker's progress messages
TICK = 0.5  # seconds between progress reports of one phase


@dataclass(frozen=True)
class PrepareProgress:
    """One progress report of a preparation; its fields are the `prepare` event's."""

    phase: str  # "download", "scan", "vocabulary", "tokenize", "done"
    done: float  # units of work done so far in this phase
    total: float | None  # units of work in this phase, when known
    unit: str  # what done and total count: "bytes" (of source text), "files"
    rate: float  # units per second in this phase (since it started or resumed)
    eta: float | None  # seconds left, when total and rate are known

    def fields(self) -> dict:
        return asdict(self)


OnProgress = Callable[[PrepareProgress], None]


def default_workers() -> int:
    """Cores - 1 (one left for the run or the terminal), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


# --------------------------------------------------------------------------- the public entry point

def prepare_and_open(source: str, tokenizer: str, val_fraction: float, block_size: int, text_column: str = "text",
                     progress: Callable[[str], None] | None = None, *, workers: int | None = None,
                     shard_tokens: int = shards.DEFAULT_SHARD_TOKENS, on_progress=None) -> shards.TokenData:
    """Tokenize `source` once into the cache (or open the cached shards) and check it is long enough.

    progress: one-line messages; on_progress: structured prepare.PrepareProgress reports (see
    below); workers: tokenizing processes (None: cores - 1)."""
    folder = prepare_tokens(source, tokenizer, val_fraction, text_column, workers=workers,
                            shard_tokens=shard_tokens, say=progress, on_progress=on_progress)
    data = shards.open_tokens(folder)
    shards.check_long_enough(data, source, block_size)
    return data


def prepare_tokens(source: str, tokenizer: str, val_fraction: float, text_column: str = "text", *,
                   workers: int | None = None, shard_tokens: int = shards.DEFAULT_SHARD_TOKENS,
                   say: Callable[[str], None] | None = None, on_progress: OnProgress | None = None) -> Path:
    """Prepare `source` into the token cache (resuming an interrupted preparation); the folder."""
    if on_progress is None:
        on_progress = _text_progress(say or (lambda msg: None))
    files, folder = locate(source, tokenizer, val_fraction, text_column, shard_tokens, say, on_progress)
    prepare_folder(folder, source, files, tokenizer, val_fraction, text_column, workers=workers,
                   shard_tokens=shard_tokens, say=say, on_progress=on_progress)
    return folder


def locate(source: str, tokenizer: str, val_fraction: float, text_column: str, shard_tokens: int,
           say: Callable[[str], None] | None = None,
           on_progress: OnProgress | None = None) -> tuple[list[tuple[str, str]], Path]:
    """(the source's files, its cache folder): downloads hf:/url:/builtin files first, since the
    cache key depends on the files themselves."""
    if shard_tokens < 1:
        raise UserError(f"data.shard_tokens = {shard_tokens} must be at least 1")
    files = source_files(source, say or (lambda msg: None), on_progress=on_progress)
    return files, cache_dir() / "tokens" / shards.cache_key(source, tokenizer, val_fraction, text_column, shard_tokens)


def prepare_folder(folder: Path, source: str, files: list[tuple[str, str]], tokenizer: str, val_fraction: float,
                   text_column: str = "text", *, workers: int | None = None,
                   shard_tokens: int = shards.DEFAULT_SHARD_TOKENS, say: Callable[[str], None] | None = None,
                   on_progress: OnProgress | None = None, cancel: threading.Event | None = None,
                   processes: bool = False) -> None:
    """Tokenize `files` into `folder` unless it is complete. `cancel`: set it to stop between
    reports (PrepareCancelled is raised; finished units are kept); `processes`: use worker
    processes even for one worker when there is more than one unit (a run preparing in the
    background keeps the tokenizing off its own thread)."""
    say = say or (lambda msg: None)
    if on_progress is None:
        on_progress = _text_progress(say)
    workers = default_workers() if not workers else workers
    if workers < 1:
        raise UserError(f"workers = {workers} must be at least 1 (0 or unset: cores - 1)")
    if (folder / "meta.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_name(folder.name + ".lock")):  # one preparer per cache folder
        if (folder / "meta.json").exists():  # another process finished it while we waited
            return
        try:
            _prepare_locked(folder, source, files, tokenizer, val_fraction, text_column, workers, shard_tokens,
                            say, on_progress, {"cancel": cancel, "processes": processes})
        except OSError as e:
            if not is_disk_full(e):
                raise
            raise PrepareDiskFull(Path(e.filename or folder)) from None


class PrepareCancelled(Exception):
    """A background preparation was told to stop (its run is stopping); finished units are kept."""


class PrepareDiskFull(UserError):
    """The token cache's disk filled up: the shards finished so far are kept, the one being
    written is a temporary file, deleted at the next start."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"{disk_full_message(path)}: free some space, then prepare again (finished shards are kept)")


class Preparation:
    """prepare_folder in a background thread, while the run trains on the shards ready so far
    (engine/data/stream.py). The thread only coordinates: a pool of worker processes tokenizes.
    `error` holds what ended it early (a UserError sentence for the run to fail with)."""

    def __init__(self, folder: Path, source: str, files: list[tuple[str, str]], tokenizer: str, val_fraction: float,
                 text_column: str, *, workers: int | None, shard_tokens: int, say=None, on_progress=None,
                 on_disk_full: Callable[[Path], None] | None = None):
        """on_disk_full(path): the token cache filled the disk (the run pauses; see engine/train/owner.py)."""
        self.folder = folder
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        self.finished = threading.Event()

        def work() -> None:
            try:
                prepare_folder(folder, source, files, tokenizer, val_fraction, text_column, workers=workers,
                               shard_tokens=shard_tokens, say=say, on_progress=on_progress, cancel=self.cancel,
                               processes=True)
            except PrepareCancelled:
                pass
            except PrepareDiskFull as e:
                self.error = e
                if on_disk_full is not None:
                    on_disk_full(e.path)
            except BaseException as e:  # handed to the run, which fails with it
                self.error = e
            finally:
                self.finished.set()

        self.thread = threading.Thread(target=work, name="prepare", daemon=True)
        self.thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers (units in flight are lost, finished ones kept for the next start)."""
        self.cancel.set()
        self.thread.join(timeout)


def vocabulary(tokenizer: str, chars: list[str] | None) -> tuple[int, np.dtype]:
    """(vocabulary size, the token files' dtype) of a preparation."""
    vocab_size = len(chars or ()) if tokenizer == "char" else tokenizers.GPT2_VOCAB_PADDED
    return vocab_size, np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def check_disk(folder: Path, needed: int) -> None:
    """One sentence when the shards still to write do not fit in the free space of `folder`'s disk."""
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    if needed > free:
        raise UserError(f"preparing needs about {_gb(needed)} of token shards in {folder.parent} and only "
                        f"{_gb(free)} is free there; free some space or set GPT2_COCKPIT_HOME to a larger disk")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------- source files


def source_files(source: str, say: Callable[[str], None],
                 on_progress: OnProgress | None = None) -> list[tuple[str, str]]:
    """[(kind, path)] of a source, kind one of parquet, jsonl, csv, text, pydocs; downloads first
    (an hf: download reports its bytes as the "download" phase)."""
    if source == "builtin:python-docs":
        return [("pydocs", "builtin:python-docs")]
    if source.startswith(("builtin:", "url:")):
        return [("text", str(sources.source_file(source)))]
    if source.startswith("hf:"):
        meter: list[_Meter] = []

        def on_bytes(done: int, total: int) -> None:
            if on_progress is None:
                return
            if not meter:
                meter.append(_Meter("download", total, "bytes", on_progress, done=done))
            meter[0].update(done)

        _, paths = sources.hf_files(source[3:], "train", progress=say, on_bytes=on_bytes)
        if meter:
            meter[0].finish()
    else:
        paths = sources.local_files(source)
    return [(_kind(p), str(p)) for p in paths]


def _kind(path: Path) -> str:
    return {".parquet": "parquet", ".jsonl": "jsonl", ".csv": "csv"}.get(path.suffix.lower(), "text")


# --------------------------------------------------------------------------- the preparation


def _prepare_locked(folder: Path, source: str, files: list[tuple[str, str]], tokenizer: str, val_fraction: float,
                    text_column: str, workers: int, shard_tokens: int, say, on_progress: OnProgress,
                    pool: dict) -> None:
    """The preparation, under the folder's lock: the plan, the vocabulary, the units still to
    tokenize, then meta.json."""
    manifest = _load_or_plan(folder, source, files, tokenizer, val_fraction, text_column, shard_tokens, say,
                             on_progress)
    for tmp in folder.glob(".*.tmp"):  # left by a killed worker
        tmp.unlink(missing_ok=True)
    plan = manifest["plan"]
    ctx = {"files": plan["files"], "text_column": text_column, "val_fraction": val_fraction, "mode": plan["mode"],
           "tokenizer": tokenizer, "folder": str(folder)}
    if tokenizer == "char" and manifest["chars"] is None:
        manifest["chars"] = _collect_chars(plan["units"], ctx, workers, on_progress, pool)
        _write_json(folder / "manifest.json", manifest)
    ctx.update(_tokenizer_context(tokenizer, manifest["chars"]))
    _adopt_unit_records(folder, manifest)
    _tokenize_pending(folder, manifest, ctx, workers, on_progress, pool)
    _write_meta(folder, manifest, source, say, on_progress)


def _load_or_plan(folder: Path, source: str, files: list[tuple[str, str]], tokenizer: str, val_fraction: float,
                  text_column: str, shard_tokens: int, say, on_progress: OnProgress) -> dict:
    """The folder's manifest, to resume; or, when it has none (or an older one), a new plan in an
    emptied folder."""
    manifest = _read_json(folder / "manifest.json")
    if manifest is not None and manifest.get("version") == MANIFEST_VERSION:
        say(f"resuming the preparation of {source}: {len(manifest['done'])} of "
            f"{len(manifest['plan']['units'])} shards already done")
        return manifest
    for stale in folder.iterdir():
        stale.unlink()
    plan = plan_tokenizing(files, text_column, val_fraction, tokenizer, shard_tokens, on_progress)
    manifest = {"version": MANIFEST_VERSION, "source": source, "tokenizer": tokenizer,
                "val_fraction": val_fraction, "text_column": text_column, "shard_tokens": shard_tokens,
                "plan": plan, "chars": None, "done": {}}
    _write_json(folder / "manifest.json", manifest)
    return manifest


def _collect_chars(units: list[dict], ctx: dict, workers: int, on_progress: OnProgress, pool: dict) -> list[str]:
    """The char tokenizer's vocabulary: every character of the units, and the separator's newline."""
    chars: set[str] = {"\n"}  # the document separator is "\n\n"
    meter = _Meter("vocabulary", sum(u["nbytes"] for u in units), "bytes", on_progress)
    for found in _run_pool(_unit_chars, units, ctx, workers, meter, **pool):
        chars.update(found["chars"])
    meter.finish()
    return sorted(chars)


def _tokenizer_context(tokenizer: str, chars: list[str] | None) -> dict:
    """What the workers need of the tokenizer: the char set or tiktoken's Encoding, and the shards' dtype."""
    _, dtype = vocabulary(tokenizer, chars)
    if tokenizer == "char":
        return {"chars": chars, "dtype": dtype.name}
    # one sentence here when tiktoken's file is missing
    return {"encoding": tokenizers.GPT2Tokenizer().enc, "dtype": dtype.name}


def _adopt_unit_records(folder: Path, manifest: dict) -> None:
    """Count as done the units finished after the manifest was last written (a kill in between)."""
    done = manifest["done"]
    for u in manifest["plan"]["units"]:
        record = folder / f"unit-{u['index']:05d}.json"
        if str(u["index"]) not in done and record.exists():
            result = json.loads(record.read_text())
            done[str(u["index"])] = {k: result[k] for k in ("n_train", "n_val", "texts")}


def _tokenize_pending(folder: Path, manifest: dict, ctx: dict, workers: int, on_progress: OnProgress,
                      pool: dict) -> None:
    """Tokenize the units not done yet, the eval shards first, then in order (a run training
    meanwhile needs them in that order), recording each in the manifest as it finishes."""
    plan, done, tokenizer = manifest["plan"], manifest["done"], manifest["tokenizer"]
    units = plan["units"]
    first = set(eval_units(plan, manifest["val_fraction"], manifest["shard_tokens"], tokenizer)["all"])
    pending = sorted((u for u in units if str(u["index"]) not in done),
                     key=lambda u: (u["index"] not in first, u["index"]))
    left = sum(u["nbytes"] for u in pending)
    check_disk(folder, int(left / BYTES_PER_TOKEN[tokenizer] * np.dtype(ctx["dtype"]).itemsize))
    meter = _Meter("tokenize", sum(u["nbytes"] for u in units), "bytes", on_progress,
                   done=sum(u["nbytes"] for u in units if str(u["index"]) in done))
    for result in _run_pool(_tokenize_unit, pending, ctx, workers, meter, **pool):
        done[str(result["index"])] = {k: result[k] for k in ("n_train", "n_val", "texts")}
        manifest["done"] = dict(sorted(done.items(), key=lambda kv: int(kv[0])))
        _write_json(folder / "manifest.json", manifest)
    meter.finish()


def _write_meta(folder: Path, manifest: dict, source: str, say, on_progress: OnProgress) -> None:
    """meta.json, the mark of a complete folder (once every unit is done), and the closing report.
    `source` as this call names it (a resumed manifest's may be spelled otherwise)."""
    plan, done, tokenizer = manifest["plan"], manifest["done"], manifest["tokenizer"]
    if not sum(d["texts"] for d in done.values()):
        raise UserError(f"data.source {source} is empty")
    n_train = sum(d["n_train"] for d in done.values())
    n_val = sum(d["n_val"] for d in done.values())
    shard_files = {s: [[f"{s}-{u['index']:05d}.bin", done[str(u["index"])][f"n_{s}"]] for u in plan["units"]]
                   for s in ("train", "val")}
    vocab_size, dtype = vocabulary(tokenizer, manifest["chars"])
    meta = {"dtype": dtype.name, "vocab_size": vocab_size, "chars": manifest["chars"], "tokenizer": tokenizer,
            "source": source, "val_fraction": manifest["val_fraction"], "text_column": manifest["text_column"],
            "mode": plan["mode"], "n_train": n_train, "n_val": n_val, "n_docs": plan["n_docs"],
            "shards": shard_files, "created": time.time()}
    _write_json(folder / "meta.json", meta)
    on_progress(PrepareProgress("done", n_train + n_val, n_train + n_val, "tokens", 0.0, 0.0))
    say(f"{source}: {n_train:,} train and {n_val:,} val tokens in {len(plan['units'])} shard(s) "
        f"({'whole documents' if plan['mode'] == 'documents' else 'the tail of each document'} held out)")


# --------------------------------------------------------------------------- planning


def plan_tokenizing(files: list[tuple[str, str]], text_column: str, val_fraction: float, tokenizer: str,
              shard_tokens: int, on_progress: OnProgress) -> dict:
    """Cut the files into units of about shard_tokens tokens and number the documents."""
    target = max(1, int(shard_tokens * BYTES_PER_TOKEN[tokenizer]))  # bytes of text per unit
    meter = _Meter("scan", len(files), "files", on_progress)
    units: list[dict] = []
    texts: list[tuple[int, str]] = []  # text files: their units depend on the split mode, made below
    n_docs = 0

    def add(file: int, kind: str, start: int, end: int, doc: int, nbytes: int, **extra) -> None:
        units.append({"index": len(units), "file": file, "kind": kind, "start": start, "end": end, "doc": doc,
                      "nbytes": nbytes, **extra})

    for i, (kind, path) in enumerate(files):
        if kind == "pydocs":
            docs = list(sources.python_docs())
            add(i, kind, 0, len(docs), n_docs, sum(len(d.encode()) for d in docs))
            n_docs += len(docs)
        elif kind == "parquet":
            start, acc, row = 0, 0.0, 0
            for rows, size in _parquet_groups(Path(path), text_column):
                per_row = size / rows if rows else 0.0
                r = 0
                while r < rows:
                    take = rows - r if per_row == 0 else min(rows - r, max(1, int(np.ceil((target - acc) / per_row))))
                    acc += take * per_row
                    r += take
                    if acc >= target:
                        add(i, kind, start, row + r, n_docs + start, int(acc))
                        start, acc = row + r, 0.0
                row += rows
            if row > start:
                add(i, kind, start, row, n_docs + start, int(acc))
            n_docs += row
        elif kind == "jsonl":
            lines_in_file = 0
            for start, end, first_line, lines in _line_ranges(Path(path), target):
                add(i, kind, start, end, n_docs + first_line, end - start, line=first_line)
                lines_in_file = first_line + lines
            n_docs += lines_in_file
        elif kind == "csv":
            rows = sum(1 for _ in sources.csv_documents(Path(path), text_column))
            add(i, kind, 0, rows, n_docs, os.path.getsize(path))
            n_docs += rows
        else:
            with open(path, "rb") as f:
                sources.check_text_bytes(Path(path), f.read(1 << 20))
            texts.append((i, path, n_docs))  # a text file is one document
            n_docs += 1
        meter.update(i + 1)
    meter.finish()
    mode = "documents" if n_docs * val_fraction >= MIN_VAL_DOCS else "tails"
    for i, path, doc in texts:
        size = os.path.getsize(path)
        cut = _utf8_start(Path(path), int(size * (1 - val_fraction))) if mode == "tails" else size
        for lo, hi, tail in ((0, cut, False), (cut, size, True)):
            if hi > lo:
                for k, (start, end) in enumerate(_text_ranges(Path(path), lo, hi, target)):
                    add(i, "text", start, end, doc, end - start, first=k == 0, tail=tail)
    units.sort(key=lambda u: (u["file"], u["start"], u.get("tail", False)))
    for k, u in enumerate(units):
        u["index"] = k
    return {"files": [list(f) for f in files], "mode": mode, "n_docs": n_docs, "units": units,
            "total_bytes": sum(u["nbytes"] for u in units)}


EVAL_TOKENS = 1_000_000  # tokens of each split that evaluation reads while training streams the shards
EVAL_MAX_UNITS = 4  # ...from at most this many units (a tiny val_fraction still starts soon)


def eval_units(plan: dict, val_fraction: float, shard_tokens: int, tokenizer: str) -> dict[str, list[int]]:
    """The units evaluation reads when training streams the shards (engine/data/stream.py), prepared
    before any other: per split, the first units holding that split, until about EVAL_TOKENS of it
    are planned (at most EVAL_MAX_UNITS); "all" is their union."""
    out: dict[str, list[int]] = {}
    for split in ("train", "val"):
        chosen, planned = [], 0.0
        for u in plan["units"]:
            share = split_share(plan["mode"], u, split, val_fraction)
            if share > 0:
                chosen.append(u["index"])
                planned += u["nbytes"] / BYTES_PER_TOKEN[tokenizer] * share
                if planned >= EVAL_TOKENS or len(chosen) >= EVAL_MAX_UNITS:
                    break
        out[split] = chosen
    out["all"] = sorted(set(out["train"]) | set(out["val"]))
    return out


def split_share(mode: str, unit: dict, split: str, val_fraction: float) -> float:
    """The expected share of a unit's text that goes to `split` (as _pieces will split it)."""
    if unit["kind"] == "text":  # a text file is one document: its tail, or all of it, may be val
        val = unit["tail"] if mode == "tails" else _is_val(unit["doc"], val_fraction)
        return float(val == (split == "val"))
    return val_fraction if split == "val" else 1 - val_fraction


def _parquet_groups(path: Path, text_column: str) -> list[tuple[int, int]]:
    """(rows, uncompressed bytes of the text column) of each row group, from the file's metadata."""
    pf = sources.parquet_file(path)
    sources.parquet_column(path, pf, text_column)
    out = []
    for g in range(pf.metadata.num_row_groups):
        rg = pf.metadata.row_group(g)
        size = sum(rg.column(c).total_uncompressed_size for c in range(rg.num_columns)
                   if rg.column(c).path_in_schema == text_column)
        out.append((rg.num_rows, size))
    return out


def _line_ranges(path: Path, target: int) -> list[tuple[int, int, int, int]]:
    """(start, end, index of its first line, lines in it) of line-aligned byte ranges of about target bytes."""
    ranges = []
    start, line, lines_here, pos, last = 0, 0, 0, 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(TEXT_BLOCK):
            offset = 0  # newlines before this index of the block are counted
            while (cut := block.find(b"\n", max(offset, start + target - 1 - pos))) >= 0:
                lines_here += block.count(b"\n", offset, cut + 1)
                ranges.append((start, pos + cut + 1, line, lines_here))
                line, lines_here = line + lines_here, 0
                start = offset = cut + 1
                start += pos
            lines_here += block.count(b"\n", offset)
            pos += len(block)
            last = block[-1:]
    if pos > start:
        ranges.append((start, pos, line, lines_here + (last != b"\n")))
    return ranges


def _text_ranges(path: Path, lo: int, hi: int, target: int) -> list[tuple[int, int]]:
    """Byte ranges of [lo, hi) of about target bytes, each cut after a newline (or at a character)."""
    out, start = [], lo
    with open(path, "rb") as f:
        while hi - start > target:
            f.seek(start + target)
            window = f.read(min(1 << 20, hi - start - target))
            nl = window.find(b"\n")
            cut = start + target + nl + 1 if nl >= 0 else _utf8_start(path, start + target)
            if cut >= hi:
                break
            out.append((start, cut))
            start = cut
    if hi > start or not out:
        out.append((start, hi))
    return [r for r in out if r[1] > r[0]]


def _utf8_start(path: Path, pos: int) -> int:
    """The first position at or after `pos` where a UTF-8 character starts."""
    with open(path, "rb") as f:
        f.seek(pos)
        chunk = f.read(4)
    for k, b in enumerate(chunk):
        if b & 0xC0 != 0x80:
            return pos + k
    return pos + len(chunk)


# --------------------------------------------------------------------------- the workers


_CTX: dict = {}
_QUEUE = None  # progress messages to the main process (None: in-process, call _LOCAL_REPORT)
_LOCAL_REPORT: Callable[[int, int], None] | None = None


def _init_worker(ctx: dict, q) -> None:
    global _CTX, _QUEUE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _CTX, _QUEUE = ctx, q


def _is_val(doc: int, val_fraction: float) -> bool:
    """Document `doc` is held out when a hash of its index falls below val_fraction."""
    h = hashlib.blake2b(doc.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(h, "little") < val_fraction * 2 ** 64


class _Reporter:
    """A worker's progress on one unit, sent at most every REPORT_EVERY seconds."""

    def __init__(self, index: int):
        self.index, self.done, self.last = index, 0, time.monotonic()

    def add(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= REPORT_EVERY:
            self.last = now
            if _QUEUE is not None:
                try:
                    _QUEUE.put_nowait((self.index, self.done))
                except queue_mod.Full:
                    pass
            elif _LOCAL_REPORT is not None:
                _LOCAL_REPORT(self.index, self.done)


def _pieces(ctx: dict, unit: dict, report: _Reporter) -> Iterator[tuple[str, bool, str]]:
    """(split, starts a document, text) of one unit, streamed."""
    f = ctx["val_fraction"]
    kind, path = ctx["files"][unit["file"]]
    if kind == "text":
        val = unit["tail"] if ctx["mode"] == "tails" else _is_val(unit["doc"], f)
        split = "val" if val else "train"
        first = unit["first"]
        for block in _text_blocks(Path(path), unit["start"], unit["end"]):
            report.add(len(block))
            yield split, first, sources.decode_text(Path(path), block)
            first = False
        return
    for doc, text in _unit_documents(ctx, kind, Path(path) if kind != "pydocs" else None, unit, report):
        if not text:
            continue
        if ctx["mode"] == "documents":
            yield ("val" if _is_val(doc, f) else "train"), True, text
        else:
            cut = int(len(text) * (1 - f))
            if cut:
                yield "train", True, text[:cut]
            if cut < len(text):
                yield "val", True, text[cut:]


def _unit_documents(ctx: dict, kind: str, path: Path | None, unit: dict,
                    report: _Reporter) -> Iterator[tuple[int, str]]:
    """(document index, text) of the documents of a parquet/jsonl/csv/pydocs unit."""
    column, doc = ctx["text_column"], unit["doc"]
    if kind == "jsonl":
        yield from _jsonl_documents(path, unit, column, report)
        return
    if kind == "pydocs":
        docs = list(sources.python_docs())[unit["start"]:unit["end"]]
    elif kind == "parquet":
        docs = sources.parquet_documents(path, column, unit["start"], unit["end"])
    else:
        docs = sources.csv_documents(path, column)
    for text in docs:
        report.add(len(text))
        yield doc, text
        doc += 1


def _jsonl_documents(path: Path, unit: dict, column: str, report: _Reporter) -> Iterator[tuple[int, str]]:
    """(document index, text) of the lines of a jsonl unit; a blank line keeps its index, with no text."""
    doc, line_no = unit["doc"], unit["line"]
    for block in _text_blocks(path, unit["start"], unit["end"]):
        report.add(len(block))
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        for line in lines:
            line_no += 1
            yield doc, sources.jsonl_document(path, line, str(line_no), column) or ""
            doc += 1


def _text_blocks(path: Path, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of a file in blocks of about TEXT_BLOCK, each cut after a newline."""
    with open(path, "rb") as f:
        f.seek(start)
        rest = b""
        pos = start
        while pos < end:
            chunk = f.read(min(TEXT_BLOCK, end - pos))
            if not chunk:
                break
            pos += len(chunk)
            buf = rest + chunk
            nl = buf.rfind(b"\n")
            if nl < 0 or pos >= end:
                rest, out = (b"", buf) if pos >= end else (buf, b"")
            else:
                rest, out = buf[nl + 1:], buf[:nl + 1]
            if out:
                yield out
        if rest:
            yield rest


def _encoder(ctx: dict):
    """(encode(text) -> ids, separator ids) of the context's tokenizer."""
    if ctx["tokenizer"] == "char":
        tok = tokenizers.CharTokenizer(ctx["chars"])
        return tok.encode_array, tok.encode_array("\n\n")
    return ctx["encoding"].encode_ordinary, [tokenizers.GPT2_EOT]


def _unit_chars(unit: dict) -> dict:
    chars: set[str] = set()
    for _, _, text in _pieces(_CTX, unit, _Reporter(unit["index"])):
        chars.update(text)
    return {"index": unit["index"], "chars": "".join(sorted(chars))}


def _tokenize_unit(unit: dict) -> dict:
    """Write one unit's train-NNNNN.bin and val-NNNNN.bin (temporary names, renamed when complete)."""
    ctx = _CTX
    folder = Path(ctx["folder"])
    dtype = np.dtype(ctx["dtype"])
    encode, sep = _encoder(ctx)
    names = {s: f"{s}-{unit['index']:05d}.bin" for s in ("train", "val")}
    tmps = {s: folder / f".{n}.{os.getpid()}.tmp" for s, n in names.items()}
    counts = {"train": 0, "val": 0}
    # token buffers: lists of ids (gpt2: one flat list, the cheapest to extend) or arrays (char)
    buffers: dict[str, list] = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}
    flat = ctx["tokenizer"] == "gpt2"
    texts = 0  # pieces with more than whitespace: a source without any is empty
    for p in tmps.values():
        check_space(p)  # GPT2_COCKPIT_FAKE_FULL_DISK: as if the disk were full
    files = {s: open(p, "wb") for s, p in tmps.items()}
    try:
        def flush(split: str) -> None:
            if buffers[split]:
                buf = buffers[split]
                arr = np.array(buf, dtype=dtype) if flat else np.concatenate(buf).astype(dtype)
                files[split].write(arr.tobytes())
                counts[split] += len(arr)
                buffers[split], sizes[split] = [], 0

        for split, starts_doc, text in _pieces(ctx, unit, _Reporter(unit["index"])):
            texts += bool(text.strip())
            ids = encode(text)
            buf = buffers[split]
            if flat:
                if starts_doc:
                    buf.extend(sep)
                buf.extend(ids)
            else:
                if starts_doc:
                    buf.append(sep)
                buf.append(ids)
            sizes[split] += len(ids) + 1
            if sizes[split] >= FLUSH_TOKENS:
                flush(split)
        for s in files:
            flush(s)
            files[s].flush()
            os.fsync(files[s].fileno())
    finally:
        for fh in files.values():
            fh.close()
    for s in ("val", "train"):
        os.replace(tmps[s], folder / names[s])
    if faults.active().prepare_seconds:  # tests: a slow preparation
        time.sleep(faults.active().prepare_seconds)
    result = {"index": unit["index"], "n_train": counts["train"], "n_val": counts["val"], "texts": texts}
    # the unit's own record, written after its shards: a kill before the manifest catches up
    # loses no finished unit (a restart adopts these)
    _write_json(folder / f"unit-{unit['index']:05d}.json", result)
    return result


# --------------------------------------------------------------------------- the pool


def _run_pool(fn, units: list[dict], ctx: dict, workers: int, meter: "_Meter",
              cancel: threading.Event | None = None, processes: bool = False) -> Iterator[dict]:
    """fn(unit) for every unit, in worker processes (in this one for a single worker, unless
    `processes`); results as they come. Raises PrepareCancelled once `cancel` is set."""
    if not units:
        return
    progress = _PoolProgress(units, meter)
    workers = min(workers, len(units))
    if workers <= 1 and not (processes and len(units) > 1):
        yield from _run_here(fn, units, ctx, progress, cancel)
    else:
        yield from _run_in_workers(fn, units, ctx, workers, progress, cancel)


class _PoolProgress:
    """The bytes a pool has read, finished units and the reported part of those in flight, fed to its meter."""

    def __init__(self, units: list[dict], meter: "_Meter"):
        self.sizes = {u["index"]: u["nbytes"] for u in units}
        self.meter = meter
        self.base = meter.done
        self.finished = 0.0
        self.in_flight: dict[int, int] = {}

    def report(self, index: int, done: int) -> None:
        self.in_flight[index] = min(done, self.sizes[index])
        self._update()

    def complete(self, result: dict) -> None:
        self.in_flight.pop(result["index"], None)
        self.finished += self.sizes[result["index"]]
        self._update()

    def _update(self) -> None:
        self.meter.update(self.base + self.finished + sum(self.in_flight.values()))


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise PrepareCancelled()


def _run_here(fn, units: list[dict], ctx: dict, progress: _PoolProgress,
              cancel: threading.Event | None) -> Iterator[dict]:
    """fn(unit) for every unit in this process, as a worker would (the context and the progress
    reports set for the while)."""
    global _LOCAL_REPORT, _CTX, _QUEUE
    saved = (_CTX, _QUEUE, _LOCAL_REPORT)
    _CTX, _QUEUE, _LOCAL_REPORT = ctx, None, progress.report
    try:
        for u in units:
            _check_cancel(cancel)
            result = fn(u)
            progress.complete(result)
            yield result
    finally:
        _CTX, _QUEUE, _LOCAL_REPORT = saved


def _run_in_workers(fn, units: list[dict], ctx: dict, workers: int, progress: _PoolProgress,
                    cancel: threading.Event | None) -> Iterator[dict]:
    """fn(unit) for every unit in a pool of spawned worker processes, results in the order they
    finish; the workers' progress reports are taken in at least every TICK seconds."""
    mp = multiprocessing.get_context("spawn")
    q = mp.Queue(maxsize=1024)
    pool = mp.Pool(max(workers, 1), initializer=_init_worker, initargs=(ctx, q))
    try:
        results = pool.imap_unordered(fn, units, chunksize=1)
        left = len(units)
        while left:
            _check_cancel(cancel)
            result = _next_result(results)
            _take_reports(q, progress)
            if result is not None:
                left -= 1
                progress.complete(result)
                yield result
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _next_result(results) -> dict | None:
    """The next finished unit's result, or None when none finished within TICK seconds."""
    try:
        return results.next(timeout=TICK)
    except multiprocessing.TimeoutError:
        return None


def _take_reports(q, progress: _PoolProgress) -> None:
    """The workers' progress messages waiting in the queue, into `progress`."""
    while True:
        try:
            progress.report(*q.get_nowait())
        except queue_mod.Empty:
            return


# --------------------------------------------------------------------------- progress


class _Meter:
    """Turns a phase's running count into PrepareProgress reports, at most every TICK seconds."""

    def __init__(self, phase: str, total: float | None, unit: str, on_progress: OnProgress, done: float = 0.0):
        self.phase, self.total, self.unit, self.on_progress = phase, total, unit, on_progress
        self.done = self.start_done = done
        self.start = self.last = time.monotonic()
        self._emit()

    def update(self, done: float) -> None:
        self.done = done
        if time.monotonic() - self.last >= TICK:
            self._emit()

    def finish(self) -> None:
        if self.total is not None:
            self.done = self.total
        self._emit()

    def _emit(self) -> None:
        now = self.last = time.monotonic()
        elapsed = now - self.start
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if self.total is not None and rate > 0 else None
        self.on_progress(PrepareProgress(self.phase, self.done, self.total, self.unit, rate, eta))


def format_progress(p: PrepareProgress) -> str:
    """One line: 'tokenize  42% 420.0/1000.0 MB  12.3 MB/s  eta 47s'."""
    if p.phase == "done":
        return f"prepared   {p.done:,.0f} {p.unit}"
    if p.unit == "bytes":
        def amount(n: float) -> str:
            return f"{n / 1e6:,.1f}"
        unit, rate = "MB", f"{p.rate / 1e6:,.1f} MB/s"
    else:
        def amount(n: float) -> str:
            return f"{n:,.0f}"
        unit, rate = p.unit, f"{p.rate:,.1f} {p.unit}/s"
    if p.total:
        head = f"{p.phase:<10} {100 * p.done / p.total:3.0f}% {amount(p.done)}/{amount(p.total)} {unit}"
    else:
        head = f"{p.phase:<10} {amount(p.done)} {unit}"
    eta = f"  eta {_duration(p.eta)}" if p.eta is not None and p.done < (p.total or 0) else ""
    return f"{head}  {rate}{eta}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _text_progress(say: Callable[[str], None], every: float = 10.0) -> OnProgress:
    """Progress as a line through `say` every `every` seconds and at each phase's end (stdout.log)."""
    last = {"t": 0.0}

    def on_progress(p: PrepareProgress) -> None:
        now = time.monotonic()
        if p.phase != "done" and (now - last["t"] >= every or (p.total is not None and p.done >= p.total)):
            last["t"] = now
            say(format_progress(p))

    return on_progress


# --------------------------------------------------------------------------- files


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


class _locked:
    """An exclusive lock on a file (released by the kernel if the holder dies)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
