"""Fine-tuning a bigger GPT-2 on a small card: LoRA adapters, gradient checkpointing, 8-bit AdamW,
and the planner that says what fits. A tiny GPT-2 folder built here; nothing from the hub."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pytest
import torch

from gpt2_cockpit.cli import main as cli
from gpt2_cockpit.engine import faults
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.machine import memtrack, planner
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.events import read_all
from gpt2_cockpit.engine.train import checkpoint as ckpt
from gpt2_cockpit.engine.train import optim, runner
from gpt2_cockpit.engine.train.finetune import FinetuneWorkload, load_pretrained
from gpt2_cockpit.engine.train.step import Stepper
from helpers import of_type, step_losses
from test_finetune import ft_overrides, run_ft, tiny_gpt2  # noqa: F401  (tiny_gpt2: a fixture)

LORA = ["train.lora_r=4", "train.lora_alpha=8", "train.lora_dropout=0.1"]
# the tiny GPT-2 is 2 layers x 32 wide: r (in + out) for c_attn (32, 96), attn.c_proj (32, 32),
# mlp.c_fc (32, 128), mlp.c_proj (128, 32)
ADAPTER_PARAMS = 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
GPU = planner.GpuSpec.named("RTX 4070 Ti")


def _plain_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_only_the_adapters_train(tiny_gpt2, corpus):
    cfg = presets.load("gpt2-finetune", ft_overrides(tiny_gpt2, corpus) + LORA)
    stepper = Stepper(cfg, FinetuneWorkload(cfg), "cpu")
    assert sum(p.numel() for p in stepper.params) == ADAPTER_PARAMS
    assert all("lora_" in n for n, p in stepper.raw_model.named_parameters() if p.requires_grad)
    before = {k: v.clone() for k, v in stepper.raw_model.state_dict().items()}
    for k in range(3):
        stepper.step(k, 3e-3)
    after = stepper.raw_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B starts at zero: the adapters now do something
    # the checkpoint holds the adapters and their optimizer state only
    state = stepper.state_dict()
    assert state["trainable_only"] and set(state["model"]) == {n for n, p in stepper.raw_model.named_parameters()
                                                               if p.requires_grad}
    moments = state["optimizer"]["state"].values()
    assert sum(m["exp_avg"].numel() for m in moments) == ADAPTER_PARAMS


def test_a_lora_run_end_to_end(tiny_gpt2, corpus, tmp_path, capsys):
    """Val loss falls; the run event counts what trains; checkpoints are small; model/ is a PEFT
    adapter folder that peft loads onto the base; export merges it into a plain GPT-2 folder
    with the same logits; sampling a stopped run and eval read it too."""
    run, code, events = run_ft(tiny_gpt2, corpus, "lora", LORA, max_iters=12, eval_interval=6,
                               learning_rate=3e-2, min_lr=3e-3)  # adapters take larger steps
    assert code == 0
    (r,) = of_type(events, "run")
    base_params = sum(p.numel() for p in load_pretrained(str(tiny_gpt2))[0].parameters())  # tied: once
    assert r["params_trainable"] == ADAPTER_PARAMS and r["params_total"] == base_params + ADAPTER_PARAMS
    assert r["config"]["train"]["lora_r"] == 4
    evals = [e["val_loss"] for e in of_type(events, "eval")]
    assert len(evals) == 3 and evals[-1] < evals[0] - 0.2
    _, state = ckpt.load_latest(run.checkpoints)
    assert state["trainable_only"] and state["model"] and all("lora_" in k for k in state["model"])
    full = sum(v.numel() for v in load_pretrained(str(tiny_gpt2))[0].state_dict().values())
    assert sum(v.numel() for v in state["model"].values()) == ADAPTER_PARAMS < full / 5

    folder = run.model_dir
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "config.json" not in names and "model.safetensors" not in names
    assert all(p.stat().st_mode & 0o777 == _plain_mode() for p in folder.iterdir())
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_gpt2.resolve())

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, pipeline

    ids = torch.tensor([[5, 17, 42, 8, 99, 3, 250, 11]])
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    plain = _logits(base, ids)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2), str(folder)).eval()
    want = _logits(adapted, ids)
    assert not torch.allclose(want, plain, atol=1e-4)  # the adapters changed the model
    # the adapter folder holds the checkpoint's weights (the newest is also the last model/)
    cfg = run.config()
    stepper = Stepper(cfg, FinetuneWorkload(cfg), "cpu")
    stepper.load_weights(state)
    assert torch.allclose(_logits(stepper.raw_model.hf.eval(), ids), want, atol=1e-6)

    out = tmp_path / "merged"
    assert cli.main(["export", "lora", "--to", str(out)]) == 0
    assert "merged" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names and "adapter_config.json" not in names
    assert (out / "model.safetensors").stat().st_mode & 0o777 == _plain_mode()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in merged.state_dict())
    assert torch.allclose(_logits(merged, ids), want, atol=1e-5)
    text = pipeline("text-generation", model=str(out))("The quick", max_new_tokens=5, do_sample=False)
    assert text[0]["generated_text"].startswith("The quick")

    # eval and the planner read the adapter folder as the model it adapts
    from gpt2_cockpit.engine.train.hellaswag import load_target

    assert "finetune, model/" in load_target("lora")[1]
    assert planner.model_shape(presets.load("gpt2-finetune", [f"model.pretrained={folder}"])).n_layer == 2
    # a stopped run samples from its checkpoint: the model loaded again, the adapters from the file
    assert runner.sample_from_checkpoint(run, "The old", 5, 0.8, 50).startswith("The old")


def test_lora_stop_and_resume_is_exact(tiny_gpt2, corpus, capsys):
    # lora_dropout and GPT-2's own dropout: the RNG round trip matters too
    rows = ["model.block_size=64", "train.micro_batch=4", "train.grad_accum=2"] + LORA
    _, _, whole = run_ft(tiny_gpt2, corpus, "whole", rows, max_iters=6, eval_interval=3)
    _, _, first = run_ft(tiny_gpt2, corpus, "split", rows, max_iters=3, eval_interval=3)
    run, code, both = run_ft(tiny_gpt2, corpus, "split", ["train.max_iters=6"], resume=True)
    assert code == 0 and of_type(both, "run")[-1]["resumed_from"] == 3
    got, expected = step_losses(both), step_losses(whole)
    assert len(got) == 6 and got == expected
    # the adapters' shape is the checkpoint's: changing it on resume is one sentence
    capsys.readouterr()
    _, code, events = run_ft(tiny_gpt2, corpus, "split", ["train.lora_r=8", "train.max_iters=9"], resume=True)
    err = capsys.readouterr().err
    assert code == 2 and "do not fit this run's model" in err and "train.lora_r" in err and "Traceback" not in err
    assert of_type(events, "state")[-1]["state"] == "failed"


def test_gradient_checkpointing_gives_the_same_losses(tiny_gpt2, corpus):
    """Recomputed blocks draw the same dropout masks: the losses of a run without it (1e-5)."""
    for name, extra in (("full", []), ("lora", LORA)):
        _, code, plain = run_ft(tiny_gpt2, corpus, f"{name}-plain", extra, max_iters=5, eval_interval=0)
        run, code2, ckpt_run = run_ft(tiny_gpt2, corpus, f"{name}-gc", extra + ["train.gradient_checkpointing=true"],
                                      max_iters=5, eval_interval=0)
        assert code == code2 == 0
        a, b = step_losses(plain), step_losses(ckpt_run)
        assert len(a) == 5 and a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) < 1e-5 for k in a), (a, b)
    # a full fine-tune's model/ is a plain model folder whose weights are readable like any file
    assert (run.model_dir / "adapter_config.json").exists()
    full_folder = run.path.parent / "full-gc" / "model"
    assert (full_folder / "model.safetensors").stat().st_mode & 0o777 == _plain_mode()


def test_oom_live_settings_and_sampling_work_with_lora(tiny_gpt2, corpus, monkeypatch):
    monkeypatch.setenv("GPT2_COCKPIT_FAKE_OOM_TOKENS", "64")  # 4 rows x 32 tokens fail, 2 rows fit
    faults.reset()
    run = launch.create_run("gpt2-finetune", ft_overrides(tiny_gpt2, corpus, max_iters=6, eval_interval=3) + LORA, "c")
    replies = {}

    def remote():
        deadline = time.time() + 60
        while not run.socket_path.exists() and time.time() < deadline:
            time.sleep(0.05)
        try:
            for name, msg in (("sample", {"cmd": "sample", "prompt": "The old", "max_new_tokens": 6, "request_id": "q"}),
                              ("set", {"cmd": "set", "key": "train.learning_rate", "value": 1e-3})):
                replies[name] = launch.control(run, msg)
        except Exception as e:
            replies["error"] = e

    t = threading.Thread(target=remote)
    t.start()
    code = runner.run_process(run.path)
    t.join(10)
    assert code == 0 and replies == {"sample": {"ok": True}, "set": {"ok": True}}, replies
    events = read_all(run.events_path)
    (o,) = of_type(events, "oom")
    assert (o["micro_batch_before"], o["micro_batch_after"], o["grad_accum_after"]) == (4, 2, 4)
    (s,) = of_type(events, "sample")
    assert s["request_id"] == "q" and s["text"].startswith("The old")
    assert of_type(events, "set")[0]["new"] == 1e-3 and run.config().train.learning_rate == 1e-3
    assert [e["iter"] for e in of_type(events, "eval")] == [0, 3, 6]
    assert of_type(events, "state")[-1]["state"] == "done"


def test_adamw8bit_off_cuda_or_without_bitsandbytes_is_one_sentence(tiny_gpt2, corpus, capsys, monkeypatch):
    code = cli.main(["train", "gpt2-finetune", "--headless", "--name", "8bit"]
                    + [a for s in ft_overrides(tiny_gpt2, corpus) + ["train.optimizer=adamw8bit"] for a in ("--set", s)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "adamw8bit" in err and "CUDA GPUs only" in err and "this run trains on the cpu" in err

    class OnCuda(torch.nn.Module):  # what the builder looks at: the device of the parameters that train
        def parameters(self, recurse=True):
            yield type("P", (), {"requires_grad": True, "device": torch.device("cuda")})()

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if the extra were not installed
    cfg = presets.load("gpt2-finetune", ["train.optimizer=adamw8bit"])
    with pytest.raises(UserError) as e:
        optim.build(OnCuda(), cfg.train)
    assert "pip install \"gpt2-cockpit[8bit]\"" in str(e.value) and "\n" not in str(e.value)


def test_settings_are_checked(tiny_gpt2, corpus):
    with pytest.raises(UserError, match="train.lora_r = -1 must not be negative"):
        presets.load("gpt2-finetune", ["train.lora_r=-1"])
    with pytest.raises(UserError, match="train.lora_dropout = 1.0 must be in"):
        presets.load("gpt2-finetune", ["train.lora_dropout=1.0"])
    with pytest.raises(UserError, match="train.lora_targets = ' , ' must name modules"):
        presets.load("gpt2-finetune", ["train.lora_targets=' , '"])
    with pytest.raises(UserError, match="train.optimizer = 'adam' must be"):
        presets.load("gpt2-finetune", ["train.optimizer=adam"])
    with pytest.raises(UserError, match="expected true or false"):
        presets.load("gpt2-finetune", ["train.gradient_checkpointing=1"])
    with pytest.raises(UserError, match="does not apply to engine"):
        presets.load("cpu-tiny", ["train.lora_r=8"])
    cfg = presets.load("gpt2-finetune", ft_overrides(tiny_gpt2, corpus) + ["train.lora_r=4", "train.lora_targets=q_proj"])
    with pytest.raises(UserError, match=r"no such module \(its linear layers: c_attn, c_proj, c_fc, lm_head\)"):
        FinetuneWorkload(cfg)


def test_the_planner_says_what_fits_a_12gb_card(capsys):
    for name in ("gpt2-medium-finetune", "gpt2-large-finetune-12gb", "gpt2-xl-lora-12gb"):
        plan = planner.plan_run(presets.load(name), gpu=GPU)
        assert plan.fits and plan.vram_gb < 12 * planner.FIT_FRACTION, name
    xl = planner.plan_run(presets.load("gpt2-xl-lora-12gb"), gpu=GPU)
    assert xl.params_trainable == 19_660_800 and xl.to_dict()["lora_r"] == 16
    assert "19.7M trainable" in presets.load("gpt2-xl-lora-12gb").description
    large = presets.load("gpt2-large-finetune-12gb")
    assert "gradient checkpointing" in large.description and "8-bit AdamW" in large.description
    # gpt2-xl fine-tuned whole does not fit, and the plan says which settings would
    assert cli.main(["plan", "gpt2-finetune", "--gpu", "RTX 4070 Ti", "--set", "model.pretrained=gpt2-xl",
                     "--set", "model.block_size=1024", "--set", "train.micro_batch=1", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["fits"] is False and full["vram_gb"] > 25 and full["params_trainable"] == full["params_total"]
    assert [o["set"] for o in full["fit_with"]] == [{"train.lora_r": 16, "train.gradient_checkpointing": True}]
    assert cli.main(["plan", "gpt2-xl-lora-12gb", "--gpu", "RTX 4070 Ti"]) == 0
    text = capsys.readouterr().out
    assert "fits" in text and "NOT" not in text and "LoRA r=16" in text and "gradient checkpointing" in text
    # what each technique saves, and the suggestions in the mildest order
    medium = presets.load("gpt2-finetune", ["model.pretrained=gpt2-large", "model.block_size=1024",
                                            "train.micro_batch=1", "train.compile=false"])
    options = planner.plan_run(medium, gpu=GPU).fit_with
    assert options[0]["set"] == {"train.gradient_checkpointing": True, "train.optimizer": "adamw8bit"}
    assert any("--set train.gradient_checkpointing=true --set train.optimizer=adamw8bit" in n
               for n in planner.plan_run(medium, gpu=GPU).notes)


def test_planner_terms_per_technique():
    shape = planner.model_shape(presets.load("gpt2-xl-lora-12gb"))
    base = planner.estimate_vram(shape, 1, "bfloat16", False)
    ckpt_ = planner.estimate_vram(shape, 1, "bfloat16", False, checkpointing=True)
    lora = planner.LoraSpec(16, ("c_attn", "c_proj", "c_fc"), 0.05)
    adapters = planner.estimate_vram(shape, 1, "bfloat16", False, lora=lora)
    eight = planner.estimate_vram(shape, 1, "bfloat16", False, optimizer="adamw8bit")
    P = planner._param_counts(shape)["params_total"]
    assert eight["optimizer"] == 2 * P and base["optimizer"] == 8 * P  # 8-bit state: 2 B a parameter
    assert ckpt_["activations"] < base["activations"] / 8  # each block's input kept, one recomputed
    assert adapters["grads"] == 4 * lora.params(shape) == 4 * 19_660_800  # the adapters' gradients alone
    # frozen weights keep no cached half-precision copy; with blocks recomputed, one block's at a time
    both = planner.estimate_vram(shape, 1, "bfloat16", False, lora=lora, checkpointing=True)
    assert base["weights"] == 6 * P and 4 * P < both["weights"] < 4.3 * P


@pytest.mark.slow
@pytest.mark.parametrize("case", [name for name, _, _ in memtrack.FINETUNE_CASES])
def test_planner_against_the_memory_tracker(case):
    """Within 15% of PyTorch's MemTracker on fake CPU tensors (GPT-2-shaped, no real memory);
    tests/benchmarks/finetune_memory.py prints the table."""
    planned, tracked = memtrack.planned_and_tracked(memtrack.finetune_case(case))
    assert abs(planned / tracked["Total"] - 1) < memtrack.TOLERANCE, (planned / 2**30, tracked)
