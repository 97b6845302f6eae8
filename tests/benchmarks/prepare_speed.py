"""Tokens/s and peak memory of our preparation against a build-nanogpt fineweb.py-style baseline.

    python tests/benchmarks/prepare_speed.py [--mb 1000] [--dir /tmp/prep-bench] [--rounds 1]

Generates about --mb MB of English-like text once (a folder of parquet files and one .jsonl;
kept in --dir for later runs), trains a small byte-level BPE on a sample with `tokenizers` and
wraps it in a tiktoken Encoding with GPT-2's split pattern (tests/test_prepare.py), since GPT-2's
own file cannot be downloaded here. Then, alternately, for 1 and 2 workers:

- ours: engine.data.prepare.prepare_tokens on the parquet folder (fresh cache each time);
- baseline: fineweb.py's loop (multiprocessing.Pool + encode_ordinary + imap(chunksize=16), the
  main process reading documents and filling uint16 shards of the same size), documents read
  from the same parquet files with pyarrow;

each in its own process, with the peak resident memory of its process tree sampled every 0.5 s.
Finally ours once more on the .jsonl with the most workers. Prints one line per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARD_TOKENS = 100_000_000 // 8  # 12.5M tokens per shard: several shards per run at 1 GB


def generate(folder: Path, mb: int) -> None:
    """about `mb` MB of documents of 200-900 words, as 8 parquet files and one jsonl file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (folder / "done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "parquet").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(1, 10))) for _ in range(20000)]
    vocab = np.array(vocab + [",", ".", "2024", "naïve", "café", "\n"])
    p = 1 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    target = mb * 1_000_000
    per_file = target // 8
    written = 0
    with open(folder / "corpus.jsonl", "w") as jf:
        for k in range(8):
            docs, size = [], 0
            while size < per_file:
                n = int(rng.integers(200, 900))
                doc = " ".join(vocab[rng.choice(len(vocab), size=n, p=p)]).capitalize()
                docs.append(doc)
                size += len(doc)
            for d in docs:
                jf.write(json.dumps({"text": d}) + "\n")
            pq.write_table(pa.table({"text": docs}), folder / "parquet" / f"part-{k:02d}.parquet", row_group_size=2000)
            written += size
            print(f"generated {written / 1e6:,.0f} MB", flush=True)
    (folder / "done").write_text("ok")


def corpus_and_encoding(root: Path, mb: int) -> tuple[Path, Path]:
    """(the generated corpus folder, a pickled tiktoken Encoding trained on it), made once under root."""
    corpus = root / f"corpus-{mb}mb"
    generate(corpus, mb)
    enc_path = root / "encoding.pkl"
    if not enc_path.exists():
        sys.path.insert(0, str(HERE.parent))
        from test_prepare import local_gpt2_encoding

        sample = [json.loads(line)["text"] for _, line in zip(range(2000), open(corpus / "corpus.jsonl"))]
        enc_path.write_bytes(pickle.dumps(local_gpt2_encoding(vocab_size=8000, docs=sample)))
    return corpus, enc_path


OURS = """
import json, pickle, sys, time
sys.path.insert(0, {tests!r})
from gpt2_cockpit.engine.data import tokenizers
from gpt2_cockpit.engine.data import prepare
enc = pickle.loads(open({enc!r}, 'rb').read())
tokenizers.load_gpt2_encoding = lambda: enc
if __name__ == "__main__":
    t = time.time()
    folder = prepare.prepare_tokens({source!r}, "gpt2", 0.0005, workers={workers}, shard_tokens={shard})
    meta = json.loads((folder / "meta.json").read_text())
    print(json.dumps({{"tokens": meta["n_train"] + meta["n_val"], "seconds": time.time() - t}}))
"""

BASELINE = """
# build-nanogpt's fineweb.py, documents read from parquet files with pyarrow instead of `datasets`
import json, multiprocessing as mp, os, pickle, sys, time
import numpy as np
import pyarrow.parquet as pq
enc = pickle.loads(open({enc!r}, 'rb').read())
eot = enc._special_tokens['<|endoftext|>']
out_dir, shard_size, nprocs = {out!r}, {shard}, {workers}

def tokenize(doc):
    tokens = [eot]
    tokens.extend(enc.encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)

def write_datafile(filename, tokens_np):
    np.save(filename, tokens_np)

def documents():
    for f in sorted(os.listdir({source!r})):
        for batch in pq.ParquetFile(os.path.join({source!r}, f)).iter_batches(batch_size=1024, columns=["text"]):
            for text in batch.column(0).to_pylist():
                yield {{"text": text}}

if __name__ == "__main__":
    t = time.time()
    total = 0
    with mp.get_context("fork").Pool(nprocs) as pool:
        shard_index = 0
        all_tokens_np = np.empty((shard_size,), dtype=np.uint16)
        token_count = 0
        for tokens in pool.imap(tokenize, documents(), chunksize=16):
            total += len(tokens)
            if token_count + len(tokens) < shard_size:
                all_tokens_np[token_count:token_count+len(tokens)] = tokens
                token_count += len(tokens)
            else:
                split = "val" if shard_index == 0 else "train"
                filename = os.path.join(out_dir, f"edufineweb_{{split}}_{{shard_index:06d}}")
                remainder = shard_size - token_count
                all_tokens_np[token_count:token_count+remainder] = tokens[:remainder]
                write_datafile(filename, all_tokens_np)
                shard_index += 1
                all_tokens_np[0:len(tokens)-remainder] = tokens[remainder:]
                token_count = len(tokens)-remainder
        if token_count != 0:
            split = "val" if shard_index == 0 else "train"
            filename = os.path.join(out_dir, f"edufineweb_{{split}}_{{shard_index:06d}}")
            write_datafile(filename, all_tokens_np[:token_count])
    print(json.dumps({{"tokens": total, "seconds": time.time() - t}}))
"""


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(entry))
            rss[int(entry)] = int(parts[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def timed(code: str, env: dict) -> dict:
    script = Path(tempfile.mkstemp(suffix=".py")[1])
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.5)  # scanning /proc costs CPU the runs being measured would miss
    out = proc.stdout.read().strip().splitlines()
    if proc.returncode:
        raise SystemExit(f"benchmark run failed ({proc.returncode})")
    result = json.loads(out[-1])
    result["peak_rss"] = peak
    result["tokens_per_sec"] = result["tokens"] / result["seconds"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=1000, help="size of the generated corpus (default 1000)")
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "gpt2-cockpit-prepare-bench"))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    args = p.parse_args()
    root = Path(args.dir)
    corpus, enc_path = corpus_and_encoding(root, args.mb)
    counts = [int(w) for w in args.workers.split(",")]
    results: dict[tuple[str, int], list[dict]] = {}
    import shutil

    def run(kind: str, workers: int, source: Path) -> None:
        home = Path(tempfile.mkdtemp(dir=root, prefix=f"{kind}-"))
        env = dict(os.environ, GPT2_COCKPIT_HOME=str(home))
        fmt = dict(tests=str(HERE.parent), enc=str(enc_path), source=str(source), workers=workers,
                   shard=SHARD_TOKENS, out=str(home))
        code = (OURS if kind.startswith("ours") else BASELINE).format(**fmt)
        r = timed(code, env)
        shutil.rmtree(home, ignore_errors=True)
        results.setdefault((kind, workers), []).append(r)
        print(f"{kind:<12} workers={workers}  {r['tokens']:>13,} tokens  {r['seconds']:7.1f} s  "
              f"{r['tokens_per_sec'] / 1e6:6.2f} M tok/s  peak RSS {r['peak_rss'] / 2**20:7.0f} MiB", flush=True)

    for _ in range(args.rounds):
        for w in counts:
            run("ours", w, corpus / "parquet")
            run("baseline", w, corpus / "parquet")
    run("ours-jsonl", max(counts), corpus / "corpus.jsonl")

    def best(kind: str, w: int) -> dict:
        return max(results[(kind, w)], key=lambda r: r["tokens_per_sec"])

    print("\nsummary (best of rounds)")
    for w in counts:
        o, b = best("ours", w), best("baseline", w)
        print(f"  {w} worker(s): ours {o['tokens_per_sec'] / 1e6:.2f} M tok/s, baseline "
              f"{b['tokens_per_sec'] / 1e6:.2f} M tok/s ({o['tokens_per_sec'] / b['tokens_per_sec']:.2f}x); "
              f"peak RSS ours {o['peak_rss'] / 2**20:.0f} MiB, baseline {b['peak_rss'] / 2**20:.0f} MiB")
    if len(counts) > 1:
        lo, hi = counts[0], counts[-1]
        print(f"  scaling {lo} -> {hi} workers: ours {best('ours', hi)['tokens_per_sec'] / best('ours', lo)['tokens_per_sec']:.2f}x, "
              f"baseline {best('baseline', hi)['tokens_per_sec'] / best('baseline', lo)['tokens_per_sec']:.2f}x")
    j = results[("ours-jsonl", max(counts))][0]
    print(f"  jsonl, {max(counts)} workers: ours {j['tokens_per_sec'] / 1e6:.2f} M tok/s, peak RSS {j['peak_rss'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
