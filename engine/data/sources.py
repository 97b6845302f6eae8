"""The corpora a run reads, as documents of text.

A source (builtin:python-docs, builtin:tiny-shakespeare, a text file, a .csv/.jsonl with a text
column, a .parquet file, a folder of any of these, hf:NAME[:CONFIG] via huggingface_hub) is found,
downloaded once where it must be, identified (source_identity: what the token cache depends on) and
read as documents. engine/data/prepare.py tokenizes them into shards.

Never imports torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from ..errors import NetworkUnavailable, UserError
from ..paths import cache_dir

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ".py", ".tex", ".html", ".csv", ".jsonl", ".json", ".parquet"}
PARQUET_BATCH_ROWS = 1024  # rows per record batch read from a parquet file: memory stays bounded
Progress = Callable[[str], None]


def check_text_bytes(path: Path, raw: bytes) -> None:
    if b"\x00" in raw[:1 << 20]:
        raise UserError(f"data.source {path} is not a text file (it contains NUL bytes)")


def decode_text(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"data.source {path} is not UTF-8 text") from None


def _check_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"data.source {path} cannot be read ({e.strerror})") from None
    check_text_bytes(path, raw)
    return decode_text(path, raw)


def jsonl_document(path: Path, line: bytes, where: str, text_column: str) -> str | None:
    """The text of one .jsonl line (None for a blank line); `where` names the line in messages."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except ValueError:
        raise UserError(f"{path}:{where} is not a JSON object") from None
    if not isinstance(row, dict) or text_column not in row:
        raise UserError(f"{path}:{where} has no '{text_column}' field (set data.text_column)")
    return str(row[text_column])


def csv_documents(path: Path, text_column: str) -> Iterator[str]:
    """The text column of a .csv file, row by row (streamed)."""
    try:
        f = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise UserError(f"data.source {path} cannot be read ({e.strerror})") from None
    with f:
        try:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or text_column not in reader.fieldnames:
                raise UserError(f"{path} has no '{text_column}' column (columns: {reader.fieldnames}; "
                                f"set data.text_column)")
            for row in reader:
                yield row[text_column] or ""
        except UnicodeDecodeError:
            raise UserError(f"data.source {path} is not UTF-8 text") from None


def parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError...: one sentence
        raise UserError(f"data.source {path} is not a readable parquet file ({str(e).splitlines()[0]})") from None


def parquet_column(path: Path, pf, text_column: str) -> None:
    names = pf.schema_arrow.names
    if text_column not in names:
        raise UserError(f"{path} has no '{text_column}' column (columns: {names}; set data.text_column)")


def parquet_documents(path: Path, text_column: str, row_start: int = 0, row_end: int | None = None,
                      batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[str]:
    """Rows [row_start, row_end) of a parquet file's text column, read in record batches of that column only."""
    pf = parquet_file(path)
    parquet_column(path, pf, text_column)
    row_end = pf.metadata.num_rows if row_end is None else row_end
    groups, first, row = [], None, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row + n > row_start and row < row_end:
            groups.append(g)
            first = row if first is None else first
        row += n
    if not groups:
        return
    row = first
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=[text_column]):
        lo, hi = max(row_start - row, 0), min(row_end - row, batch.num_rows)
        if lo < hi:
            for text in batch.column(0).slice(lo, hi - lo).to_pylist():
                yield text or ""
        row += batch.num_rows
        if row >= row_end:
            return


def _file_documents(path: Path, text_column: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        try:
            f = open(path, "rb")
        except OSError as e:
            raise UserError(f"data.source {path} cannot be read ({e.strerror})") from None
        with f:
            for n, line in enumerate(f, 1):
                doc = jsonl_document(path, line, str(n), text_column)
                if doc is not None:
                    yield doc
    elif suffix == ".csv":
        yield from csv_documents(path, text_column)
    elif suffix == ".parquet":
        yield from parquet_documents(path, text_column)
    else:
        yield _check_text(path)


def python_docs() -> Iterator[str]:
    """CPython's bundled documentation topics: present in every Python install, offline."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def download(url: str, dest: Path, what: str) -> Path:
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


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False

DATA_SUFFIXES = (".parquet", ".jsonl", ".csv", ".txt")
SPLIT_WORDS = {"train": {"train", "training"}, "validation": {"validation", "valid", "val", "dev"},
               "test": {"test", "testing", "eval"}}


def _hf_patterns(root_readme: str | None, config: str) -> tuple[list[str], dict[str, list[str]]]:
    """(allow_patterns, {split: patterns}) from the dataset card's `configs` (as datasets reads it)."""
    every = [f"*{s}" for s in DATA_SUFFIXES] + [f"**/*{s}" for s in DATA_SUFFIXES]
    configs = []
    if root_readme and root_readme.startswith("---"):
        try:
            import yaml

            front = yaml.safe_load(root_readme.split("---", 2)[1]) or {}
            configs = front.get("configs") or []
        except Exception:
            configs = []
    for c in configs:
        if not isinstance(c, dict):
            continue
        if config and c.get("config_name") != config:
            continue
        if not config and len(configs) > 1 and not (c.get("default") or c.get("config_name") == "default"):
            continue
        files = c.get("data_files") or []
        if isinstance(files, str):
            files = [{"split": "train", "path": files}]
        splits: dict[str, list[str]] = {}
        for entry in files if isinstance(files, list) else []:
            if isinstance(entry, dict):
                paths = entry.get("path")
                paths = [paths] if isinstance(paths, str) else list(paths or [])
                splits.setdefault(str(entry.get("split", "train")), []).extend(paths)
        if splits:
            return [p for ps in splits.values() for p in ps], splits
    if config:
        return [f"{config}/**", f"*/{config}/**", f"**/{config}/**"], {}
    return every, {}


def _split_of(rel: str, splits: dict[str, list[str]]) -> str | None:
    import fnmatch

    if splits:
        for split, patterns in splits.items():
            if any(fnmatch.fnmatch(rel, p) for p in patterns):
                return split
        return None
    words = {w for w in "".join(c if c.isalnum() else " " for c in rel.lower()).split()}
    for split, names in SPLIT_WORDS.items():
        if words & names:
            return split
    return ""  # names no split


def hf_files(spec: str, split: str = "train", download: bool = True, progress: Progress | None = None,
             on_bytes: Callable[[int, int], None] | None = None) -> tuple[Path, list[Path]]:
    """(root, data files of `split`) of hf:NAME[:CONFIG], downloaded into the Hugging Face cache first.

    Files that name no split count as train. Offline (or download=False) only the cache is used,
    and a dataset missing from it is one sentence."""
    name, _, config = spec.partition(":")
    local = Path(name).expanduser()
    readme = None
    if local.is_dir():
        root = local
        if (root / "README.md").is_file():
            readme = (root / "README.md").read_text(errors="replace")
    else:
        root = _hf_snapshot(spec, name, config, download, progress, on_bytes)
        if (root / "README.md").is_file():
            readme = (root / "README.md").read_text(errors="replace")
    _, splits = _hf_patterns(readme, config)
    found: dict[str | None, list[Path]] = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES):
        rel = str(f.relative_to(root))
        found.setdefault(_split_of(rel, splits), []).append(f)
    if split == "train":
        files = found.get("train", []) + found.get("", [])
    else:
        files = found.get(split, [])
    if not files and split == "train":
        raise UserError(f"data.source hf:{spec} has no data files ({', '.join(DATA_SUFFIXES)}) in {root}")
    return root, sorted(files)


def _hf_snapshot(spec: str, name: str, config: str, download: bool, progress: Progress | None,
                 on_bytes: Callable[[int, int], None] | None = None) -> Path:
    """The local snapshot folder of dataset `name` with the data files of CONFIG, downloaded first
    when the Hub can be reached. on_bytes(done, total) follows the download."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        raise UserError("hf: sources need the huggingface_hub package (pip install huggingface_hub)") from None
    online = download and hub_reachable()
    try:
        readme = None
        try:
            readme = Path(hf_hub_download(name, "README.md", repo_type="dataset",
                                          local_files_only=not online)).read_text(errors="replace")
        except Exception:
            pass  # no card, or not cached: every data file of the repository (or CONFIG's folder)
        allow, _ = _hf_patterns(readme, config)
        if online:
            if progress:
                progress(f"downloading hf:{spec} into the Hugging Face cache (resumable)")
            files = _hub_files(name, allow + ["README.md"])
            if files is not None:  # file by file: byte progress and a disk check first
                return _hf_download(spec, name, files, on_bytes)
        return Path(snapshot_download(name, repo_type="dataset", allow_patterns=allow + ["README.md"],
                                      local_files_only=not online))
    except UserError:
        raise
    except Exception as e:  # huggingface_hub raises many types; the user needs one sentence
        if not online:
            raise NetworkUnavailable(
                f"data.source hf:{spec} is not in the local Hugging Face cache and the Hugging Face Hub cannot "
                f"be reached; connect once to download it, or use a local file or folder"
            ) from None
        raise UserError(f"data.source hf:{spec} could not be downloaded: {str(e).strip().splitlines()[0]}") from None


def _hub_files(name: str, allow: list[str]) -> list[tuple[str, int]] | None:
    """[(path in the repository, bytes)] of the dataset's files matching `allow`; None when the
    listing fails (then snapshot_download fetches them without byte progress)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import filter_repo_objects

        entries = [e for e in HfApi().list_repo_tree(name, repo_type="dataset", recursive=True)
                   if getattr(e, "size", None) is not None]
        chosen = filter_repo_objects(entries, allow_patterns=allow, key=lambda e: e.path)
        return sorted((e.path, int(e.size)) for e in chosen)
    except Exception:
        return None


def _hf_download(spec: str, name: str, files: list[tuple[str, int]],
                 on_bytes: Callable[[int, int], None] | None) -> Path:
    """Download `files` one by one into the Hugging Face cache (each resumable), after checking
    that the ones not cached yet fit on its disk; the snapshot folder."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    def cached(path: str) -> bool:
        return isinstance(try_to_load_from_cache(name, path, repo_type="dataset"), str)

    was_cached = {path: cached(path) for path, _ in files}
    total = sum(size for _, size in files)
    missing = sum(size for path, size in files if not was_cached[path])
    cache = Path(constants.HF_HUB_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if missing > free:
        raise UserError(f"downloading hf:{spec} needs {_size(missing)} in {cache} and only {_size(free)} is free "
                        f"there; free some space or set HF_HOME to a larger disk")
    done = total - missing
    root = None
    for path, size in files:
        before = done
        meter = _byte_counter(lambda n, before=before: on_bytes(min(before + n, total), total) if on_bytes else None)
        local = Path(hf_hub_download(name, path, repo_type="dataset", tqdm_class=meter))
        root = local.parents[len(Path(path).parts) - 1]
        if not was_cached[path]:
            done = before + size
        if on_bytes:
            on_bytes(done, total)
    if on_bytes:
        on_bytes(total, total)
    if root is None:
        raise UserError(f"data.source hf:{spec} has no data files to download")
    return root


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _byte_counter(report: Callable[[int], None]):
    """A tqdm class for hf_hub_download that reports the bytes of one file so far and draws nothing."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Bytes(hf_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.bytes = 0

        def update(self, n=1):
            self.bytes += n or 0
            report(self.bytes)
            return super().update(n)

    return Bytes


def hf_dataset_documents(spec: str, text_column: str, split: str = "train") -> Iterator[str]:
    """The finetune engine's rows of an hf: source's split: through `datasets` (streamed from the Hub,
    or from a local folder), or, offline, from the dataset's files in the Hugging Face cache. No
    process-wide offline switch: an offline box never calls `datasets` for a hub name."""
    name, _, config = spec.partition(":")
    if not Path(name).expanduser().is_dir() and not hub_reachable():
        yield from hf_documents(spec, text_column, split, download=False)
        return
    try:
        import datasets
    except ImportError:
        raise UserError("hf: sources need the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=not Path(name).expanduser().is_dir())
    except Exception as e:  # datasets raises many types; the user needs one sentence
        raise UserError(f"data.source hf:{spec} could not be loaded: {str(e).splitlines()[0]}") from None
    for row in ds:
        if text_column not in row:
            raise UserError(f"hf:{spec} has no '{text_column}' column (columns: {list(row)}; set data.text_column)")
        yield row[text_column]


def hf_documents(spec: str, text_column: str, split: str = "train", download: bool = True) -> Iterator[str]:
    """The documents of an hf: source's split, read from its local files (downloaded first, unless
    `download` is False: then from what the Hugging Face cache already holds)."""
    _, files = hf_files(spec, split, download=download)
    for f in files:
        yield from _file_documents(f, text_column)


def _files_identity(root: Path, files: list[Path]) -> str:
    return f"{root}|" + "|".join(f"{f.relative_to(root)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def source_identity(source: str) -> str:
    """What the cache key depends on: the name for builtins, path+size+mtime of every file for local
    files, folders and hf: sources (their files in the Hugging Face cache, when they are there)."""
    if source.startswith("builtin:python-docs"):
        return f"{source}@{sys.version_info.major}.{sys.version_info.minor}"
    if source.startswith(("builtin:", "url:")):
        return source
    if source.startswith("hf:"):
        try:
            root, files = hf_files(source[3:], download=False)
        except UserError:
            return source  # not downloaded yet: a key no prepared cache has
        return f"{source}|{_files_identity(root, files)}"
    p = Path(source).expanduser().resolve()
    if p.is_dir():
        return _files_identity(p, sorted(f for f in p.rglob("*") if f.is_file()))
    if p.is_file():
        st = p.stat()
        return f"{p}:{st.st_size}:{st.st_mtime_ns}"
    raise UserError(f"data.source {source} does not exist (a text file, a folder, builtin:python-docs, "
                    f"builtin:tiny-shakespeare or hf:NAME[:CONFIG])")


def local_files(source: str) -> list[Path]:
    """The files a local source (a file or folder) is read from, in order."""
    p = Path(source).expanduser()
    source_identity(source)  # raises the 'does not exist' sentence
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise UserError(f"data.source {source} has no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
        return files
    return [p]


def read_documents(source: str, text_column: str = "text") -> Iterator[str]:
    """The documents of a source, as strings, streamed."""
    if source == "builtin:python-docs":
        yield from python_docs()
    elif source.startswith(("builtin:", "url:")):
        yield _check_text(source_file(source))
    elif source.startswith("hf:"):
        yield from hf_documents(source[3:], text_column)
    else:
        for f in local_files(source):
            yield from _file_documents(f, text_column)


def source_file(source: str) -> Path:
    """The local text file of a builtin: (other than python-docs) or url: source, downloaded once."""
    if source == "builtin:tiny-shakespeare":
        return download(TINY_SHAKESPEARE_URL, cache_dir() / "corpora" / "tiny-shakespeare.txt", "tiny Shakespeare")
    if source.startswith("url:"):
        url = source[4:]
        name = hashlib.sha1(url.encode()).hexdigest()[:12] + ".txt"
        return download(url, cache_dir() / "corpora" / name, url)
    raise UserError(f"unknown builtin corpus '{source}' (builtin:python-docs or builtin:tiny-shakespeare)")
