import json

import numpy as np
import pytest

from gpt2_cockpit.engine import errors
from gpt2_cockpit.engine.data import packing, prepare, shards, sources
from gpt2_cockpit.engine.data.stream import ShardStream
from gpt2_cockpit.engine.errors import UserError


def test_python_docs_builtin_is_offline_and_char_round_trips(cockpit_home):
    d = prepare.prepare_and_open("builtin:python-docs", "char", 0.1, 64)
    assert len(d.train) > 300_000 and len(d.val) > 30_000
    assert d.train.dtype == np.uint16
    tok = d.tokenizer()
    assert tok.decode(tok.encode("def f(x):\n    return x")) == "def f(x):\n    return x"
    meta = json.loads((d.folder / "meta.json").read_text())
    assert meta["vocab_size"] == len(meta["chars"]) == d.vocab_size


def test_written_once_then_reused(corpus):
    a = prepare.prepare_and_open(str(corpus), "char", 0.1, 16)
    mtime = (a.folder / "train-00000.bin").stat().st_mtime_ns
    b = prepare.prepare_and_open(str(corpus), "char", 0.1, 16)
    assert a.folder == b.folder and (b.folder / "train-00000.bin").stat().st_mtime_ns == mtime


def test_changed_file_gets_new_cache(corpus):
    a = prepare.prepare_and_open(str(corpus), "char", 0.1, 16)
    corpus.write_text(corpus.read_text() + "Zebra!\n")
    b = prepare.prepare_and_open(str(corpus), "char", 0.1, 16)
    assert a.folder != b.folder and "Z" in b.meta["chars"]


def test_folder_jsonl_and_csv(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha " * 50)
    (folder / "b.jsonl").write_text("\n".join(json.dumps({"text": f"beta {i} " * 5}) for i in range(10)))
    (folder / "c.csv").write_text("id,text\n" + "\n".join(f"{i},gamma {i}" for i in range(10)))
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    docs = list(sources.read_documents(str(folder)))
    assert docs[0].startswith("alpha") and any("beta 3" in d for d in docs) and any("gamma 9" in d for d in docs)
    assert len(docs) == 21


def test_windows_are_next_token_pairs(corpus):
    d = prepare.prepare_and_open(str(corpus), "char", 0.1, 16)
    w = d.windows("train", np.array([0, 7]), 16)
    assert w.shape == (2, 17)
    assert np.array_equal(w[0, 7:], w[1, :10])


@pytest.mark.parametrize("setup, fragment", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text(""), "is empty"),
    (lambda p: p.write_bytes(b"\x00\xff\x00binary"), "is not a text file"),
    (lambda p: p.write_bytes(b"\xff\xfe\xfa bad utf8"), "is not UTF-8"),
])
def test_bad_sources_fail_with_one_sentence(tmp_path, setup, fragment):
    p = tmp_path / "c.txt"
    setup(p)
    with pytest.raises(UserError) as e:
        prepare.prepare_and_open(str(p), "char", 0.1, 64)
    assert fragment in str(e.value) and str(p) in str(e.value)


def test_jsonl_without_text_column(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match="no 'text' field"):
        list(sources.read_documents(str(p)))


def test_unknown_builtin():
    with pytest.raises(UserError, match="unknown builtin corpus"):
        list(sources.read_documents("builtin:nope"))


def test_tiny_shakespeare_offline_message(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources.urllib.request, "urlopen", refuse)
    with pytest.raises(errors.NetworkUnavailable) as e:
        list(sources.read_documents("builtin:tiny-shakespeare"))
    assert "builtin:python-docs" in str(e.value)


def test_hf_source_offline_message():
    # HF_HUB_OFFLINE=1 (conftest): nothing is cached, so this must fail fast with one sentence
    with pytest.raises(UserError) as e:
        list(sources.read_documents("hf:someone/not-cached-dataset"))
    assert "hf:someone/not-cached-dataset" in str(e.value)


def test_val_split_holds_out_about_the_fraction(corpus):
    d = prepare.prepare_and_open("builtin:python-docs", "char", 0.1, 64)
    frac = len(d.val) / (len(d.train) + len(d.val))
    assert 0.07 < frac < 0.13


# --------------------------------------------------------------------------- a source too short for the block
# One rule (shards.check_split_long_enough): a split needs one window of block_size + 1 tokens.
# Every reader applies it at that boundary, with the same sentence.


def test_a_split_needs_one_window_of_block_size_plus_one_tokens():
    shards.check_split_long_enough("c.txt", "val", 17, 16)  # exactly one window
    with pytest.raises(UserError) as e:
        shards.check_split_long_enough("c.txt", "val", 16, 16)
    assert str(e.value) == ("data.source c.txt is too short: its val split has 16 tokens and model.block_size 16 "
                            "needs at least 17 (use a longer corpus, a smaller model.block_size, or a larger "
                            "data.val_fraction)")


def _fails_at(n: int, open_with, source, split: str, where: str = "") -> None:
    """open_with(block_size) accepts n - 1 (a split of n tokens holds one window) and refuses n."""
    open_with(n - 1)
    with pytest.raises(UserError) as e:
        open_with(n)
    assert str(e.value).startswith(f"data.source {source} is too short: its {split} split has {n} tokens{where} "
                                   f"and model.block_size {n} needs at least {n + 1} (")


def _short_text(tmp_path, text: str = "abc def\n" * 30):
    p = tmp_path / "short.txt"
    p.write_text(text)
    return p


def test_random_windows_of_the_whole_corpus(tmp_path):
    p = _short_text(tmp_path)
    n = len(prepare.prepare_and_open(str(p), "char", 0.1, 4).val)
    _fails_at(n, lambda block: prepare.prepare_and_open(str(p), "char", 0.1, block), p, "val")


def test_shards_read_in_order_check_their_evaluation_shards(tmp_path):
    p = _short_text(tmp_path)
    folder = prepare.prepare_tokens(str(p), "char", 0.1, shard_tokens=50, workers=1)
    n = len(ShardStream(folder, 4, seed=1).eval_tokens("val"))
    _fails_at(n, lambda block: ShardStream(folder, block, seed=1).missing(0, 1), p, "val",
              " in the evaluation shards")


def test_shards_read_in_order_need_one_shard_holding_a_window(tmp_path):
    p = _short_text(tmp_path, "ab\n" * 200)
    folder = prepare.prepare_tokens(str(p), "char", 0.1, shard_tokens=6, workers=1)
    s = ShardStream(folder, 4, seed=1)
    n = max(s.counts[i]["train"] for i in range(len(s.units)))  # windows are cut shard by shard
    assert n < len(s.eval_tokens("train")) and n < len(s.eval_tokens("val"))
    _fails_at(n, lambda block: ShardStream(folder, block, seed=1).missing(0, 1), p, "train", " in its longest shard")


class _CharHFTokenizer:
    """What packing asks of a Hugging Face tokenizer, one token per character (no transformers)."""

    eos_token_id, bos_token_id, name_or_path, vocab_size = 0, None, "chars", 256

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return {chr(i): i for i in range(self.vocab_size)}

    def __call__(self, texts: list[str], **kwargs) -> dict:
        return {"input_ids": [[min(ord(c), 255) for c in t] for t in texts]}


def test_finetune_packed_blocks(tmp_path):
    p = _short_text(tmp_path)
    tok = _CharHFTokenizer()
    n = len(packing.prepare(str(p), tok, 0.1, 4).val)
    _fails_at(n, lambda block: packing.prepare(str(p), tok, 0.1, block), p, "val")
