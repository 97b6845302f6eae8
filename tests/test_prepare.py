"""Sharded, parallel, resumable preparation (engine/data/prepare.py) on small generated corpora.

GPT-2's tiktoken file cannot be downloaded here: `local_gpt2_encoding` trains a small byte-level
BPE with `tokenizers` on generated text and wraps its ranks in a tiktoken Encoding with GPT-2's
split pattern and <|endoftext|> id, which the tests put where tokenizers.load_gpt2_encoding is.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2_cockpit.engine.data import prepare, shards, sources, tokenizers
from gpt2_cockpit.engine.data import prepare as prep
from gpt2_cockpit.engine.errors import NetworkUnavailable, UserError

WORDS = ("the of and to in is was for on that with as by at from it an be are this which or his had not but "
         "river stone garden engine market window winter summer letter castle forest number simple bright "
         "quickly slowly under over between before after during maybe always never often").split()


def generated_documents(n: int, seed: int = 0, words: int = 60) -> list[str]:
    """n documents of Zipf-ish English-like text with digits, punctuation and a few non-ASCII letters."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) for k in range(len(WORDS))]
    docs = []
    for i in range(n):
        length = rng.randint(words // 3, words * 2)
        body = " ".join(rng.choices(WORDS, weights, k=length))
        docs.append(f"Doc {i}: {body.capitalize()}. Année {rng.randint(1900, 2030)}, naïve café!\n{body[:40]}.")
    return docs


def local_gpt2_encoding(vocab_size: int = 600, docs: list[str] | None = None):
    """A tiktoken Encoding with GPT-2's split pattern from a byte-level BPE trained here."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs or generated_documents(300, seed=99), trainer)
    # byte-level BPE writes bytes as printable characters (GPT-2's bytes_to_unicode): map them back
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    byte_of = {chr(c): b for b, c in zip(printable, chars)}
    ranks = {bytes(byte_of[c] for c in token): rank for token, rank in tok.get_vocab().items()}
    return tiktoken.Encoding("local-gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": tokenizers.GPT2_EOT})


@pytest.fixture(scope="session")
def encoding():
    return local_gpt2_encoding()


@pytest.fixture
def bpe(monkeypatch, encoding):
    monkeypatch.setattr(tokenizers, "load_gpt2_encoding", lambda: encoding)
    return encoding


def write_parquet(path: Path, docs: list[str], row_group: int = 100) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path, row_group_size=row_group)


def write_jsonl(path: Path, docs: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Two parquet files, a jsonl file (with a blank line) and a text file: about 300 KB."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_parquet(folder / "a.parquet", generated_documents(600, seed=1))
    write_parquet(folder / "b.parquet", generated_documents(400, seed=2), row_group=37)
    docs = generated_documents(300, seed=3)
    write_jsonl(folder / "c.jsonl", docs[:150])
    with open(folder / "c.jsonl", "a") as f:
        f.write("\n" + "".join(json.dumps({"text": d}) + "\n" for d in docs[150:]))
    (folder / "d.txt").write_text("\n".join(generated_documents(50, seed=4)))
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "meta.json"}


def prepare_in(home: Path, monkeypatch, source, tokenizer, **kw) -> Path:
    monkeypatch.setenv("GPT2_COCKPIT_HOME", str(home))
    return prep.prepare_tokens(str(source), tokenizer, 0.1, **kw)


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_one_and_two_workers_write_identical_shards_and_manifest(tmp_path, monkeypatch, bpe, mixed_folder,
                                                                 tokenizer):
    reports = []
    one = prepare_in(tmp_path / "h1", monkeypatch, mixed_folder, tokenizer, workers=1, shard_tokens=8_000)
    two = prepare_in(tmp_path / "h2", monkeypatch, mixed_folder, tokenizer, workers=2, shard_tokens=8_000,
                     on_progress=reports.append)
    a, b = files_of(one), files_of(two)
    assert a == b
    manifest = json.loads(a["manifest.json"])
    units = manifest["plan"]["units"]
    assert len(units) >= 8 and {u["kind"] for u in units} == {"parquet", "jsonl", "text"}
    assert sum(1 for u in units if u["kind"] == "parquet" and u["file"] == 0) >= 2  # a file in several shards
    meta = json.loads((two / "meta.json").read_text())
    assert meta["mode"] == "documents" and 0.04 < meta["n_val"] / (meta["n_train"] + meta["n_val"]) < 0.2
    # progress: every phase ends at its total, with a rate
    tokenize = [r for r in reports if r.phase == "tokenize"]
    assert tokenize[-1].done == tokenize[-1].total > 0 and tokenize[-1].unit == "bytes"
    assert tokenize[-1].rate > 0 and set(tokenize[-1].fields()) == {"phase", "done", "total", "unit", "rate", "eta"}
    assert reports[-1].phase == "done"


def test_gpt2_shards_hold_whole_documents_with_eot(tmp_path, monkeypatch, bpe):
    docs = generated_documents(400, seed=5)
    src = tmp_path / "docs.parquet"
    write_parquet(src, docs)
    d = prepare.prepare_and_open(str(src), "gpt2", 0.1, 16, workers=2, shard_tokens=5_000)
    assert len(d.meta["shards"]["train"]) >= 3 and d.train.dtype == np.uint16
    val_docs = [t for t in bpe.decode(d.val.tolist()).split("<|endoftext|>") if t]
    train_docs = [t for t in bpe.decode(d.train.tolist()).split("<|endoftext|>") if t]
    assert sorted(val_docs + train_docs) == sorted(docs)  # whole documents, each once, none split
    assert 20 <= len(val_docs) <= 70
    # the split is by position: a document's fate does not depend on the others around it
    assert all(prep._is_val(i, 0.1) == (docs[i] in set(val_docs)) for i in range(len(docs)))


def test_sigkill_mid_way_then_restart_is_byte_identical(tmp_path, encoding):
    """Kill -9 the whole preparation (main and workers) after some shards, prepare again: what
    was done stays, at most one shard per worker is redone, and the result equals an uninterrupted one."""
    src = tmp_path / "big.jsonl"
    write_jsonl(src, generated_documents(6000, seed=6, words=80))  # about 3.5 MB
    (tmp_path / "enc.pkl").write_bytes(pickle.dumps(encoding))
    script = tmp_path / "run_prepare.py"
    script.write_text(f"""
import pickle, sys
from gpt2_cockpit.engine.data import prepare, tokenizers
enc = pickle.loads(open({str(tmp_path / 'enc.pkl')!r}, 'rb').read())
tokenizers.load_gpt2_encoding = lambda: enc
if __name__ == "__main__":
    prepare.prepare_tokens({str(src)!r}, "gpt2", 0.1, workers=2, shard_tokens=int(sys.argv[1]))
""")
    env = dict(os.environ, GPT2_COCKPIT_HOME=str(tmp_path / "killed"))
    proc = subprocess.Popen([sys.executable, str(script), "4000"], env=env, start_new_session=True)
    folder = None
    deadline = time.monotonic() + 120
    done_at_kill: dict = {}
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed" / "cache" / "tokens").glob("*/manifest.json"))
        if found:
            folder = found[0].parent
            try:
                done_at_kill = json.loads(found[0].read_text())["done"]
            except ValueError:
                done_at_kill = {}
            if len(done_at_kill) >= 3:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the preparation finished before it could be killed"
    time.sleep(0.5)  # let orphaned workers, if any, die
    manifest = json.loads((folder / "manifest.json").read_text())
    total = len(manifest["plan"]["units"])
    done = manifest["done"]
    assert not (folder / "meta.json").exists() and 3 <= len(done) < total
    finished = {int(p.name[5:10]) for p in folder.glob("unit-*.json")}  # each written after its shards
    assert {int(n) for n in done} <= finished
    in_flight = {p.name.split(".")[1].split("-")[1] for p in folder.glob(".*.tmp")
                 if p.name.startswith((".train-", ".val-"))}  # shards being written when killed
    assert len(in_flight) <= 2  # the work lost: at most the one unit each worker was on
    mtimes = {n: (folder / f"train-{n:05d}.bin").stat().st_mtime_ns for n in finished}
    # restart: resumes at the missing shards only
    subprocess.run([sys.executable, str(script), "4000"], env=env, check=True, timeout=300)
    assert all((folder / f"train-{n:05d}.bin").stat().st_mtime_ns == t for n, t in mtimes.items())  # not redone
    # an uninterrupted preparation, elsewhere, is byte-identical
    env2 = dict(env, GPT2_COCKPIT_HOME=str(tmp_path / "whole"))
    subprocess.run([sys.executable, str(script), "4000"], env=env2, check=True, timeout=300)
    whole = next((tmp_path / "whole" / "cache" / "tokens").glob("*/manifest.json")).parent
    assert files_of(folder) == files_of(whole)
    assert not list(folder.glob(".*.tmp"))


def test_parquet_folder_trains_end_to_end(tmp_path, corpus):
    from helpers import of_type, run_inprocess

    folder = tmp_path / "pq"
    folder.mkdir()
    for k in range(3):
        write_parquet(folder / f"part-{k:02d}.parquet", generated_documents(150, seed=10 + k))
    run, code, events = run_inprocess(corpus, "pq", extra=[f'data.source="{folder}"'], max_iters=6)
    assert code == 0 and run.config().data.source == str(folder)
    assert of_type(events, "step")[-1]["iter"] == 6 and of_type(events, "eval")
    meta = json.loads(next((Path(os.environ["GPT2_COCKPIT_HOME"]) / "cache" / "tokens").glob("*/meta.json")).read_text())
    assert meta["source"] == str(folder) and meta["mode"] == "documents"


def test_multi_shard_batches_are_deterministic_and_cross_shard_edges(tmp_path, monkeypatch):
    import torch

    from gpt2_cockpit.engine import presets
    from gpt2_cockpit.engine.train.pretrain import PretrainWorkload

    src = tmp_path / "docs.jsonl"
    write_jsonl(src, generated_documents(500, seed=7))
    d = prepare.prepare_and_open(str(src), "char", 0.1, 16, workers=1, shard_tokens=3_000)
    arrays = [np.fromfile(d.folder / name, dtype=d.meta["dtype"]) for name, n in d.meta["shards"]["train"] if n]
    assert len(arrays) >= 10
    whole = np.concatenate(arrays)
    assert len(d.train) == len(whole)
    # windows across every shard boundary read as the concatenated stream
    edges = np.cumsum([len(a) for a in arrays])[:-1]
    offsets = np.concatenate([edges - 5, edges - 16, [0, len(whole) - 17]])
    assert np.array_equal(d.windows("train", offsets, 16), whole[offsets[:, None] + np.arange(17)].astype(np.int64))
    # one shard reads exactly as that shard's array (today's single file)
    one = shards.ShardedTokens([arrays[0]], arrays[0].dtype)
    idx = np.array([[0, 1, 2], [5, 6, 7]])
    assert np.array_equal(one.take(idx), arrays[0][idx].astype(np.int64))
    # the batch for a step depends on the generator's seed alone
    cfg = presets.load("cpu-tiny", [f'data.source="{src}"', "model.block_size=16", "model.n_layer=1",
                                    "model.n_embd=32", "model.n_head=2"])
    w = PretrainWorkload(cfg, data=d)
    batches = [w.sample_batch("train", 8, torch.Generator().manual_seed(123), 5) for _ in range(2)]
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    assert torch.equal(batches[0][0][:, 1:], batches[0][1][:, :-1])


def test_hf_offline_is_one_sentence_and_changes_no_environment(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    before = dict(os.environ)
    with pytest.raises(NetworkUnavailable) as e:
        prepare.prepare_and_open("hf:someone/not-cached-dataset:sample-10BT", "char", 0.1, 16)
    message = str(e.value)
    assert "hf:someone/not-cached-dataset:sample-10BT" in message and "\n" not in message
    assert "cannot be reached" in message
    assert dict(os.environ) == before


def test_hf_local_folder_cache_key_follows_its_files(tmp_path):
    ds = tmp_path / "ds"
    (ds / "data").mkdir(parents=True)
    write_parquet(ds / "data" / "train-00000-of-00001.parquet", generated_documents(300, seed=8))
    write_parquet(ds / "data" / "test-00000-of-00001.parquet", generated_documents(30, seed=9))
    a = prepare.prepare_and_open(f"hf:{ds}", "char", 0.1, 16)
    assert a.meta["n_docs"] == 300  # the test split is not trained on
    key = shards.cache_key(f"hf:{ds}", "char", 0.1)
    write_parquet(ds / "data" / "train-00000-of-00001.parquet", generated_documents(310, seed=8))
    assert shards.cache_key(f"hf:{ds}", "char", 0.1) != key
    assert prepare.prepare_and_open(f"hf:{ds}", "char", 0.1, 16).meta["n_docs"] == 310


def test_hf_card_configs_pick_the_files_of_a_config():
    card = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*/*
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
---
# FineWeb-Edu"""
    allow, splits = sources._hf_patterns(card, "sample-10BT")
    assert allow == ["sample/10BT/*"] and sources._split_of("sample/10BT/000_00000.parquet", splits) == "train"
    assert sources._split_of("data/CC-MAIN-2024-10/train-00000-of-00020.parquet", {}) == "train"
    assert sources._split_of("data/validation-00000.parquet", {}) == "validation"


def test_not_enough_disk_is_one_sentence(tmp_path, monkeypatch):
    src = tmp_path / "docs.jsonl"
    write_jsonl(src, generated_documents(100, seed=11))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(UserError) as e:
        prepare.prepare_and_open(str(src), "char", 0.1, 16)
    assert "only 0.0 MB is free" in str(e.value) and "GPT2_COCKPIT_HOME" in str(e.value)


def test_prepare_command_line(tmp_path, capsys, monkeypatch):
    from gpt2_cockpit.cli import main as cli

    src = tmp_path / "docs.jsonl"
    write_jsonl(src, generated_documents(200, seed=12))
    assert cli.main(["prepare", "cpu-tiny", "--source", str(src), "--tokenizer", "char", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokenize   100%" in out and "train and" in out and "token shards in" in out
    assert cli.main(["prepare", "--source", str(src), "--tokenizer", "char"]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert cli.main(["prepare", "--source", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 0))
    assert cli.main(["prepare", "--source", str(src), "--tokenizer", "char", "--set", "data.val_fraction=0.2"]) == 2
    assert "is free there" in capsys.readouterr().err


def test_parquet_without_the_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["a"] * 30}), p)
    with pytest.raises(UserError, match="no 'text' column"):
        prepare.prepare_and_open(str(p), "char", 0.1, 16)


def _fake_hub(monkeypatch, tmp_path, files: dict[str, bytes]):
    """huggingface_hub's listing and download calls, served from memory into a fake cache."""
    import huggingface_hub
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "datasets--someone--ds" / "snapshots" / "abc"
    downloaded: list[str] = []

    class Entry:
        def __init__(self, path, size):
            self.path, self.size = path, size

    def list_repo_tree(self, repo_id, repo_type=None, recursive=False, **kw):
        return [Entry(p, len(b)) for p, b in files.items()]

    def hf_hub_download(repo_id, filename, repo_type=None, tqdm_class=None, local_files_only=False, **kw):
        if filename not in files:
            raise FileNotFoundError(filename)
        dest = snapshot / filename
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            body = files[filename]
            if tqdm_class is not None:
                with tqdm_class(total=len(body), unit="B", name="huggingface_hub.http_get") as bar:
                    for i in range(0, len(body), 1000):
                        bar.update(len(body[i:i + 1000]))
            dest.write_bytes(body)
            downloaded.append(filename)
        return str(dest)

    def try_to_load_from_cache(repo_id, filename, repo_type=None, **kw):
        p = snapshot / filename
        return str(p) if p.exists() else None

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", try_to_load_from_cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: True)
    return downloaded


def test_hf_download_reports_bytes_and_checks_the_disk_first(monkeypatch, tmp_path):
    rows = "".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(300))
    files = {"README.md": b"# ds\n", "data/train-0.jsonl": rows.encode(), "data/train-1.jsonl": rows.encode()}
    downloaded = _fake_hub(monkeypatch, tmp_path, files)
    seen = []
    folder = prep.prepare_tokens("hf:someone/ds", "char", 0.1, workers=1, on_progress=seen.append)
    assert sorted(downloaded) == sorted(files)
    download = [p for p in seen if p.phase == "download"]
    total = sum(len(b) for b in files.values())
    assert download and all(p.total == total and p.unit == "bytes" for p in download)
    assert download[-1].done == total and [p.done for p in download] == sorted(p.done for p in download)
    assert (folder / "meta.json").exists()

    # a dataset that does not fit on the cache's disk is one sentence, before any download
    downloaded.clear()
    files["data/train-2.jsonl"] = rows.encode() * 3
    real = shutil.disk_usage
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(UserError) as e:
        prep.prepare_tokens("hf:someone/ds", "char", 0.1, workers=1)
    message = str(e.value)
    assert "hf:someone/ds needs" in message and "free" in message and "\n" not in message
    assert downloaded == []
