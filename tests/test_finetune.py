"""The finetune engine, offline: a tiny GPT-2 and a BPE tokenizer built here, loaded via from_pretrained."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from gpt2_cockpit.cli import main as cli
from gpt2_cockpit.engine import faults
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.data.packing import prepare, split_samples
from gpt2_cockpit.engine.errors import NetworkUnavailable, UserError
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.events import read_all
from gpt2_cockpit.engine.train import runner
from gpt2_cockpit.engine.train.finetune import FinetuneWorkload, load_pretrained
from conftest import TINY_TEXT
from helpers import of_type, save_tiny_gpt2, step_losses

VOCAB = 300


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer GPT-2 and a byte-level BPE tokenizer trained on the spot, saved as a model folder."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), vocab=VOCAB)


def ft_overrides(model_dir, corpus, **train) -> list[str]:
    base = {
        "model.pretrained": f'"{model_dir}"', "model.block_size": 32, "data.source": f'"{corpus}"',
        "train.epochs": 0, "train.max_iters": 12, "train.micro_batch": 4, "train.grad_accum": 2,
        "train.learning_rate": 3e-3, "train.min_lr": 3e-4, "train.warmup_iters": 2, "train.lr_decay_iters": 12,
        "train.eval_interval": 6, "train.eval_iters": 2, "train.log_interval": 1, "train.sample_interval": 0,
        "train.checkpoint_interval": 6,
    }
    base.update({f"train.{k}": v for k, v in train.items()})
    return [f"{k}={v}" for k, v in base.items()]


def run_ft(model_dir, corpus, name, extra=(), resume=False, **train):
    if resume:
        run = _resolve(name)
        launch.prepare_restart(run, list(extra))
    else:
        run = launch.create_run("gpt2-finetune", ft_overrides(model_dir, corpus, **train) + list(extra), name)
    code = runner.run_process(run.path, resume=resume)
    return run, code, read_all(run.events_path)


def _resolve(name):
    from gpt2_cockpit.engine.runs.rundir import resolve

    return resolve(name)


def test_shipped_preset_is_the_tutorial_recipe():
    cfg = presets.load("gpt2-finetune")
    assert cfg.engine == "finetune" and cfg.model.pretrained == "gpt2" and cfg.model.block_size == 512
    t = cfg.train
    assert (t.learning_rate, t.micro_batch, t.grad_accum, t.weight_decay, t.epochs) == (5e-5, 4, 4, 0.01, 3.0)
    assert t.dtype == "auto"
    assert "data.source" in cfg.description


def test_headless_finetune_through_the_cli(tiny_gpt2, corpus, capsys):
    """The issue's 'done when': trains headless, val loss falls, val_ppl logged, model/ works in pipeline()."""
    code = cli.main(["train", "gpt2-finetune", "--headless", "--name", "ft"]
                    + [a for s in ft_overrides(tiny_gpt2, corpus, epochs=1, sample_interval=7, eval_interval=5) for a in ("--set", s)])
    assert code == 0
    run = _resolve("ft")
    events = read_all(run.events_path)
    (r,) = of_type(events, "run")
    assert r["engine"] == "finetune" and r["device"] == "cpu"
    # epochs = 1 over 113 blocks of 32 tokens, 8 blocks per step: ceil(113 / 8) = 15 iterations
    assert "one sample per line" in capsys.readouterr().out
    on_disk = run.config()
    assert on_disk.train.max_iters == on_disk.train.lr_decay_iters == 15 and on_disk.train.epochs == 0
    assert r["config"]["train"]["max_iters"] == 15 and max(step_losses(events)) == 15
    evals = of_type(events, "eval")
    assert [e["iter"] for e in evals] == [0, 5, 10, 15]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    for e in evals:
        assert e["val_ppl"] == pytest.approx(math.exp(e["val_loss"]), rel=1e-9)
    samples = of_type(events, "sample")
    assert [s["iter"] for s in samples] == [7, 14] and all(s["text"] for s in samples)
    assert of_type(events, "state")[-1]["state"] == "done"
    assert of_type(events, "checkpoint")[-1]["iter"] == 15

    from transformers import AutoModelForCausalLM, pipeline

    gen = pipeline("text-generation", model=str(run.model_dir))
    out = gen("The quick cat", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert out.startswith("The quick cat") and len(out) > len("The quick cat")
    # model/ holds the last weights (iter 15), model-best/ the best by val loss: both load
    best = AutoModelForCausalLM.from_pretrained(run.path / "model-best")
    last = AutoModelForCausalLM.from_pretrained(run.model_dir)
    assert best.config.n_layer == last.config.n_layer == 2
    leftovers = [p.name for p in run.path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_model_folder_is_the_in_memory_model(tiny_gpt2, corpus):
    run, code, _ = run_ft(tiny_gpt2, corpus, "m", max_iters=6)
    assert code == 0
    from transformers import AutoModelForCausalLM

    from gpt2_cockpit.engine.train import checkpoint as ckpt

    _, state = ckpt.load_latest(run.checkpoints)
    saved = AutoModelForCausalLM.from_pretrained(run.model_dir).state_dict()
    ours = {k.removeprefix("hf."): v for k, v in state["model"].items()}
    assert saved.keys() <= ours.keys()
    for k, v in saved.items():
        assert torch.equal(v, ours[k]), k
    # export of a finetune run copies its model/ folder
    out = run.path.parent.parent / "exported"
    assert cli.main(["export", "m", "--to", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in run.model_dir.iterdir())
    assert (out / "model.safetensors").read_bytes() == (run.model_dir / "model.safetensors").read_bytes()


def test_hf_dataset_brings_its_own_validation_split(tiny_gpt2, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # data.py sets it for the process when offline
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")  # not ~/.cache
    model, tok = load_pretrained(str(tiny_gpt2))
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.jsonl").write_text("".join(f'{{"text": "The quick cat {i} sat."}}\n' for i in range(30)))
    (ds / "validation.jsonl").write_text("".join(f'{{"text": "The lazy dog {i} sat."}}\n' for i in range(5)))
    data = prepare(f"hf:{ds}", tok, 0.1, 8)
    assert "validation split" in data.meta["mode"] and data.meta["n_docs"] == 30
    assert "lazy" in tok.decode(data.val.tolist()) and "lazy" not in tok.decode(data.train.tolist())
    (ds / "validation.jsonl").unlink()  # none: whole documents are held out instead
    no_val = tmp_path / "ds2"
    ds.rename(no_val)
    data = prepare(f"hf:{no_val}", tok, 0.1, 8)
    assert "validation" not in data.meta["mode"] and "quick" in tok.decode(data.val.tolist())
    assert 0.05 < len(data.val) / (len(data.train) + len(data.val)) < 0.15
    assert (tmp_path / "hf-datasets").is_dir()


def test_exact_resume_is_bit_for_bit(tiny_gpt2, corpus):
    # the tiny GPT-2 has GPT-2's dropout (0.1), so this also checks the RNG round trip; 16 blocks of 64
    # tokens per step: the first epoch (56 blocks) ends inside step 4, after the stop at 3
    rows = ["model.block_size=64", "train.micro_batch=4", "train.grad_accum=4"]
    _, _, whole = run_ft(tiny_gpt2, corpus, "whole", rows, max_iters=6, eval_interval=3)
    _, _, first = run_ft(tiny_gpt2, corpus, "split", rows, max_iters=3, eval_interval=3)
    run, code, both = run_ft(tiny_gpt2, corpus, "split", ["train.max_iters=6"], resume=True)
    assert code == 0
    assert of_type(both, "run")[-1]["resumed_from"] == 3
    got, expected = step_losses(both), step_losses(whole)
    assert len(got) == 6 and got == expected
    assert [e["val_loss"] for e in of_type(both, "eval")][-1] == [e["val_loss"] for e in of_type(whole, "eval")][-1]


def test_epochs_visit_every_block_once_in_a_seeded_order(tiny_gpt2, corpus):
    cfg = presets.load("gpt2-finetune", ft_overrides(tiny_gpt2, corpus))
    w = FinetuneWorkload(cfg)
    blocks = w.train_blocks
    n = 8
    seen = np.concatenate([w.train_block_indices(k, n) for k in range(math.ceil(2 * blocks / n))])
    epoch0, epoch1 = seen[:blocks].tolist(), seen[blocks:2 * blocks].tolist()
    assert sorted(epoch0) == sorted(epoch1) == list(range(blocks))  # each epoch: every block once
    assert epoch0 != list(range(blocks)) and epoch0 != epoch1  # shuffled, differently per epoch
    # stateless: a fresh workload (a resumed run) draws the same rows for step 9 without replaying 0..8
    again = FinetuneWorkload(cfg)
    x1, y1 = w.sample_batch("train", n, torch.Generator(), 9)
    x2, y2 = again.sample_batch("train", n, torch.Generator().manual_seed(5), 9)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (n, 32) and x1.dtype == torch.int64 and x1.is_contiguous()
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # y is x shifted by one


def test_text_file_modes_and_eos_between_documents(tiny_gpt2, corpus, tmp_path):
    lines, mode = split_samples(TINY_TEXT)
    assert "per line" in mode and len(lines) == TINY_TEXT.count("\n")
    prose = "A first paragraph\nwrapped over lines.\n\nA second one.\n" * 10
    docs, mode = split_samples(prose)
    assert docs == [prose] and "free text" in mode

    model, tok = load_pretrained(str(tiny_gpt2))
    data = prepare(str(corpus), tok, 0.1, 32)
    eos = tok.eos_token_id
    stream = np.concatenate([data.train, data.val])
    assert stream[0] == eos and int((stream == eos).sum()) == len(lines)  # one EOS before each line
    assert data.meta["n_docs"] == len(lines) and 0.05 < len(data.val) / len(stream) < 0.15
    decoded = tok.decode(data.train[1:int(np.argmax(data.train[1:] == eos)) + 1].tolist())
    assert decoded == lines[0]  # a line is a sample: no newline, the EOS separates
    # free text keeps its newlines, and the held-out part is the tail of its stream
    p = tmp_path / "prose.txt"
    p.write_text(prose)
    free = prepare(str(p), tok, 0.2, 8)
    assert int((np.concatenate([free.train, free.val]) == eos).sum()) == 1 and free.meta["n_docs"] == 1
    assert "\n\n" in tok.decode(free.train.tolist())


def test_generation_leaves_the_training_rng_alone(tiny_gpt2, corpus):
    cfg = presets.load("gpt2-finetune", ft_overrides(tiny_gpt2, corpus))
    w = FinetuneWorkload(cfg)
    w.model.eval()

    def generate(prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int) -> str:
        ids = w.stream(w.encode_prompt(prompt), max_new_tokens, temperature, top_k, torch.Generator().manual_seed(seed))
        return prompt + w.decode(list(ids))

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate("The quick", 70, 1.0, 50, 7)  # slides past 64 positions
    assert torch.equal(torch.get_rng_state(), before)
    b = generate("The quick", 70, 1.0, 50, 7)
    assert a == b and a.startswith("The quick") and len(a) > len("The quick")
    assert generate("", 5, 0.8, 0, 1)  # empty prompt: starts a document


def test_pause_sample_set_resume_through_the_control_socket(tiny_gpt2, corpus):
    run = launch.create_run("gpt2-finetune", ft_overrides(tiny_gpt2, corpus, max_iters=6, eval_interval=0), "c")
    replies, logged = {}, {}

    def remote():
        deadline = time.time() + 60
        while not run.socket_path.exists() and time.time() < deadline:
            time.sleep(0.05)
        try:
            for name, msg in (("pause", {"cmd": "pause"}),
                              ("sample", {"cmd": "sample", "prompt": "The old", "max_new_tokens": 6, "request_id": "q1"}),
                              ("set", {"cmd": "set", "key": "train.learning_rate", "value": 1e-3}),
                              ("resume", {"cmd": "resume"})):
                replies[name] = launch.control(run, msg)
                # what a command did is in the log by the time it is answered (a sample: once accepted)
                logged[name] = of_type(read_all(run.events_path), "state")[-1]["state"]
        except Exception as e:  # never leave the run paused forever
            replies["error"] = e
            launch.control(run, {"cmd": "stop"})

    t = threading.Thread(target=remote)
    t.start()
    code = runner.run_process(run.path)
    t.join(10)
    assert "error" not in replies, replies
    assert code == 0 and all(reply == {"ok": True} for reply in replies.values()), replies
    assert logged == {"pause": "paused", "sample": "paused", "set": "paused", "resume": "running"}
    events = read_all(run.events_path)
    (s,) = of_type(events, "sample")
    assert s["request_id"] == "q1" and s["text"].startswith("The old")
    (st,) = of_type(events, "set")
    assert st["new"] == 1e-3 and run.config().train.learning_rate == 1e-3
    assert [e["state"] for e in of_type(events, "state")][-3:] == ["running", "stopping", "done"]
    assert max(step_losses(events)) == 6


def test_oom_shrinks_the_micro_batch(tiny_gpt2, corpus, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "64")  # 4 rows x 32 tokens fail, 2 rows fit
    faults.reset()
    run, code, events = run_ft(tiny_gpt2, corpus, "o", max_iters=3, eval_interval=0)
    assert code == 0
    (o,) = of_type(events, "oom")
    assert (o["micro_batch_before"], o["micro_batch_after"], o["grad_accum_after"]) == (4, 2, 4)
    assert (run.config().train.micro_batch, run.config().train.grad_accum) == (2, 4)
    assert of_type(events, "state")[-1]["state"] == "done"


def test_offline_hub_name_is_one_sentence(tiny_gpt2, corpus, capsys):
    # HF_HUB_OFFLINE=1 (conftest) and nothing cached: fail at once, one line, no retries
    t0 = time.time()
    with pytest.raises(NetworkUnavailable) as e:
        load_pretrained("no-such-org/no-such-tiny-gpt2")
    assert time.time() - t0 < 10
    msg = str(e.value)
    assert "\n" not in msg and "no-such-org/no-such-tiny-gpt2" in msg and "connect once" in msg
    # and through the CLI: exit 2, the sentence, no traceback
    code = cli.main(["train", "gpt2-finetune", "--headless", "--name", "off", "--set",
                     "model.pretrained=no-such-org/no-such-tiny-gpt2", "--set", f'data.source="{corpus}"'])
    err = capsys.readouterr().err
    assert code == 2 and "connect once" in err and "Traceback" not in err


def test_user_mistakes_are_sentences(tiny_gpt2, corpus, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(str(tmp_path / "missing-model"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="without a config.json"):
        load_pretrained(str(empty))
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((tiny_gpt2 / name).read_bytes())
    with pytest.raises(UserError, match="no tokenizer files"):
        load_pretrained(str(no_tokenizer))
    cfg = presets.load("gpt2-finetune", ft_overrides(tiny_gpt2, corpus) + ["model.block_size=128"])
    with pytest.raises(UserError, match="64 positions"):
        FinetuneWorkload(cfg)
    with pytest.raises(UserError, match="does not apply"):
        presets.load("gpt2-finetune", ["model.n_layer=2"])
