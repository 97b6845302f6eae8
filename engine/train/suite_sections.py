"""The sections of `gpt2-cockpit bench --suite`, one function each, in the order they run.

Each takes the Suite (engine/train/suite.py: device, scratch folder, what earlier sections left) and
an Outcome to fill in as it goes (figures are numbers; notes are sentences); it raises Skip
with the reason where it cannot run, and anything else it raises is its failure. On a CPU the
pretrain models shrink to CPU_SHAPE (tiny), except in `memory`, whose fake tensors cost no
compute and keep the presets' real shapes.

Batches are random token ids (bench.SyntheticWorkload): no corpus and no tokenizer download.
The finetune section trains a byte-level BPE tokenizer and builds a random GPT-2 on the spot.

    python -m gpt2_cockpit.engine.train.suite_sections ddp-worker SPEC.json OUT.json
is the process the ddp section starts twice: alone, and as the one rank of a torchrun group.
"""

from __future__ import annotations

import gc
import json
import math
import os
import pickle
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import config as cfgmod
from .. import faults
from .dist import Dist
from .suite import GIB, Outcome, Skip, Suite

PRESETS = ("gpt2-124m", "gpt2-40m-12gb")  # the two pretrain presets the issue measures
MEMORY_TOLERANCE = 0.10  # the planner's VRAM estimate may be this far off the measured peak
MARKS = {  # what the GPU run is held against (issue #20)
    "tokens_per_sec_vs_nanogpt": 1.3, "oom_recovery_seconds": 3.0, "sample_seconds": 1.0, "ddp_ratio": 0.97,
    "llmc_tokens_per_sec_h100": 470_000,
}


def _timing(s: Suite) -> tuple[int, int]:
    """(warm-up steps, timed steps): enough for a stable median on a GPU, few on a CPU."""
    return (3, 10) if s.gpu else (1, 4)


def _sync(s: Suite) -> None:
    if s.gpu:
        import torch

        torch.cuda.synchronize()


def _free(s: Suite) -> None:
    """Give back what the last measurement held (call after dropping its references)."""
    gc.collect()
    if s.gpu:
        import torch

        torch.cuda.empty_cache()


def _stepper(s: Suite, cfg: cfgmod.Config, workload=None):
    """A Stepper on random ids (or `workload`), seeded as a run seeds it."""
    import torch

    from .bench import SyntheticWorkload
    from .step import Stepper

    torch.manual_seed(cfg.train.seed)
    return Stepper(cfg, workload if workload is not None else SyntheticWorkload(cfg), s.device)


def _measure(s: Suite, cfg: cfgmod.Config, setup: Callable[[Any], None] = lambda stepper: None) -> dict:
    """bench.measure_stepper on a fresh Stepper (`setup` may change it first: a lever off)."""
    from .bench import measure_stepper

    warmup, steps = _timing(s)
    stepper = _stepper(s, cfg)
    setup(stepper)
    try:
        return measure_stepper(cfg, stepper, steps, warmup)
    finally:
        del stepper
        _free(s)


def _shape_note(s: Suite, out: Outcome) -> None:
    if not s.gpu:
        out.note("on this CPU the models are tiny (2 layers, 2 heads, 64 wide, context 64, 256 symbols), "
                 "float32, no torch.compile: the figures prove the code paths, not speed")


# --------------------------------------------------------------------------- 1. env


def env(s: Suite, out: Outcome) -> None:
    """doctor's checks (a reason for each one that does not pass), the GPU and its peak for MFU."""
    from ..machine.doctor import exit_code, run_checks
    from ..machine.hardware import peak_tflops

    checks = run_checks()
    for status in ("pass", "warn", "fail"):
        out.figure(f"checks_{status}", sum(c.status == status for c in checks))
    for c in checks:
        if c.status != "pass":
            out.note(f"{c.name} [{c.status}]: {c.detail}" + (f" -> {c.remedy}" if c.remedy else ""))
    if not s.gpu:
        out.note("no CUDA GPU: MFU is n/a here (no peak to measure against)")
        return
    import torch

    name = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    peak = peak_tflops(name)
    out.figure("peak_bf16_tflops", peak)
    out.figure("gpu_memory_gib", props.total_memory / GIB)
    out.figure("compute_capability", props.major + props.minor / 10)
    out.note(f"{name}: MFU is measured against {peak:g} TFLOP/s dense bf16" if peak else
             f"{name} is not in the table of peaks: MFU is n/a (train.peak_tflops sets one)")
    if exit_code(checks):
        out.problem = "a check that GPU training needs failed (see the notes)"


# --------------------------------------------------------------------------- 2. nvml


NVML_FIELDS = ("util", "mem_used", "mem_total", "temp", "power")


def nvml(s: Suite, out: Outcome) -> None:
    """`gpu` events from a short real run: utilisation, memory, temperature and power are numbers."""
    if not s.gpu:
        raise Skip("no NVIDIA GPU: NVML has nothing to read here (the cockpit shows N/A)")
    from ..machine.gpustats import GpuSampler

    sampler = GpuSampler.create()
    if not sampler:
        out.problem = "NVML does not answer (nvidia-ml-py missing or no driver): every GPU figure would be N/A"
        return
    sampler.close()
    cfg = s.config("gpt2-40m-12gb", **{"train.compile": False, "train.micro_batch": 8, "train.max_iters": 100_000,
                                       "train.checkpoint_interval": 0, "train.log_interval": 1})
    started = time.monotonic()
    events = _train_run(s, cfg, "nvml", stop=lambda e, seen: (sum(x["type"] == "gpu" for x in seen) >= 2
                                                              or time.monotonic() - started > 20))
    readings = [e for e in events if e["type"] == "gpu"]
    out.figure("readings", len(readings))
    if not readings:
        out.problem = "the run logged no `gpu` event"
        return
    last = readings[-1]
    for key in NVML_FIELDS:
        value = last.get(key)
        out.figure(key if key not in ("mem_used", "mem_total") else f"{key}_gib",
                   value / GIB if key.startswith("mem") and value is not None else value)
    missing = [k for k in NVML_FIELDS if last.get(k) is None]
    if missing:
        out.problem = f"N/A in the `gpu` events: {', '.join(missing)}"


# --------------------------------------------------------------------------- 3. throughput


def throughput(s: Suite, out: Outcome) -> None:
    """Both presets at their micro-batch, grad_accum cut to 1: ms/iter, tokens/s, MFU, compile seconds."""
    for preset in PRESETS:
        cfg = s.config(preset)
        r = _measure(s, cfg)
        s.shared.setdefault("throughput", {})[preset] = r
        out.figure(f"{preset}.ms_per_iter", r["ms_per_iter"])
        out.figure(f"{preset}.tokens_per_sec", r["tokens_per_sec"])
        out.figure(f"{preset}.mfu", r["mfu"])
        if r["compile"]:  # the first step compiles; a step takes ms_per_iter besides
            out.figure(f"{preset}.compile_seconds", r["first_step_seconds"] - r["ms_per_iter"] / 1000)
        out.figure(f"{preset}.max_memory_gib", r.get("max_memory_gb"))
        out.note(f"{preset}: {r['micro_batch']} x {cfg.model.block_size} tokens per step, {r['dtype']}, "
                 f"compile {'on' if r['compile'] else 'off'}, median of {r['steps']} steps")
    _shape_note(s, out)
    if s.gpu:
        ours = s.shared["throughput"]["gpt2-124m"]["tokens_per_sec"]
        mark = MARKS["llmc_tokens_per_sec_h100"]
        out.note(f"gpt2-124m: {ours:,.0f} tokens/s against llm.c's ~{mark:,} per H100 ({ours / mark:.0%})")


# --------------------------------------------------------------------------- 4. nanogpt


def nanogpt(s: Suite, out: Outcome) -> None:
    """nanoGPT's train.py on gpt2-124m's model, batch, dtype and compile, between two timings of
    ours (alternated, so a change of clocks or load hits both); the ratio of tokens/s."""
    if s.nanogpt is None:
        raise Skip("no --nanogpt DIR given (a checkout of karpathy/nanoGPT to compare with)")
    cfg = s.config("gpt2-124m")
    ours = [s.shared.get("throughput", {}).get("gpt2-124m") or _measure(s, cfg)]
    theirs = _run_nanogpt(s, cfg)
    ours.append(_measure(s, cfg))
    ours_tps = statistics.median(r["tokens_per_sec"] for r in ours)
    out.figure("ours.tokens_per_sec", ours_tps)
    out.figure("nanogpt.tokens_per_sec", theirs["tokens_per_sec"])
    out.figure("nanogpt.ms_per_iter", theirs["ms_per_iter"])
    out.figure("nanogpt.last_loss", theirs["last_loss"])
    out.figure("ratio", ours_tps / theirs["tokens_per_sec"])
    out.note(f"nanoGPT from {s.nanogpt}: {theirs['iters']} iterations, median of iterations {theirs['from_iter']}+ "
             f"(the first compile and evaluate); ours: median of {len(ours)} measurements around it")
    if s.gpu:
        mark = MARKS["tokens_per_sec_vs_nanogpt"]
        out.note(f"ours / nanoGPT = {ours_tps / theirs['tokens_per_sec']:.2f} (mark: at least {mark})")
    _shape_note(s, out)


def _run_nanogpt(s: Suite, cfg: cfgmod.Config) -> dict:
    """Run DIR/train.py in a scratch folder (its data/ and configurator.py, random ids as
    train.bin/val.bin; without a meta.pkl nanoGPT's vocabulary is 50,304, as ours for GPT-2's
    tokenizer) and read its per-iteration times."""
    import numpy as np

    from ..data.tokenizers import GPT2_VOCAB
    from .step import resolve_dtype

    work = s.work / "nanogpt"
    data = work / "data" / "suite"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.train.seed)
    vocab = GPT2_VOCAB if cfg.data.tokenizer == "gpt2" else 256  # nanoGPT pads GPT-2's to 50,304 as we do
    for split, n in (("train", 4_000_000), ("val", 100_000)):
        rng.integers(0, vocab, n, dtype=np.uint16).tofile(data / f"{split}.bin")
    if vocab == 256:  # a char-level vocabulary, as our random ids on a CPU
        with open(data / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": vocab}, f)
    configurator = work / "configurator.py"  # train.py exec()s it from the working directory
    if not configurator.exists():
        configurator.symlink_to(s.nanogpt / "configurator.py")
    m, t = cfg.model, cfg.train
    iters = 20 if s.gpu else 6
    dtype = str(resolve_dtype(cfg, s.device)).replace("torch.", "")
    settings = {
        "dataset": "suite", "out_dir": str(work / "out"), "device": s.device, "dtype": dtype,
        "compile": bool(t.compile is True or (t.compile == "auto" and s.gpu)),
        "n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd, "block_size": m.block_size,
        "dropout": float(m.dropout), "bias": m.bias, "batch_size": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum, "max_iters": iters, "lr_decay_iters": iters,
        "warmup_iters": 2, "learning_rate": t.learning_rate, "min_lr": t.min_lr,
        "weight_decay": t.weight_decay, "beta2": t.beta2, "grad_clip": t.grad_clip,
        "eval_interval": 10 * iters, "eval_iters": 1, "log_interval": 1, "always_save_checkpoint": False,
        "wandb_log": False,
    }
    cmd = [sys.executable, str(s.nanogpt / "train.py")] + [f"--{k}={v}" for k, v in settings.items()]
    s.log(f"    nanoGPT: {' '.join(cmd[1:3])} ...")
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as many threads as ours
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300 if s.gpu else 120, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"nanoGPT's train.py exited with {proc.returncode}: {tail[0][:300]}")
    rows = [(int(i), float(loss), float(ms)) for i, loss, ms in
            re.findall(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms", proc.stdout, re.M)]
    from_iter = 3 if iters > 6 else 2
    times = [ms for i, _, ms in rows if i >= from_iter]
    if not times:
        raise RuntimeError("nanoGPT's train.py printed no 'iter N: loss X, time Yms' lines to time")
    ms = statistics.median(times)
    tokens = t.micro_batch * t.grad_accum * m.block_size
    return {"ms_per_iter": ms, "tokens_per_sec": tokens / (ms / 1000), "last_loss": rows[-1][1], "iters": iters,
            "from_iter": from_iter}


# --------------------------------------------------------------------------- 5. levers


def levers(s: Suite, out: Outcome) -> None:
    """Each speed lever on and off on gpt2-124m (eager, so each costs seconds), against the
    engine's defaults: compile, fused AdamW, the SDPA kernel, pinned memory, TF32."""
    import torch

    base = s.config("gpt2-124m", **{"train.compile": False})
    default_ms = _measure(s, base)["ms_per_iter"]  # fused AdamW, the SDPA kernel torch picks, pinned copies
    out.figure("default.ms_per_iter", default_ms)

    def lever(name: str, on_ms: float, off_ms: float) -> None:
        out.figure(f"{name}.on_ms", on_ms)
        out.figure(f"{name}.off_ms", off_ms)
        out.figure(f"{name}.speedup", off_ms / on_ms)

    if s.gpu:
        compiled = s.shared.get("throughput", {}).get("gpt2-124m") or _measure(s, s.config("gpt2-124m"))
        lever("compile", compiled["ms_per_iter"], default_ms)
    else:
        out.note("compile: skipped on a CPU (Inductor compiles C++ for minutes on two cores, and its speed "
                 "says nothing about a GPU)")

    lever("fused_adamw", default_ms, _measure(s, base, setup=_unfused_adamw)["ms_per_iter"])

    chosen = sdpa_choice(base, s.device)
    out.note(f"SDPA: torch picks {chosen} for this model's attention")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        if backend == chosen or (not s.gpu and backend in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION")):
            continue
        try:
            with sdpa_kernel(getattr(SDPBackend, backend)):
                other = _measure(s, base)["ms_per_iter"]
        except RuntimeError as e:  # not available for this GPU, dtype or shape
            out.note(f"SDPA {backend}: not usable here ({str(e).splitlines()[0][:120]})")
            continue
        lever(f"sdpa_{chosen.lower()}_vs_{backend.lower()}", default_ms, other)

    if s.gpu:
        lever("pinned_memory", default_ms, _measure(s, base, setup=_pageable_copies)["ms_per_iter"])
        fp32 = s.config("gpt2-124m", **{"train.compile": False, "train.dtype": "float32", "train.micro_batch": 8})
        before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            on = _measure(s, fp32)["ms_per_iter"]
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            off = _measure(s, fp32)["ms_per_iter"]
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
        lever("tf32_float32_run", on, off)
        out.note("max-autotune and CUDA graphs (mode=\"reduce-overhead\"): not measured, their compile alone "
                 "takes minutes, past this suite's budget")
    else:
        out.note("pinned memory, TF32: skipped on a CPU (no host-to-GPU copies, no TF32)")
    wins = [k[:-len(".speedup")] for k, v in out.figures.items() if k.endswith(".speedup") and v < 0.97]
    if wins and s.gpu:  # a CPU's tiny steps are too noisy to call
        out.note(f"off beats on (by more than 3%) for: {', '.join(wins)}; the GPU run decides the presets' defaults")
    _shape_note(s, out)


def _unfused_adamw(stepper) -> None:
    """torch's default AdamW (foreach on CUDA, a loop on a CPU) instead of the fused kernel."""
    import torch

    from .model import param_groups

    t = stepper.cfg.train
    stepper.optimizer = torch.optim.AdamW(param_groups(stepper.raw_model, t.weight_decay), lr=t.learning_rate,
                                          betas=(t.beta1, t.beta2), fused=False)


def _pageable_copies(stepper) -> None:
    """Batches copied to the GPU from pageable memory, blocking (no pin_memory, no non_blocking)."""
    stepper._to_device = lambda t: t.to(stepper.device)


def sdpa_choice(cfg: cfgmod.Config, device: str) -> str:
    """The SDPA kernel torch picks for this model's causal attention (FLASH_ATTENTION, MATH...)."""
    import torch
    from torch.nn.attention import SDPBackend

    from .step import resolve_dtype

    m = cfg.model
    dtype = resolve_dtype(cfg, device)
    q = torch.zeros(1, m.n_head, m.block_size, m.n_embd // m.n_head, device=device, dtype=dtype)
    try:
        choice = torch._fused_sdp_choice(q, q, q, None, m.dropout, True)  # private, but what SDPA itself asks
    except (AttributeError, RuntimeError):
        return "unknown"
    return SDPBackend(choice).name


# --------------------------------------------------------------------------- 6. memory


def memory(s: Suite, out: Outcome) -> None:
    """The planner's VRAM estimate against the measured peak of a training step, both presets at
    their real shapes: torch.cuda.max_memory_allocated on a GPU; on a CPU PyTorch's MemTracker
    over fake tensors (no memory, no compute), in float32 and under CPU bf16 autocast."""
    worst = 0.0
    for preset in PRESETS:
        rows = _memory_gpu(s, preset) if s.gpu else _memory_cpu(preset)
        for label, measured, planned in rows:
            error = planned / measured - 1
            worst = max(worst, abs(error))
            out.figure(f"{preset}.{label}.measured_gib", measured / GIB)
            out.figure(f"{preset}.{label}.planned_gib", planned / GIB)
            out.figure(f"{preset}.{label}.error_pct", 100 * error)
    if s.gpu:
        out.note("planned: planner.estimate_vram without its 0.5 GiB for the CUDA context, which "
                 "max_memory_allocated does not count either")
    else:
        out.note("tracked on the CPU: MemTracker (torch.distributed._tools.mem_tracker) over a warmed-up step "
                 "built under FakeTensorMode (optimizer state included); planned: planner.estimate_vram for the "
                 "same step without the CUDA context")
        out.note("what CPU kernels change: CPU autocast casts its own list of ops (not CUDA's), attention runs "
                 "a CPU flash kernel (no T x T matrix, as flash on sm_80+ keeps none), and no CUDA context, "
                 "cuBLAS workspace or allocator fragmentation is counted; torch.compile (the GPU default: the loss "
                 "fused, 8 B per logit instead of 16) cannot run under the tracker, so it is checked on a GPU only")
    out.note("at the peak (the start of backward, where the loss's fp32 gradients meet every saved "
             "activation) a one-micro-batch step holds no gradients yet; the planner counts them "
             "(4 B/param) because from the second micro-batch of an accumulating step they are there")
    out.figure("worst_error_pct", 100 * worst)
    if worst > MEMORY_TOLERANCE:
        out.problem = f"the planner is {100 * worst:.0f}% off the measured peak (more than {MEMORY_TOLERANCE:.0%})"


def _planned(cfg: cfgmod.Config, dtype: str, compiled: bool) -> float:
    from ..machine import planner

    parts = planner.estimate_vram(planner.model_shape(cfg), cfg.train.micro_batch, dtype, compiled, on_gpu=True)
    return sum(parts.values()) - parts["overhead"]


def _memory_gpu(s: Suite, preset: str) -> list[tuple[str, float, float]]:
    """(label, measured bytes, planned bytes): compiled (the GPU default) and eager."""
    import torch

    from .step import lr_at

    rows = []
    for compiled in (True, False):
        cfg = s.config(preset, **{"train.compile": compiled})
        measured_gib = s.shared.get("throughput", {}).get(preset, {}).get("max_memory_gb")
        if compiled and measured_gib:  # the throughput section's timed steps, the same config: no second compile
            rows.append(("compiled", measured_gib * GIB, _planned(cfg, s.shared["throughput"][preset]["dtype"], True)))
            continue
        stepper = _stepper(s, cfg)
        for k in range(2):  # compile, allocator warm-up, optimizer state
            stepper.step(k, lr_at(k, cfg.train))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        stepper.step(2, lr_at(2, cfg.train))
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated()
        dtype = str(stepper.dtype).replace("torch.", "")
        del stepper
        _free(s)
        rows.append(("compiled" if compiled else "eager", float(measured), _planned(cfg, dtype, compiled)))
    return rows


def _memory_cpu(preset: str) -> list[tuple[str, float, float]]:
    from ..machine import planner
    from .. import presets

    cfg = presets.load(preset)
    shape = planner.model_shape(cfg)
    rows = []
    fp32 = planner.estimate_vram(shape, cfg.train.micro_batch, "float32", False, on_gpu=False)
    rows.append(("float32", float(tracked_peak(cfg, None)), sum(fp32.values())))
    rows.append(("bfloat16", float(tracked_peak(cfg, "bfloat16")), _planned(cfg, "bfloat16", False)))
    return rows


def tracked_peak(cfg: cfgmod.Config, autocast: str | None) -> int:
    """Peak bytes of one training step (after a warm-up step, so AdamW's state exists) of cfg's
    model at its micro-batch, as PyTorch's MemTracker counts them on fake CPU tensors
    (engine/machine/memtrack.py). Fake CUDA tensors abort a CPU build of torch in backward; fake CPU ones
    matched a real CPU step."""
    from ..machine.memtrack import TrackerUnavailable
    from ..machine.memtrack import tracked_peak as track

    try:
        return track(cfg, autocast)
    except TrackerUnavailable as e:
        raise Skip(str(e)) from None


# --------------------------------------------------------------------------- 7. oom


def oom(s: Suite, out: Outcome) -> None:
    """train.memory_limit_gb: gpt2-40m-12gb with a 12 GB cap (compile on) fits or recovers from a
    real CUDA OOM; then a cap that cannot hold the preset's micro-batch, so it must recover.
    On a CPU the cap does not apply (the run says so) and GPT2_COCKPIT_FAKE_OOM_TOKENS raises a
    real torch.OutOfMemoryError instead: the recovery path is the same."""
    if s.gpu:
        cfg = s.config("gpt2-40m-12gb", **{"train.memory_limit_gb": 12.0, "train.grad_accum": 2})
        _rehearse(s, cfg, steps=4, out=out, label="12gb")
        # 60% of what micro-batch 16 took: too little for it, enough for 8 (weights and AdamW are ~0.6 GiB)
        tight = 0.6 * out.figures["12gb.max_allocated_gib"]
        cfg = s.config("gpt2-40m-12gb", **{"train.memory_limit_gb": round(tight, 2), "train.grad_accum": 2})
        _rehearse(s, cfg, steps=4, out=out, label="tight")
        if not out.figures.get("tight.ooms"):
            out.problem = f"the {tight:.1f} GiB cap did not run out of memory: no OOM was rehearsed"
        recovery = out.figures.get("tight.oom_to_next_step_seconds")
        if recovery is not None:
            out.note(f"OOM to the next good step: {recovery:.1f} s (mark: at most {MARKS['oom_recovery_seconds']:g} s, "
                     f"with no step lost); with compile on, the smaller micro-batch compiles anew")
        return
    cfg = s.config("gpt2-40m-12gb", **{"train.memory_limit_gb": 12.0, "train.micro_batch": 4, "train.grad_accum": 2})
    fake = cfg.train.micro_batch * cfg.model.block_size // 2
    before = os.environ.get(faults.OOM_TOKENS)
    os.environ[faults.OOM_TOKENS] = str(fake)
    faults.reset()  # faults are read once per process: read them again
    out.note(f"a CPU: {faults.OOM_TOKENS}={fake} raises a real torch.OutOfMemoryError at micro-batch "
             f"{cfg.train.micro_batch}; on a GPU this section caps memory at 12 GB and meets a real CUDA OOM")
    try:
        _rehearse(s, cfg, steps=3, out=out, label="fake")
    finally:  # the suite's runner restores the environment too, but not the faults read from it
        if before is None:
            os.environ.pop(faults.OOM_TOKENS, None)
        else:
            os.environ[faults.OOM_TOKENS] = before
        faults.reset()
    if not out.figures.get("fake.ooms"):
        out.problem = "the fake OOM did not happen"


def _rehearse(s: Suite, cfg: cfgmod.Config, steps: int, out: Outcome, label: str) -> None:
    """Train `steps` steps with the Stepper, timing each re-split from the OOM that caused it to
    the end of the step it redid."""
    import torch

    from .step import lr_at

    stepper = _stepper(s, cfg)
    if stepper.memory_note:
        out.note(f"{label}: {stepper.memory_note}")
    ooms: list[float] = []
    resplit = stepper._resplit

    def timed_resplit():  # called right after the micro-batch that ran out of memory
        ooms.append(time.perf_counter())
        return resplit()

    stepper._resplit = timed_resplit
    split = f"{cfg.train.micro_batch} x {cfg.train.grad_accum}"  # before: an OOM re-splits cfg.train itself
    limit = cfg.train.memory_limit_gb
    recovery, lost, reserved, settled = [], 0, [], 0  # settled: the step after which no OOM came
    for k in range(steps):
        before = len(ooms)
        result = stepper.step(k, lr_at(k, stepper.cfg.train))
        _sync(s)
        if len(ooms) > before:
            recovery.append(time.perf_counter() - ooms[before])
            settled = k
        lost += not result.applied
        if s.gpu:
            reserved.append(torch.cuda.memory_reserved())
    t = stepper.cfg.train
    out.figure(f"{label}.limit_gib", limit)
    out.figure(f"{label}.ooms", len(ooms))
    out.figure(f"{label}.micro_batch", t.micro_batch)
    out.figure(f"{label}.grad_accum", t.grad_accum)
    out.figure(f"{label}.steps_lost", lost)
    if recovery:
        out.figure(f"{label}.oom_to_next_step_seconds", max(recovery))
    if s.gpu:
        out.figure(f"{label}.max_allocated_gib", torch.cuda.max_memory_allocated() / GIB)
        # from the step that settled the micro-batch (and compiled it) to the last: still growing?
        out.figure(f"{label}.reserved_growth_gib", (reserved[-1] - reserved[settled]) / GIB)
    out.note(f"{label}: micro-batch x accumulation {split} -> {t.micro_batch} x {t.grad_accum} after "
             f"{len(ooms)} OOM(s), {lost} step(s) lost")
    del stepper
    _free(s)
    if s.gpu:
        torch.cuda.reset_peak_memory_stats()


# --------------------------------------------------------------------------- 8. sampling


def sampling(s: Suite, out: Outcome) -> None:
    """200 new tokens from gpt2-124m's model with the KV cache, between training steps."""
    from .. import sampling as limits
    from .step import lr_at

    overrides: dict[str, Any] = {"train.compile": False}  # compile never touches generation (the raw model)
    if not s.gpu:
        overrides["model.block_size"] = 256  # 200 new tokens within the context, as on the GPU
    cfg = s.config("gpt2-124m", **overrides)
    stepper = _stepper(s, cfg)
    for k in range(2):
        stepper.step(k, lr_at(k, cfg.train))
    _sync(s)
    t0 = time.perf_counter()
    generation = stepper.start_generation("", 200, limits.TEMPERATURE, limits.TOP_K, seed=cfg.train.seed)
    generation.advance(math.inf)
    _sync(s)
    seconds = time.perf_counter() - t0
    after = stepper.step(2, lr_at(2, cfg.train))  # the run goes on after the sample
    out.figure("new_tokens", len(generation.new))
    out.figure("seconds", seconds)
    out.figure("tokens_per_sec", len(generation.new) / seconds)
    out.figure("loss_after", after.loss)
    if len(generation.new) != 200:
        out.problem = f"{len(generation.new)} tokens came instead of 200"
    if s.gpu:
        out.note(f"200 tokens in {seconds:.2f} s (mark: at most {MARKS['sample_seconds']:g} s)")
    _shape_note(s, out)


# --------------------------------------------------------------------------- 8b. hellaswag


def hellaswag(s: Suite, out: Outcome) -> None:
    """HellaSwag's scoring on gpt2-124m's model (random weights; rows of random ids shaped as the
    validation set's, ~85 tokens each: nothing downloaded): items/s, the seconds of one full
    evaluation (10,042 items), and its MFU against the planner's, which counts HellaSwag's forward
    FLOPs at training's MFU (planner.hellaswag_cost)."""
    import random

    from ..data.tokenizers import GPT2_VOCAB
    from ..machine.hardware import peak_tflops
    from ..machine.planner import DEFAULT_MFU, HELLASWAG_ROW_TOKENS
    from . import hellaswag as hs

    cfg = s.config("gpt2-124m", **{"train.compile": False})  # scoring runs the raw model
    stepper = _stepper(s, cfg)
    raw, window = stepper.raw_model, cfg.model.block_size
    vocab = GPT2_VOCAB if cfg.data.tokenizer == "gpt2" else stepper.workload.vocab  # not the padding rows
    model = hs.Model(raw, lambda x: raw(x, every_position=True)[0], lambda text: [], window,
                     vocab, s.device, stepper.autocast)
    rng = random.Random(cfg.train.seed)
    rows = []
    for _ in range(2000 if s.gpu else 60):
        ctx = [rng.randrange(vocab) for _ in range(rng.randint(40, 90))]
        tokens, starts = [], []
        for _ending in range(4):
            row = ctx + [rng.randrange(vocab) for _ in range(rng.randint(10, 35))]
            cut = max(0, len(row) - window)  # as hs.encode cuts: from the left
            tokens.append(row[cut:])
            starts.append(max(1, len(ctx) - cut))
        rows.append(hs.Rows(tokens, starts, rng.randrange(4)))
    hs.score(model, rows[:len(rows) // 10])  # warm-up: kernels, allocator
    _sync(s)
    result = hs.score(model, rows)
    _sync(s)
    params = sum(p.numel() for n, p in raw.named_parameters() if "wpe" not in n)  # the planner's N
    tokens = sum(len(t) for r in rows for t in r.tokens)
    out.figure("items", result.n)
    out.figure("items_per_sec", result.items_per_sec)
    out.figure("mean_row_tokens", tokens / (4 * len(rows)))
    out.figure("full_eval_seconds", hs.VAL_ITEMS / result.items_per_sec)
    peak = peak_tflops(_gpu_name()) if s.gpu else None
    if peak:
        mfu = tokens * 2 * params / result.seconds / (peak * 1e12)
        planned = hs.VAL_ITEMS * 4 * min(HELLASWAG_ROW_TOKENS, window) * 2 * params / (peak * 1e12 * DEFAULT_MFU)
        out.figure("mfu", mfu)
        out.figure("planned_full_eval_seconds", planned)
        out.note(f"one evaluation of the 10,042 items: {hs.VAL_ITEMS / result.items_per_sec:.1f} s measured, "
                 f"{planned:.1f} s planned (the planner counts it at MFU {DEFAULT_MFU:g}; measured {mfu:.2f})")
    del stepper, model
    _free(s)
    _shape_note(s, out)


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


# --------------------------------------------------------------------------- 9. resume


def resume(s: Suite, out: Outcome) -> None:
    """|Δloss| of a run stopped halfway and resumed from its checkpoint against an unbroken run
    (the real loop, checkpoint files and restart; random ids depend on the step alone)."""
    total = 12 if s.gpu else 8
    half = total // 2
    sets = {"train.max_iters": total, "train.lr_decay_iters": total, "train.warmup_iters": 2,
            "train.log_interval": 1, "train.checkpoint_interval": 0, "train.compile": False}
    if s.gpu:
        sets.update({"train.micro_batch": 8, "train.grad_accum": 2})
    cfg = s.config("gpt2-40m-12gb", **sets)
    unbroken = _step_losses(_train_run(s, cfg, "unbroken"))
    _train_run(s, cfg, "broken", stop=lambda e, seen: e["type"] == "step" and e["iter"] >= half)
    events = _train_run(s, None, "broken", resume=True)
    resumed_from = [e.get("resumed_from") for e in events if e["type"] == "run"][-1]
    resumed = {i: v for i, v in _step_losses(events).items() if i > (resumed_from or 0)}
    if resumed_from is None or not resumed or set(resumed) - set(unbroken):
        raise RuntimeError(f"the resumed run did not go on from a checkpoint (resumed_from {resumed_from}, "
                           f"iterations {sorted(resumed)})")
    deltas = [abs(resumed[i] - unbroken[i]) for i in sorted(resumed)]
    out.figure("resumed_from", resumed_from)
    out.figure("steps_compared", len(deltas))
    out.figure("max_abs_delta_loss", max(deltas))
    out.figure("final_abs_delta_loss", deltas[-1])
    out.figure("bitwise_equal", all(d == 0 for d in deltas))
    out.note(f"{total} steps unbroken against {resumed_from} + stop + resume (compile off, "
             f"{'bf16 autocast' if s.gpu else 'float32'})")
    if s.gpu and max(deltas) > 0:
        out.note("not bitwise: CUDA kernels with atomics (embedding backward, some reductions) differ run to run; "
                 "torch.use_deterministic_algorithms(True) with CUBLAS_WORKSPACE_CONFIG=:4096:8 would pin them "
                 "at some speed")
    _shape_note(s, out)


def _step_losses(events: list[dict]) -> dict[int, float]:
    return {e["iter"]: e["loss"] for e in events if e["type"] == "step"}


def _train_run(s: Suite, cfg: cfgmod.Config | None, name: str, stop=None, resume: bool = False) -> list[dict]:
    """Train a run as the run process does (loop.train with a RunOwner: events, checkpoints, GPU
    readings) on random ids, in this process. `stop(event, events so far)` True asks it to stop
    as `gpt2-cockpit stop` does; resume=True restarts run `name` from its newest checkpoint."""
    from . import checkpoint as ckpt
    from ..runs import rundir as runs
    from ..runs.events import read_all
    from .loop import train
    from .owner import RunOwner

    state = None
    if resume:
        run = runs.RunDir(runs.runs_dir() / name)
        cfg = run.config()
        _, state = ckpt.load_latest(run.checkpoints)
    else:
        run = runs.create(cfg, name)
    owner = RunOwner(run)
    seen: list[dict] = []
    if stop is not None:
        def listener(event: dict) -> None:
            seen.append(event)
            if stop(event, seen):
                owner.request_stop("stopped by the suite")

        owner.listeners.append(listener)  # before open(): its thread logs the first GPU reading at once
    owner.open()
    try:
        train(_stepper(s, cfg), owner, resume=state)
    finally:
        owner.close()
        _free(s)
    return read_all(run.events_path)


# --------------------------------------------------------------------------- 10. finetune


WORDS = ("the model reads a token and the loss falls as the step goes on while the card runs warm "
         "small large quick slow data text word line batch layer head weight gradient sample cache "
         "train eval learn rate decay warm cool night day river stone cloud light dark green blue").split()


def finetune(s: Suite, out: Outcome) -> None:
    """The finetune engine (bf16 on a GPU) on a random GPT-2-small-shaped model and a tokenizer
    built here, against a plain Hugging Face Trainer with the same model, data, batch and dtype."""
    folder, corpus = _build_hf_gpt2(s)
    sets: dict[str, Any] = {"model.pretrained": str(folder), "data.source": str(corpus), "train.epochs": 0,
                            "train.max_iters": 1000, "train.compile": False}
    if s.gpu:
        sets["train.grad_accum"] = 4  # the preset's 4 x 4 blocks of 512
    cfg = s.config("gpt2-finetune", **sets)
    from .bench import measure_stepper
    from .finetune import FinetuneWorkload

    warmup, steps = _timing(s)
    workload = FinetuneWorkload(cfg)
    stepper = _stepper(s, cfg, workload)
    ours = measure_stepper(cfg, stepper, steps, warmup)
    del stepper
    _free(s)
    out.figure("ours.tokens_per_sec", ours["tokens_per_sec"])
    out.figure("ours.ms_per_iter", ours["ms_per_iter"])
    shape = ("12 layers x 768, 1,024 positions, vocabulary 50,257" if s.gpu
             else "2 layers x 64, 128 positions, the tokenizer's own vocabulary")
    out.note(f"a random GPT-2 ({shape}) and a BPE tokenizer trained here; "
             f"{cfg.train.micro_batch} x {cfg.train.grad_accum} blocks of {cfg.model.block_size}, {ours['dtype']}, "
             f"compile off on both sides (the Trainer's default)")
    try:
        import accelerate  # noqa: F401  (the Trainer needs it)
    except ImportError:
        out.note("Hugging Face Trainer: not compared, `accelerate` is not installed (pip install accelerate)")
        return
    theirs = _trainer_tokens_per_sec(s, cfg, workload, folder, warmup, steps)
    out.figure("trainer.tokens_per_sec", theirs)
    out.figure("ratio", ours["tokens_per_sec"] / theirs)


def _build_hf_gpt2(s: Suite) -> tuple[Path, Path]:
    """A model folder (random GPT2LMHeadModel + byte-level BPE tokenizer) and a text file of
    one-line samples, both written into the suite's scratch folder."""
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))) + "."
             for _ in range(20_000 if s.gpu else 3_000)]
    corpus = s.work / "finetune.txt"
    corpus.write_text("\n".join(lines) + "\n")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>")
    shape = (dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024) if s.gpu
             else dict(n_layer=2, n_head=2, n_embd=64, n_positions=128))
    torch.manual_seed(0)
    vocab = 50257 if s.gpu else len(tok)  # GPT-2's on a GPU; on a CPU its output layer would take seconds
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, bos_token_id=tok.eos_token_id,
                                       eos_token_id=tok.eos_token_id, **shape))
    folder = s.work / "gpt2-random"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, corpus


def _trainer_tokens_per_sec(s: Suite, cfg: cfgmod.Config, workload, folder: Path, warmup: int, steps: int) -> float:
    """tokens/s of transformers.Trainer on the same model, rows, batch and precision."""
    import torch
    from transformers import GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    t, T = cfg.train, cfg.model.block_size
    rows = workload.data.blocks("train", workload.train_block_indices(0, (warmup + steps) * t.micro_batch
                                                                      * t.grad_accum), T)
    dataset = [{"input_ids": torch.from_numpy(r[:-1]), "labels": torch.from_numpy(r[:-1])} for r in rows]
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(s)
            ends.append(time.perf_counter())

    from .step import resolve_dtype

    precision = resolve_dtype(cfg, s.device)  # the model loads in float32 on both sides; autocast does the rest
    args = TrainingArguments(
        output_dir=str(s.work / "trainer"), per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.grad_accum, max_steps=warmup + steps, learning_rate=t.learning_rate,
        weight_decay=t.weight_decay, adam_beta1=t.beta1, adam_beta2=t.beta2, max_grad_norm=t.grad_clip,
        warmup_steps=t.warmup_iters, bf16=precision == torch.bfloat16, fp16=precision == torch.float16,
        use_cpu=not s.gpu, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=t.seed)
    model = GPT2LMHeadModel.from_pretrained(folder)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Clock()])
    trainer.train()
    del trainer, model
    _free(s)
    intervals = [b - a for a, b in zip(ends[warmup - 1:], ends[warmup:])] if warmup else []
    if not intervals:
        raise RuntimeError("the Trainer reported too few steps to time")
    return t.micro_batch * t.grad_accum * T / statistics.median(intervals)


# --------------------------------------------------------------------------- 11. ddp


def ddp(s: Suite, out: Outcome) -> None:
    """A one-rank torchrun group (NCCL on a GPU, gloo on a CPU; the loss all-reduce and the
    gradient buckets) against the single process: throughput ratio and equal losses."""
    from ..runs.launch import torchrun_command

    sets: dict[str, Any] = {"train.grad_accum": 4 if s.gpu else 2}
    cfg = s.config("gpt2-124m", **sets)
    warmup, steps = _timing(s)
    import torch

    spec = s.work / "ddp-spec.json"
    spec.write_text(json.dumps({"config": cfgmod.to_raw(cfg), "warmup": warmup, "steps": steps,
                                "threads": torch.get_num_threads()}))
    module = ["-m", "gpt2_cockpit.engine.train.suite_sections", "ddp-worker", str(spec)]
    timeout = 300 if s.gpu else 120
    single = _worker(s, [sys.executable] + module + [str(s.work / "single.json")], timeout)
    group = _worker(s, torchrun_command() + ["--standalone", "--nproc_per_node=1"] + module
                    + [str(s.work / "group.json")], timeout)
    deltas = [abs(a - b) for a, b in zip(single["losses"], group["losses"])]
    out.figure("single.tokens_per_sec", single["tokens_per_sec"])
    out.figure("torchrun.tokens_per_sec", group["tokens_per_sec"])
    out.figure("ratio", group["tokens_per_sec"] / single["tokens_per_sec"])
    out.figure("max_abs_delta_loss", max(deltas))
    out.note(f"torchrun, one rank, {group['backend']}: the loss all-reduce and the gradients in "
             f"{group['buckets']} bucket(s) of at most 25 MB; {cfg.train.micro_batch} x {cfg.train.grad_accum} "
             f"micro-batches, {steps} timed steps")
    if s.gpu:
        out.note(f"torchrun / single = {group['tokens_per_sec'] / single['tokens_per_sec']:.3f} "
                 f"(mark: at least {MARKS['ddp_ratio']})")
    if max(deltas) > 1e-3:
        out.problem = f"the losses differ by up to {max(deltas):.2g} between the two"
    _shape_note(s, out)


def _worker(s: Suite, cmd: list[str], timeout: float) -> dict:
    result = Path(cmd[-1])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}: {tail[0][:300]}")
    return json.loads(result.read_text())


@dataclass
class OneRankGroup(Dist):
    """torchrun with one rank, taking the group's road anyway (Dist skips the collectives for a
    group of one): the loss and OOM flag all-reduced, the gradients averaged in buckets."""

    @property
    def enabled(self) -> bool:
        return True


def ddp_worker(argv: list[str]) -> int:
    """Train the spec's steps alone (no torchrun) or as a one-rank group (under torchrun); write
    losses and tokens/s to OUT."""
    spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    import torch

    from .bench import SyntheticWorkload
    from .dist import GRAD_BUCKET_BYTES, grad_buckets
    from .step import Stepper, lr_at, resolve_device

    torch.set_num_threads(spec["threads"])
    cfg = cfgmod.from_dict(spec["config"], origin=spec_path)
    group = "RANK" in os.environ
    dist = OneRankGroup(0, int(os.environ.get("LOCAL_RANK", "0")), 1) if group else Dist()
    dist.init()
    device = resolve_device(cfg, dist)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.train.seed)
    stepper = Stepper(cfg, SyntheticWorkload(cfg), device, dist)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    losses, times = [], []
    for k in range(spec["warmup"] + spec["steps"]):
        sync()
        t0 = time.perf_counter()
        losses.append(stepper.step(k, lr_at(k, cfg.train)).loss)
        sync()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times[spec["warmup"]:]) * 1000
    backend = None
    if group:
        import torch.distributed as tdist

        backend = str(tdist.get_backend())
    Path(result_path).write_text(json.dumps({
        "losses": losses, "ms_per_iter": ms, "tokens_per_sec": stepper.tokens_per_step / (ms / 1000),
        "backend": backend, "buckets": len(grad_buckets(stepper.params, GRAD_BUCKET_BYTES)),  # as the gradients'
    }))
    dist.close()
    return 0


# --------------------------------------------------------------------------- the list


SECTIONS: dict[str, Callable[[Suite, Outcome], None]] = {
    "env": env, "nvml": nvml, "throughput": throughput, "nanogpt": nanogpt, "levers": levers, "memory": memory,
    "oom": oom, "sampling": sampling, "hellaswag": hellaswag, "resume": resume, "finetune": finetune, "ddp": ddp,
}


def _main(argv: list[str]) -> int:
    if argv[:1] == ["ddp-worker"] and len(argv) == 3:
        code = ddp_worker(argv[1:])
        sys.stdout.flush()
        sys.stderr.flush()
        if "RANK" in os.environ:  # a torchrun rank: no interpreter teardown of the group's threads
            os._exit(code)
        return code
    raise SystemExit("usage: python -m gpt2_cockpit.engine.train.suite_sections ddp-worker SPEC.json OUT.json")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
