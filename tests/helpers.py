"""Small helpers shared by engine tests: start runs in-process and read their events, wait for a
condition, a tiny Hugging Face GPT-2 folder. Torch-free at import (the cockpit's tests use it too):
what needs torch or transformers imports it when called."""

from __future__ import annotations

import time
from pathlib import Path

from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.events import read_all


def run_inprocess(corpus, name, extra=(), resume=False, **train):
    """Create (or restart) run `name` with a tiny model and train it in this process."""
    from conftest import tiny_overrides
    from gpt2_cockpit.engine.train import runner

    if resume:
        from gpt2_cockpit.engine.runs.rundir import resolve

        run = resolve(name)
        launch.prepare_restart(run, list(extra))
    else:
        run = launch.create_run("cpu-tiny", tiny_overrides(corpus, **train) + list(extra), name)
    code = runner.run_process(run.path, resume=resume)
    return run, code, read_all(run.events_path)


def of_type(events, type_):
    return [e for e in events if e["type"] == type_]


def step_losses(events):
    return {e["iter"]: e["loss"] for e in of_type(events, "step")}


GPT2_SHAPED = ["model.block_size=24", "model.bias=false"]  # a GPT-2 folder has biases: ours are its zeros


def exportable_char_run(corpus, name, **train):
    """A tiny char-level pretrain run trained in this process (4 steps, no eval unless asked),
    shaped to export as a Hugging Face GPT-2 folder; (run, exit code, events) as run_inprocess."""
    return run_inprocess(corpus, name, GPT2_SHAPED, **{"max_iters": 4, "eval_interval": 0, **train})


def export_run(target: str, out: Path) -> Path:
    """`gpt2-cockpit export TARGET --to OUT`, which must succeed: the run as a Hugging Face GPT-2
    folder; returns OUT."""
    from gpt2_cockpit.cli import main as cli

    assert cli.main(["export", target, "--to", str(out)]) == 0
    return out


def wait_until(pred, timeout: float = 60.0, what: str = "condition"):
    """Poll `pred()` until it returns something true, and return that; fail after `timeout` seconds.
    (tests/fakerun.py's `wait_for` is the same inside a running cockpit, with its Pilot.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def finds_its_disk_full(run) -> bool:
    """Has the live run found its disk full (GPT2_COCKPIT_FAKE_FULL_DISK)? Then it has paused and
    refuses to resume until there is room: what it logs is held back, so its log cannot say. Asks
    it to resume, which changes nothing before that (the run is not paused)."""
    from gpt2_cockpit.engine.runs import control

    reply = control.request(run.socket_path, {"cmd": "resume"})
    return not reply["ok"] and "free some space first" in reply["error"]


def save_tiny_gpt2(folder: Path, n_positions: int = 64, vocab: int = 300) -> Path:
    """A 2-layer GPT2LMHeadModel (seeded) and a byte-level BPE tokenizer of `vocab` tokens trained on
    the test text, saved in `folder` as a Hugging Face model folder; returns `folder`."""
    from conftest import TINY_TEXT
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TINY_TEXT], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    return folder
