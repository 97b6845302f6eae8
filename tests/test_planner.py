"""The planner's arithmetic, checked by hand, and `gpt2-cockpit plan` as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.machine import hardware, planner
from gpt2_cockpit.engine.machine.planner import GpuSpec, count_params, plan_run
from gpt2_cockpit.engine.runs.events import EventWriter
from gpt2_cockpit.engine.runs.rundir import create

CLI = [sys.executable, "-m", "gpt2_cockpit.cli"]
GIB = 1024 ** 3
RTX_4070_TI = GpuSpec("NVIDIA GeForce RTX 4070 Ti", 12282 / 1024, 285.0, 80.2, True, "detected")


def plan_cli(*args, env=None):
    proc = subprocess.run(CLI + ["plan", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# ---------------------------------------------------------------- the 12 GB run, by hand


def by_hand_40m():
    """gpt2-40m-12gb worked out on paper: 12 layers, d = 384, T = 1024, V = 50304, no biases."""
    L, d, T, V = 12, 384, 1024, 50304
    per_layer = 12 * d * d + 2 * d  # qkv 3d², proj d², fc 4d², fc-proj 4d², two LayerNorm gains
    params = L * per_layer + d + V * d  # + final LayerNorm + tied token embedding (= lm_head)
    assert params == 40_560_000
    tokens_per_step = 16 * 32 * T
    total_tokens = tokens_per_step * 20_000
    # training FLOPs per token = 6N (2N forward, 4N backward) + 12·L·T·d for attention
    # (q·kᵀ and att·v, 2·T·d each forward over the full T×T matrix, tripled for training)
    flops_per_token = 6 * params + 12 * L * T * d
    return params, tokens_per_step, total_tokens, flops_per_token


def matmul_flops_40m():
    """The same FLOPs counted matmul by matmul (a multiply-add is 2 FLOPs), forward then ×3."""
    L, d, T, V = 12, 384, 1024, 50304
    forward = L * (2 * d * 3 * d + 2 * d * d + 2 * d * 4 * d + 2 * 4 * d * d  # the four Linears
                   + 2 * T * d + 2 * T * d)  # scores q·kᵀ, then weights·v
    forward += 2 * d * V  # lm_head
    return 3 * forward  # backward is two matmuls per forward one


def test_40m_plan_reproduces_the_12gb_run_by_arithmetic():
    params, tps, total, fpt = by_hand_40m()
    assert (tps, total) == (524_288, 10_485_760_000)
    assert fpt == 299_983_104
    # 6N counts LayerNorm gains as if they were matmul weights: 6·(2·L·d + d) = 57,600 FLOPs
    # (0.02%) more than the matmul-by-matmul count; otherwise the two agree exactly
    assert fpt - matmul_flops_40m() == 6 * (2 * 12 * 384 + 384)

    p = plan_run(presets.load("gpt2-40m-12gb"), gpu=RTX_4070_TI).to_dict()
    assert p["params"] == params and 40.5e6 < p["params"] < 40.6e6
    assert p["params_total"] == params + 1024 * 384  # + position embeddings
    assert p["tokens_per_step"] == 524_288
    assert p["total_tokens"] == 10_485_760_000
    assert p["flops_per_token"] == fpt
    assert p["flops_total"] == fpt * 10_485_760_000  # 3.1455e18
    assert abs(p["flops_total"] - 3.1455e18) < 0.001e18
    assert round(p["tokens_per_param"]) == 259


def test_plan_command_40m_json():
    proc = plan_cli("gpt2-40m-12gb", "--json", "--gpu", "RTX 4070 Ti")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    params, tps, total, fpt = by_hand_40m()
    assert (p["params"], p["tokens_per_step"], p["total_tokens"]) == (params, tps, total)
    assert p["flops_total"] == fpt * total
    for key in ("params", "params_total", "tokens_per_step", "total_tokens", "flops_per_token", "flops_total",
                "tokens_per_param", "vram_gb", "vram_breakdown", "gpu_name", "gpu_mem_gb", "fits", "hours", "kwh",
                "cost"):
        assert key in p
    # hours at 35% MFU of the 4070 Ti's 80.2 TFLOP/s, HellaSwag's forward passes included (the preset
    # scores at iter 0 and every 500: 41 times 10,042 items x 4 endings x ~85 tokens at 2N FLOPs each);
    # energy at its 285 W limit
    hellaswag = 41 * 10_042 * 4 * 85 * 2 * params
    assert (p["hellaswag_evals"], p["hellaswag_items"], p["hellaswag_flops"]) == (41, 10_042, hellaswag)
    hours = (fpt * total + hellaswag) / (80.2e12 * 0.35) / 3600
    assert p["hours"] == pytest.approx(hours, rel=1e-3) and 30 < p["hours"] < 32
    assert p["kwh"] == pytest.approx(285 * hours / 1000, rel=1e-3)
    assert p["fits"] is True and 8 < p["vram_gb"] < 12
    assert p["cost"] is None


def test_plan_command_124m():
    proc = plan_cli("gpt2-124m", "--json")
    assert proc.returncode == 0, proc.stderr
    p = json.loads(proc.stdout)
    assert 123e6 < p["params"] < 125e6 and p["params"] == 123_587_328
    assert p["tokens_per_step"] == 524_288
    out = plan_cli("gpt2-124m").stdout
    assert "123.59M" in out


# ---------------------------------------------------------------- parameter counts


def test_count_params_matches_the_real_model():
    torch = pytest.importorskip("torch")
    model = pytest.importorskip("gpt2_cockpit.engine.train.model")
    for bias in (False, True):
        cfg = presets.load("cpu-tiny", ["model.n_layer=3", "model.n_embd=48", "model.n_head=4",
                                        "model.block_size=32", f"model.bias={str(bias).lower()}"])
        m = model.GPT(model.GPTConfig(block_size=32, vocab_size=97, n_layer=3, n_head=4, n_embd=48, bias=bias))
        total = sum(p.numel() for p in m.parameters())
        assert count_params(cfg, 97) == (m.num_params(), total)
    del torch


def test_count_params_matches_hugging_face_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers")
    hc = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=100)
    m = transformers.GPT2LMHeadModel(hc)
    hc.save_pretrained(tmp_path)
    cfg = cfgmod.with_overrides(presets.load("gpt2-finetune"), [f'model.pretrained="{tmp_path}"'])
    total = sum(p.numel() for p in m.parameters())  # tied lm_head counted once
    assert count_params(cfg) == (total - 64 * 32, total)


def test_gpt2_small_from_the_hub_table():
    cfg = presets.load("gpt2-finetune")
    assert count_params(cfg) == (123_653_376, 124_439_808)  # nanoGPT prints 123.65M for it
    assert planner._param_counts(planner.model_shape(cfg))["params_non_embedding"] == 85_056_000
    medium = cfgmod.with_overrides(cfg, ['model.pretrained="gpt2-medium"'])
    assert 354e6 < count_params(medium)[1] < 356e6  # GPT-2 medium: 354.8M


def test_unknown_pretrained_model_is_a_user_error():
    cfg = cfgmod.with_overrides(presets.load("gpt2-finetune"), ['model.pretrained="no-such-model"'])
    with pytest.raises(UserError, match="no-such-model"):
        plan_run(cfg, gpu=None)


def test_char_vocab_from_the_cached_corpus(monkeypatch):
    cfg = presets.load("shakespeare-char")
    assert planner.model_shape(cfg).vocab_size == planner.CHAR_VOCAB_GUESS
    monkeypatch.setattr("gpt2_cockpit.engine.data.shards.cached_vocab_size", lambda c: 65)
    shape = planner.model_shape(cfg)
    assert shape.vocab_size == 65 and "cached" in shape.vocab_note


# ---------------------------------------------------------------- VRAM


def test_vram_parts_by_hand():
    cfg = presets.load("gpt2-40m-12gb")
    shape = planner.model_shape(cfg)
    P = 40_560_000 + 1024 * 384
    b = planner.estimate_vram(shape, 16, "bfloat16", compiled=True)
    assert b["weights"] == 6 * P and b["grads"] == 4 * P and b["optimizer"] == 8 * P  # fp32 + bf16 copy
    tokens = 16 * 1024
    assert b["activations"] == tokens * (12 * 36 * 384 + 6 * 384)  # 36 B per layer per d under autocast
    assert b["logits"] == tokens * 50304 * 8
    fp32 = planner.estimate_vram(shape, 16, "float32", compiled=False)
    assert fp32["weights"] == 4 * P and fp32["logits"] == tokens * 50304 * 16
    assert fp32["activations"] == tokens * (12 * 64 * 384 + 8 * 384)
    ddp = planner.estimate_vram(shape, 16, "bfloat16", compiled=True, world_size=2)
    assert ddp["grads"] == 8 * P


@pytest.mark.parametrize("autocast", [True, False])
def test_activation_formula_matches_what_autograd_saves(autocast):
    """Count the bytes autograd keeps for backward in the real model (on the CPU) and compare
    with estimate_vram's activations + the weight cache + the log-softmax it keeps."""
    torch = pytest.importorskip("torch")
    model = pytest.importorskip("gpt2_cockpit.engine.train.model")
    L, d, nh, T, B, V = 3, 320, 5, 200, 3, 1000  # sizes that cannot be mistaken for each other
    torch.manual_seed(0)
    m = model.GPT(model.GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=nh, n_embd=d, bias=False))
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            m(torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T)))
    measured = sum(n for ptr, n in saved.items() if ptr not in params)

    cfg = presets.load("cpu-tiny", [f"model.n_layer={L}", f"model.n_embd={d}", f"model.n_head={nh}",
                                    f"model.block_size={T}"])
    shape = planner.model_shape(cfg, vocab_size=V)
    b = planner.estimate_vram(shape, B, "bfloat16" if autocast else "float32", compiled=False)
    P = planner._param_counts(shape)["params_total"]
    expected = b["activations"] + (2 * P if autocast else 0) + B * T * V * 4  # + weight cache + log-softmax
    assert measured == pytest.approx(expected, rel=0.01)


def test_math_attention_stores_the_score_matrix():
    shape = planner.model_shape(presets.load("gpt2-40m-12gb"))
    fused = planner.estimate_vram(shape, 4, "bfloat16", True)["activations"]
    math_ = planner.estimate_vram(shape, 4, "bfloat16", True, fused_attention=False)["activations"]
    assert math_ - fused == 4 * 1024 * 12 * 6 * 1024 * 6  # tokens · L · heads · T · (4 + 2) bytes


def test_fits_and_the_largest_micro_batch():
    cfg = presets.load("gpt2-124m")
    p = plan_run(cfg, gpu=RTX_4070_TI)
    assert p.fits is False and 1 <= p.max_micro_batch < 16
    assert any("does NOT fit" in v for _, v in p.rows())
    at_max = plan_run(cfgmod.with_overrides(cfg, [f"train.micro_batch={p.max_micro_batch}"]), gpu=RTX_4070_TI)
    above = plan_run(cfgmod.with_overrides(cfg, [f"train.micro_batch={p.max_micro_batch + 1}"]), gpu=RTX_4070_TI)
    assert at_max.fits is True and above.fits is False
    big = plan_run(cfg, gpu=GpuSpec.named("H100"))
    assert big.fits is True


def test_compile_and_precision_follow_the_gpu():
    cfg = presets.load("gpt2-40m-12gb")
    assert (plan_run(cfg, gpu=None).dtype, plan_run(cfg, gpu=None).compiled) == ("float32", False)
    assert plan_run(cfg, gpu=RTX_4070_TI).dtype == "bfloat16"
    assert plan_run(cfg, gpu=GpuSpec.named("T4")).dtype == "float16"
    no_compile = plan_run(cfgmod.with_overrides(cfg, ["train.compile=false"]), gpu=RTX_4070_TI)
    assert no_compile.vram_gb > plan_run(cfg, gpu=RTX_4070_TI).vram_gb  # unfused cross-entropy


# ---------------------------------------------------------------- time, energy, cost


def test_more_gpus_same_hours_more_tokens_more_energy():
    cfg = presets.load("gpt2-124m")
    one = plan_run(cfg, gpu=GpuSpec.named("A100"))
    eight = plan_run(cfg, gpu=GpuSpec.named("A100"), world_size=8)
    assert eight.tokens_per_step == 8 * one.tokens_per_step
    # training takes as long (8x the tokens on 8x the GPUs); HellaSwag's items are shared by the ranks
    assert eight.hours - eight.hellaswag_hours == pytest.approx(one.hours - one.hellaswag_hours)
    assert eight.hellaswag_hours == pytest.approx(one.hellaswag_hours / 8) and one.hellaswag_hours > 0
    assert eight.kwh == pytest.approx(8 * 400 * eight.hours / 1000)
    assert one.kwh == pytest.approx(400 * one.hours / 1000)


def test_mfu_and_measured_pace():
    cfg = presets.load("gpt2-40m-12gb")
    p = plan_run(cfg, gpu=RTX_4070_TI, mfu=0.5, ms_per_iter=4000.0, price_per_kwh=0.3)
    assert p.hours == pytest.approx((p.flops_total + p.hellaswag_flops) / (80.2e12 * 0.5) / 3600)
    # measured: HellaSwag at the FLOP rate the measured steps reached
    assert p.hours_measured == pytest.approx(4.0 * 20_000 / 3600 * (1 + p.hellaswag_flops / p.flops_total))
    assert p.kwh_measured == pytest.approx(285 * p.hours_measured / 1000)
    assert p.cost == pytest.approx(p.kwh * 0.3) and p.cost_measured == pytest.approx(p.kwh_measured * 0.3)
    labels = [label for label, _ in p.rows()]
    assert "time measured" in labels and "cost" in labels


def test_price_from_the_environment(monkeypatch):
    cfg = presets.load("gpt2-40m-12gb")
    monkeypatch.setenv(planner.PRICE_ENV, "0.25")
    assert plan_run(cfg, gpu=RTX_4070_TI).price_per_kwh == 0.25
    monkeypatch.setenv(planner.PRICE_ENV, "cheap")
    with pytest.raises(UserError, match=planner.PRICE_ENV):
        plan_run(cfg, gpu=RTX_4070_TI)


def test_bad_arguments_are_user_errors():
    cfg = presets.load("cpu-tiny")
    for kw in ({"mfu": 0}, {"mfu": 1.5}, {"world_size": 0}, {"ms_per_iter": -1.0}, {"price_per_kwh": -1.0}):
        with pytest.raises(UserError):
            plan_run(cfg, gpu=None, **kw)
    with pytest.raises(UserError, match="--peak-tflops"):
        GpuSpec.named("Radeon RX 7900 XTX")
    assert GpuSpec.named("Radeon RX 7900 XTX", peak_override=61.0).peak_tflops == 61.0


def test_no_gpu_plan_is_still_useful():
    p = plan_run(presets.load("cpu-tiny"), gpu=None)
    d = p.to_dict()
    assert d["hours"] is None and d["kwh"] is None and d["fits"] is None and d["gpu_name"] is None
    assert d["vram_breakdown"]["overhead"] == 0  # no CUDA context on the CPU
    text = dict(p.rows())
    assert "--gpu" in text["GPU"] and "n/a" in text["time"]


def test_gpu_detected_through_nvml():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_gpustats import FakeNvml, rtx_4070_ti

    g = GpuSpec.detect(FakeNvml([rtx_4070_ti()]))
    assert g.name == "NVIDIA GeForce RTX 4070 Ti" and g.peak_tflops == 80.2 and g.power_limit_w == 285.0
    assert g.mem_total_gb == pytest.approx(11.99, abs=0.01) and g.bf16 and g.source == "detected"
    turing = GpuSpec.detect(FakeNvml([rtx_4070_ti(name="Tesla T4", cc=(7, 5), limit_mw=None)]))
    assert turing.bf16 is False and turing.power_limit_w == 70  # from the table when NVML won't say
    assert GpuSpec.detect(FakeNvml(init_error=9)) is None


def test_named_gpus():
    g = GpuSpec.named("rtx4070ti")
    assert (g.name, g.mem_total_gb, g.power_limit_w, g.peak_tflops) == ("RTX 4070 Ti", 12, 285, 80.2)
    a100 = GpuSpec.named("A100 40GB")
    assert a100.mem_total_gb == 40 and a100.peak_tflops == 312.0 and a100.name == "A100 40GB"


# ---------------------------------------------------------------- the peak table


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA GeForce RTX 4070 Ti", 80.2), ("NVIDIA GeForce RTX 4070 Ti SUPER", 88.2),
    ("NVIDIA GeForce RTX 4070", 58.3), ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA GeForce RTX 3090", 71.0),
    ("NVIDIA GeForce RTX 3060", 25.5), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100-PCIE-40GB", 312.0),
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.4), ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.1), ("NVIDIA GeForce RTX 4090 Laptop GPU", None), ("Some Other GPU", None),
])
def test_peak_table(name, tflops):
    assert hardware.peak_tflops(name) == tflops


def test_geforce_figures_are_the_fp32_accumulate_rate():
    # Ada GeForce: SMs × boost GHz × 512 dense FLOPs/clock/SM with fp32 accumulate
    for key, sms, ghz in (("rtx 4070 ti", 60, 2.61), ("rtx 4090", 128, 2.52), ("rtx 4060", 24, 2.46)):
        entry = hardware.known_gpu(key)
        assert entry.tflops == pytest.approx(sms * ghz * 512 / 1000, abs=0.1)


def test_peak_overrides(monkeypatch):
    assert hardware.peak_tflops("NVIDIA GeForce RTX 4070 Ti", 100.0) == 100.0
    monkeypatch.setenv("GPT2_COCKPIT_PEAK_TFLOPS", "90")
    assert hardware.peak_tflops("NVIDIA GeForce RTX 4070 Ti") == 90.0
    assert hardware.flops_per_token(40_560_000, 12, 384, 1024) == 299_983_104


# ---------------------------------------------------------------- measured pace from a run


def _fake_run(name, cfg, ms_values, world_size=1):
    run = create(cfg, name)
    w = EventWriter(run.events_path)
    w.emit("run", name=name, preset=cfg.name, engine=cfg.engine, config=cfg.to_dict(), device="cuda",
           world_size=world_size, resumed_from=None)
    for i, ms in enumerate(ms_values):
        w.emit("step", iter=(i + 1) * 10, loss=3.0, lr=1e-3, tokens=0, tokens_per_sec=1.0, ms=ms, mfu=None,
               micro_batch=cfg.train.micro_batch, grad_accum=cfg.train.grad_accum)
    w.close()
    return run


def test_measured_ms_per_iter_from_a_run():
    cfg = presets.load("gpt2-40m-12gb")
    assert planner.measured_ms_per_iter(cfg) is None
    _fake_run("other-model", cfgmod.with_overrides(cfg, ["model.n_layer=6"]), [100.0] * 5)
    _fake_run("mine", cfg, [90_000.0] + [4000.0, 4200.0, 4100.0, 9999.0, 4050.0])  # first: compile warm-up
    ms, source = planner.measured_ms_per_iter(cfg)
    assert ms == 4100.0 and source == "run mine"
    assert planner.measured_ms_per_iter(cfg, world_size=2) is None


def test_plan_command_reports_the_measured_pace(cockpit_home):
    cfg = presets.load("cpu-tiny")
    _fake_run("tiny-run", cfg, [500.0, 20.0, 22.0, 21.0])
    out = plan_cli("cpu-tiny", env={"GPT2_COCKPIT_HOME": str(cockpit_home)}).stdout
    assert "time measured" in out and "21 ms/iter" in out and "run tiny-run" in out
    d = json.loads(plan_cli("cpu-tiny", "--json", "--ms-per-iter", "50",
                            env={"GPT2_COCKPIT_HOME": str(cockpit_home)}).stdout)
    assert d["ms_per_iter_measured"] == 50 and d["hours_measured"] == pytest.approx(50 * 2000 / 3.6e6)


# ---------------------------------------------------------------- the command as a user sees it


@pytest.mark.parametrize("args", [
    ["gpt2-40m-12gb"], ["gpt2-124m"], ["cpu-tiny"], ["gpt2-finetune"],
    ["gpt2-40m-12gb", "--gpu", "RTX 4070 Ti", "--price-per-kwh", "0.3"],
    ["gpt2-124m", "--gpu", "H100", "--gpus", "8"], ["shakespeare-char", "--gpu", "T4"],
])
def test_rows_fit_80_columns(args):
    proc = plan_cli(*args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, max(lines, key=len)


def test_plan_rows_for_the_4070_ti():
    rows = dict(plan_run(presets.load("gpt2-40m-12gb"), gpu=GpuSpec.named("RTX 4070 Ti")).rows())
    assert rows["parameters"].startswith("40.56M")
    assert rows["tokens/step"].startswith("524,288")
    assert rows["total tokens"].startswith("10.49B")
    assert "3.15 EFLOP" in rows["FLOPs total"]
    assert "fits" in rows["VRAM estimate"] and rows["time"].startswith("31.2 h at 35% MFU")  # 31.1 h + HellaSwag
    assert rows["HellaSwag"] == "41 evals x 10,042 items: 7 min of the time"
    assert rows["energy"].startswith("at most 8.90 kWh")


@pytest.mark.parametrize("args, message", [
    (["gpt2-40m-12gb", "--set", "train.micro_batch=abc"], "train.micro_batch"),
    (["gpt2-40m-12gb", "--set", "model.n_layers=3"], "model.n_layers"),
    (["gpt2-40m-12gb", "--set", "nonsense"], "KEY=VALUE"),
    (["no-such-preset"], "no-such-preset"),
    (["cpu-tiny", "--gpu", "Voodoo 3"], "Voodoo 3"),
    (["cpu-tiny", "--mfu", "0"], "--mfu"),
])
def test_user_mistakes_give_one_line(args, message):
    proc = plan_cli(*args)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert message in err and len(err.splitlines()) == 1 and proc.stdout == ""


def test_planner_never_imports_torch():
    code = ("import sys; import gpt2_cockpit.engine.machine.planner as p; assert 'torch' not in sys.modules; "
            "from gpt2_cockpit.engine import presets; "
            "[p.plan_run(presets.load(n)) for n in ('cpu-tiny', 'shakespeare-char', 'gpt2-40m-12gb', 'gpt2-finetune')]; "
            "p.measured_ms_per_iter(presets.load('cpu-tiny')); "
            "assert 'torch' not in sys.modules, 'plan_run imported torch'; "
            "assert 'textual' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
