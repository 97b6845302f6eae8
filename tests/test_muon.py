"""train.optimizer = "muon": Muon for the blocks' matrices, AdamW for the rest, in every part of a run."""

from __future__ import annotations

import subprocess

import pytest
import torch
import torch.nn as nn

from conftest import CLI, cli_env, tiny_overrides
from gpt2_cockpit.engine import faults
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.machine import planner
from gpt2_cockpit.engine.runs.events import read_all
from gpt2_cockpit.engine.train import checkpoint as ckpt
from gpt2_cockpit.engine.train import optim
from gpt2_cockpit.engine.train.finetune import CausalLMAdapter
from gpt2_cockpit.engine.train.loop import train
from gpt2_cockpit.engine.train.model import GPT, GPTConfig
from gpt2_cockpit.engine.train.pretrain import PretrainWorkload
from gpt2_cockpit.engine.train.step import Stepper, lr_at
from helpers import of_type, run_inprocess, step_losses
from test_finetune import run_ft, tiny_gpt2  # noqa: F401 (tiny_gpt2: the fixture)

MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# torch.optim.Muon is torch 2.9+; the project's floor may be older
needs_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch 2.9+")


def tiny_hf_gpt2(tie: bool = True):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie))


def muon_stepper(corpus, *extra, **train_kw):
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus, optimizer="muon", **train_kw) + list(extra))
    return Stepper(cfg, PretrainWorkload(cfg), "cpu")


# --------------------------------------------------------------------------- which parameter goes where


def test_pretrain_split_blocks_matrices_to_muon_the_rest_to_adamw():
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, bias=True))
    muon, adamw = optim.split(model)
    assert {name for name, _, _ in muon} == {f"transformer.h.{i}.{m}" for i in range(2) for m in MATRICES}
    assert all(factor == 1.0 for _, _, factor in muon)  # nn.Linear is (out, in): torch's Muon reads it right
    names = {name for name, _ in adamw}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= names
    assert "transformer.h.0.attn.c_attn.bias" in names and "transformer.h.1.ln_2.bias" in names
    assert "lm_head.weight" not in names  # tied: it is wte, trained once, by AdamW
    assert len(muon) + len(adamw) == len(list(model.parameters()))


@needs_muon
def test_pretrain_stepper_groups(corpus):
    stepper = muon_stepper(corpus, "model.bias=true")
    opt = stepper.optimizer
    muon_ids = {id(p) for g in opt.param_groups if g.get("muon") for p in g["params"]}
    by_id = {id(p): n for n, p in stepper.raw_model.named_parameters()}
    assert {by_id[i] for i in muon_ids} == {f"transformer.h.{i}.{m}" for i in range(2) for m in MATRICES}
    decay, no_decay = opt.adamw.param_groups
    assert {by_id[id(p)] for p in decay["params"]} == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert opt.muon.param_groups[0]["momentum"] == 0.95 and opt.muon.param_groups[0]["nesterov"] is True


def test_finetune_split_conv1d_matrices_to_muon_embeddings_and_head_to_adamw():
    model = CausalLMAdapter(tiny_hf_gpt2())
    muon, adamw = optim.split(model)
    assert {name for name, _, _ in muon} == {f"hf.transformer.h.{i}.{m}" for i in range(2) for m in MATRICES}
    names = {name for name, _ in adamw}
    assert {"hf.transformer.wte.weight", "hf.transformer.wpe.weight", "hf.transformer.ln_f.bias",
            "hf.transformer.h.0.attn.c_attn.bias", "hf.transformer.h.1.ln_1.weight"} <= names
    # an untied head is the output layer all the same: AdamW's
    _, adamw = optim.split(CausalLMAdapter(tiny_hf_gpt2(tie=False)))
    assert "hf.lm_head.weight" in {name for name, _ in adamw}


def test_conv1d_gets_the_lr_scale_of_the_same_linear():
    """Hugging Face's Conv1D stores (in, out); torch's Muon scales by sqrt(max(1, rows/cols)), meant
    for (out, in). With the split's factor, each GPT-2 matrix gets the scale ours gets."""
    ours = {name.split(".", 3)[-1]: p.shape[0] / p.shape[1] for name, p, _ in
            optim.split(GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32)))[0]}
    theirs = {name.split(".", 4)[-1]: (p.shape[0] / p.shape[1], f) for name, p, f in
              optim.split(CausalLMAdapter(tiny_hf_gpt2()))[0]}
    for name, ratio in ours.items():
        hf_ratio, factor = theirs[name]
        assert hf_ratio == pytest.approx(1 / ratio)  # transposed
        assert factor * max(1, hf_ratio) ** 0.5 == pytest.approx(max(1, ratio) ** 0.5), name
    assert theirs["mlp.c_fc.weight"][1] == 2.0 and theirs["mlp.c_proj.weight"][1] == 0.5


@needs_muon
def test_conv1d_step_is_the_transpose_of_the_linear_step():
    from transformers.pytorch_utils import Conv1D

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 32)

        def forward(self, x):
            return self.fc(x)

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = Conv1D(32, 8)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    lin, conv = Lin(), Conv()
    with torch.no_grad():
        conv.fc.weight.copy_(lin.fc.weight.T)
        conv.fc.bias.copy_(lin.fc.bias)  # the biases go to AdamW, alike in both
    t = presets.load("cpu-tiny", ["train.optimizer=muon", "train.muon_weight_decay=0.1"]).train
    x = torch.randn(4, 8)
    for model in (lin, conv):
        opt = optim.build(model, t)
        (model(x) ** 2).sum().backward()
        optim.set_lr(opt, t.learning_rate, t)
        opt.step()
    assert torch.allclose(conv.fc.weight.T, lin.fc.weight, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- learning rates


@needs_muon
def test_muon_follows_the_schedule_at_its_ratio(corpus):
    stepper = muon_stepper(corpus, max_iters=20, muon_lr=0.03)
    t = stepper.cfg.train
    seen = []
    for k in range(20):
        lr = lr_at(k, t)
        stepper.step(k, lr)
        for group in stepper.optimizer.param_groups:
            want = lr * 0.03 / t.learning_rate if group.get("muon") else lr
            assert group["lr"] == pytest.approx(want, rel=1e-12)
        seen.append(lr)
    assert seen[0] < seen[2] and seen[-1] < seen[2] / 4  # warm-up, then the decay


@needs_muon
def test_live_learning_rate_keeps_the_ratio_and_the_config_says_so(corpus):
    from test_loop import start

    run, owner, stepper = start(corpus, "live", {3: [{"cmd": "set", "key": "train.learning_rate", "value": 5e-4}]},
                                max_iters=6, optimizer="muon", muon_lr=0.02)
    ratio = stepper.cfg.train.muon_lr / stepper.cfg.train.learning_rate
    assert train(stepper, owner) == "done"
    owner.close()
    t = stepper.cfg.train
    assert t.learning_rate == 5e-4 and t.muon_lr == pytest.approx(0.02 * 5e-4 / 1e-3)
    assert run.config().train.muon_lr == pytest.approx(t.muon_lr)  # a resume keeps the ratio too
    sets = {e["key"]: (e["old"], e["new"]) for e in of_type(read_all(run.events_path), "set")}
    assert sets["train.learning_rate"] == (1e-3, 5e-4) and sets["train.muon_lr"][0] == 0.02
    adamw_lr = next(g["lr"] for g in stepper.optimizer.param_groups if not g.get("muon"))
    muon_lr = next(g["lr"] for g in stepper.optimizer.param_groups if g.get("muon"))
    assert adamw_lr == pytest.approx(lr_at(5, t)) and muon_lr / adamw_lr == pytest.approx(ratio)


# --------------------------------------------------------------------------- checkpoints, resume, OOM, export


@needs_muon
def test_exact_resume_is_bit_for_bit(corpus):
    _, _, whole = run_inprocess(corpus, "whole", max_iters=24, optimizer="muon")
    _, _, first = run_inprocess(corpus, "split", max_iters=12, optimizer="muon")
    run, code, both = run_inprocess(corpus, "split", ["train.max_iters=24"], resume=True)
    assert code == 0 and of_type(both, "run")[-1]["resumed_from"] == 12
    assert len(step_losses(both)) == 24
    assert step_losses(both) == step_losses(whole)  # exact: weights, both optimizers' state, RNG, batches
    assert step_losses(whole) != step_losses(run_inprocess(corpus, "adamw", max_iters=24)[2])  # Muon did train
    state = ckpt.load_file(ckpt.listing(run.checkpoints)[0])
    buffers = state["optimizer"]["muon"]["state"]
    assert len(buffers) == 8 and all("momentum_buffer" in s for s in buffers.values())  # 2 layers x 4 matrices
    assert all({"exp_avg", "exp_avg_sq"} <= set(s) for s in state["optimizer"]["adamw"]["state"].values())


@needs_muon
def test_resuming_with_the_other_optimizer_is_one_sentence(corpus):
    run_inprocess(corpus, "a", max_iters=10)
    _, code, events = run_inprocess(corpus, "a", ["train.max_iters=20", "train.optimizer=muon"], resume=True)
    assert code == 2
    (err,) = of_type(events, "error")
    assert "train.optimizer = \"adamw\"" in err["message"] and "\n" not in err["message"]


@needs_muon
def test_oom_resplit_with_muon_trains_as_the_smaller_split(monkeypatch, corpus):
    _, _, ref = run_inprocess(corpus, "ref", micro_batch=2, grad_accum=4, max_iters=8, optimizer="muon")
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "32")  # 4 x 16 tokens do not fit, 2 x 16 do
    faults.reset()
    _, code, events = run_inprocess(corpus, "oom", micro_batch=4, grad_accum=2, max_iters=8, optimizer="muon")
    assert code == 0
    (oom,) = of_type(events, "oom")
    assert (oom["iter"], oom["micro_batch_after"], oom["grad_accum_after"]) == (1, 2, 4)
    assert step_losses(events) == step_losses(ref)  # the failed attempt left nothing in Muon's momentum


@needs_muon
def test_nan_and_spike_steps_leave_both_optimizers_alone(corpus, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_NAN_AT_ITER", "20")
    faults.reset()
    stepper = muon_stepper(corpus, max_iters=30)
    for k in range(19):
        assert stepper.step(k, 1e-3).applied
    before = {n: p.clone() for n, p in stepper.raw_model.named_parameters()}
    buffers = [s["momentum_buffer"].clone() for s in stepper.optimizer.muon.state.values()]
    result = stepper.step(19, 1e-3)
    assert result.nonfinite and not result.applied
    assert all(torch.equal(p, before[n]) for n, p in stepper.raw_model.named_parameters())
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(buffers, stepper.optimizer.muon.state.values()))
    assert stepper.step(20, 1e-3).applied


@needs_muon
def test_a_muon_run_exports_and_loads_in_a_pipeline(corpus, tmp_path, capsys):
    from transformers import pipeline

    from gpt2_cockpit.cli import main as cli

    run_inprocess(corpus, "m", ["model.bias=false", "model.block_size=24"], max_iters=4, eval_interval=0,
                  optimizer="muon")
    out = tmp_path / "hf"
    assert cli.main(["export", "m", "--to", str(out)]) == 0
    gen = pipeline("text-generation", model=str(out))
    assert gen("The", max_new_tokens=5, do_sample=False)[0]["generated_text"].startswith("The")


@needs_muon
def test_finetune_with_muon_trains_and_resumes_bit_for_bit(tiny_gpt2, corpus):
    rows = ["model.block_size=64", "train.micro_batch=4", "train.grad_accum=2", "train.optimizer=muon"]
    _, code, whole = run_ft(tiny_gpt2, corpus, "whole", rows, max_iters=6, eval_interval=3)
    assert code == 0
    _, _, first = run_ft(tiny_gpt2, corpus, "split", rows, max_iters=3, eval_interval=3)
    run, code, both = run_ft(tiny_gpt2, corpus, "split", ["train.max_iters=6"], resume=True)
    assert code == 0 and step_losses(both) == step_losses(whole)  # exact, dropout 0.1 included
    evals = [e["val_loss"] for e in of_type(whole, "eval")]
    assert evals[-1] < evals[0]
    state = ckpt.load_file(ckpt.listing(run.checkpoints)[0])
    assert len(state["optimizer"]["muon"]["state"]) == 8  # 2 layers x c_attn, c_proj, c_fc, mlp.c_proj


# --------------------------------------------------------------------------- the planner


def _state_bytes(optimizer) -> int:
    """Bytes of the optimizer's per-parameter state (AdamW's moments, Muon's momentum), without
    AdamW's one-number step counters."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items()
               if torch.is_tensor(v) and k != "step")


@needs_muon
@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_planner_optimizer_bytes_are_the_runs(corpus, name):
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus, optimizer=name))
    stepper = Stepper(cfg, PretrainWorkload(cfg), "cpu")
    stepper.step(0, 1e-3)
    shape = planner.model_shape(cfg, vocab_size=stepper.raw_model.config.vocab_size)
    P = sum(p.numel() for p in stepper.raw_model.parameters())
    muon = sum(p.numel() for _, p, _ in optim.split(stepper.raw_model)[0]) if name == "muon" else 0
    planned = planner.estimate_vram(shape, 4, "float32", False, on_gpu=False, optimizer=name)["optimizer"]
    assert planned == _state_bytes(stepper.optimizer) == 8 * (P - muon) + 4 * muon


def test_planner_muon_saves_4_bytes_per_matrix_weight():
    adamw = planner.plan_run(presets.load("gpt2-124m"), gpu=None)
    muon = planner.plan_run(presets.load("gpt2-124m-muon"), gpu=None)
    matrices = 12 * 12 * 768 * 768  # 12 layers of attention (4d²) and MLP (8d²) matrices: 84.9M
    gib = planner.GIB  # the plan's breakdown is in GiB
    assert (adamw.vram_breakdown["optimizer"] - muon.vram_breakdown["optimizer"]) * gib == pytest.approx(4 * matrices)
    assert muon.vram_breakdown["optimizer"] * gib == pytest.approx(8 * adamw.params_total - 4 * matrices)
    ft = planner.model_shape(presets.load("gpt2-finetune"))  # Hugging Face GPT-2: the same matrices
    b = planner.estimate_vram(ft, 4, "bfloat16", True, optimizer="muon")
    assert b["optimizer"] == 8 * 124_439_808 - 4 * matrices


def test_hf_muon_parameters_are_the_planners():
    model = tiny_hf_gpt2()
    muon = sum(p.numel() for _, p, _ in optim.split(CausalLMAdapter(model))[0])
    assert muon == 2 * 12 * 32 * 32


# --------------------------------------------------------------------------- presets and config errors


@pytest.mark.parametrize("name, base", [("gpt2-124m-muon", "gpt2-124m"), ("gpt2-40m-12gb-muon", "gpt2-40m-12gb")])
def test_muon_presets_are_their_base_with_muon(name, base):
    cfg, ref = presets.load(name), presets.load(base)
    t = cfg.train
    assert (t.optimizer, t.muon_lr, t.muon_momentum, t.muon_nesterov) == ("muon", 0.02, 0.95, True)
    assert cfg.model == ref.model and cfg.data == ref.data
    assert cfg.tokens_per_step == ref.tokens_per_step and t.max_iters == ref.train.max_iters
    assert t.learning_rate == ref.train.learning_rate  # AdamW's part as in the base preset


@pytest.mark.parametrize("item, key", [
    ('train.optimizer="sgd"', "train.optimizer"),
    ("train.muon_lr=0", "train.muon_lr"),
    ("train.muon_lr=-0.02", "train.muon_lr"),
    ("train.muon_momentum=1.0", "train.muon_momentum"),
    ("train.muon_momentum=-0.1", "train.muon_momentum"),
    ("train.muon_weight_decay=-1", "train.muon_weight_decay"),
    ('train.muon_adjust_lr="rms"', "train.muon_adjust_lr"),
    ('train.muon_nesterov="yes"', "train.muon_nesterov"),
])
def test_bad_muon_settings_are_one_sentence_naming_the_key(item, key):
    with pytest.raises(UserError) as e:
        presets.load("cpu-tiny", [item])
    assert key in str(e.value) and "\n" not in str(e.value)


def test_defaults_are_adamw():
    t = presets.load("cpu-tiny").train
    assert t.optimizer == "adamw" and t.muon_lr == 0.02 and t.muon_momentum == 0.95


# --------------------------------------------------------------------------- torchrun


@needs_muon
@pytest.mark.slow
def test_two_ranks_train_muon_with_the_losses_of_one_process(cockpit_home, corpus):
    # two gloo ranks of 4 x 2 rows each against one process with the group's 16 rows: Muon steps
    # on gradients averaged over the ranks, so the losses agree (to float rounding)
    _, code, ref = run_inprocess(corpus, "ref", micro_batch=4, grad_accum=4, max_iters=6, optimizer="muon")
    assert code == 0
    args = ["train", "--headless", "--name", "ddp", "--gpus", "2", "--set", "train.device=cpu"]
    for item in tiny_overrides(corpus, max_iters=6, optimizer="muon"):
        args += ["--set", item]
    r = subprocess.run(CLI + args, env=cli_env(cockpit_home), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    events = read_all(cockpit_home / "runs" / "ddp" / "events.jsonl")
    assert of_type(events, "run")[0]["world_size"] == 2
    got, want = step_losses(events), step_losses(ref)
    assert got.keys() == want.keys() == set(range(1, 7))
    # the ranks' float32 gradients differ from one process's in their last bits (a different sum
    # order), and Muon's Newton-Schulz runs in bf16, which rounds such a difference up to ~1e-4 of
    # the loss by step 5 (measured); a step's own change of the loss is ~5e-2
    for i in want:
        assert got[i] == pytest.approx(want[i], abs=5e-4), i
