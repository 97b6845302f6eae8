"""`gpt2-cockpit export`: a pretrain checkpoint becomes a GPT2LMHeadModel folder with our logits."""

from __future__ import annotations

import shutil

import pytest
import torch

from gpt2_cockpit.cli import main as cli
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.train import checkpoint as ckpt
from gpt2_cockpit.engine.train.export import to_hf, tokenizer_from_tiktoken
from gpt2_cockpit.engine.train.model import GPT, GPTConfig
from gpt2_cockpit.engine.train.pretrain import PretrainWorkload
from conftest import TINY_TEXT, tiny_overrides
from helpers import export_run, exportable_char_run


@pytest.fixture
def char_run(corpus):
    """A tiny char-level pretrain run, a few steps, without biases (GPT-2 needs zeros there)."""
    run, code, _ = exportable_char_run(corpus, "p")
    assert code == 0
    return run


def _ours(run):
    w = PretrainWorkload(run.config())
    _, state = ckpt.load_latest(run.checkpoints)
    w.model.load_state_dict(state["model"])
    return w.model.eval(), w.tokenizer


def test_char_run_exports_with_our_logits_and_vocabulary(char_run, tmp_path, capsys):
    out = export_run("p", tmp_path / "hf")
    assert "exported p" in capsys.readouterr().out

    from transformers import AutoTokenizer, GPT2LMHeadModel, pipeline

    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.activation_function == "gelu" and hf.config.n_positions == 24
    ours, our_tok = _ours(char_run)
    assert hf.config.vocab_size == our_tok.vocab_size
    text = "The old fox sat on the log. It was warm.\n"
    x = torch.tensor([our_tok.encode(text)[:24]])
    with torch.no_grad():
        want, _ = ours(x, x)
        got = hf(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert hf.transformer.h[0].attn.c_attn.bias.abs().sum() == 0  # bias=false: zeros

    tok = AutoTokenizer.from_pretrained(out)
    assert tok(text)["input_ids"] == our_tok.encode(text)  # same ids
    assert tok.decode(tok(TINY_TEXT)["input_ids"]) == TINY_TEXT  # round trip, newlines and spaces included
    odd = "Zany € quick"  # characters never seen are dropped, as ours drops them
    assert tok(odd)["input_ids"] == our_tok.encode(odd)
    assert tok.decode(tok(odd)["input_ids"]) == our_tok.decode(our_tok.encode(odd)) == "any  quick"

    gen = pipeline("text-generation", model=str(out))
    assert gen("The", max_new_tokens=10, do_sample=False)[0]["generated_text"].startswith("The")


def test_export_refuses_a_non_empty_folder_unless_forced(char_run, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "pytorch_model.bin").write_text("an old model")
    assert cli.main(["export", "p", "--to", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "pytorch_model.bin"]  # untouched
    assert cli.main(["export", "p", "--to", str(out), "--force"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "notes.txt"} <= names
    assert "pytorch_model.bin" not in names  # a stale weight file would shadow ours
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_export_says_what_is_missing(char_run, corpus, tmp_path, capsys):
    import torch

    from gpt2_cockpit.engine.train import checkpoint as ckpt

    shutil.rmtree(tmp_path / "home" / "cache" / "tokens")
    # the checkpoint carries the char vocabulary: no token cache needed
    assert cli.main(["export", "p", "--to", str(tmp_path / "c")]) == 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "c")
    assert tok.decode(tok("The lazy fox")["input_ids"]) == "The lazy fox"
    # an older checkpoint without it, and no cache: one sentence
    for path in char_run.checkpoints.iterdir():
        state = ckpt.load_file(path)
        state.pop("tokenizer")
        torch.save(state, path)
    assert cli.main(["export", "p", "--to", str(tmp_path / "a")]) == 2
    assert "vocabulary is gone" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing written
    launch.create_run("cpu-tiny", tiny_overrides(corpus), "fresh")
    assert cli.main(["export", "fresh", "--to", str(tmp_path / "b")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert cli.main(["export", "nope", "--to", str(tmp_path / "b")]) == 2
    assert "unknown run" in capsys.readouterr().err


@pytest.mark.parametrize("bias", [True, False])
def test_weight_mapping_matches_our_logits(bias):
    """Conv1D transposes, biases, tied embeddings; the padded vocabulary is cut to the tokenizer's."""
    torch.manual_seed(0)
    ours = GPT(GPTConfig(block_size=32, vocab_size=320, n_layer=2, n_head=4, n_embd=64, bias=bias)).eval()
    with torch.no_grad():  # make biases and LayerNorm gains non-trivial so a wrong mapping shows
        for name, p in ours.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    cfg = presets.load("cpu-tiny", ["model.n_layer=2", "model.n_head=4", "model.n_embd=64", "model.block_size=32",
                                    f"model.bias={str(bias).lower()}", "data.tokenizer=gpt2"])
    hf = to_hf(ours.state_dict(), cfg, vocab=300, eos=299)
    x = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        want, _ = ours(x, x)
        got = hf(input_ids=x).logits
    assert got.shape == (2, 32, 300)
    assert torch.allclose(got, want[..., :300], atol=1e-4, rtol=0)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # still tied


def test_gpt2_tokenizer_rebuilt_from_tiktoken_gives_the_same_ids():
    """Offline GPT-2 BPE runs get their tokenizer from tiktoken's cache; checked on a BPE trained here."""
    import tiktoken
    from tiktoken._educational import bpe_train
    from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's split pattern

    ranks = bpe_train(TINY_TEXT, 300, r50k_pat_str, visualise=None)
    enc = tiktoken.Encoding("tiny", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": len(ranks)})
    tok = tokenizer_from_tiktoken(enc)
    for text in (TINY_TEXT[:600], "Hello  world!\n\n It's  the   quick €ü 123456 cat's", " the  fox\tsat"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == enc.encode_ordinary(text)
        assert tok.decode(ids) == text
    assert tok.eos_token_id == len(ranks)
