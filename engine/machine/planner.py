"""The planner: what a config will cost before you run it. Arithmetic only, no torch.

    plan = plan_run(presets.load("gpt2-40m-12gb"), gpu=GpuSpec.named("RTX 4070 Ti"))
    plan.rows()      # [(label, value), ...] for the cockpit's plan pane and `gpt2-cockpit plan`
    plan.to_dict()   # `gpt2-cockpit plan --json`

Parameters are counted from the model's shape, tokens from the batch arithmetic, FLOPs as
6·N + 12·L·T·d per token (hardware.flops_per_token), VRAM from a per-tensor account of what
training keeps on the GPU (estimate_vram, below), time from an assumed MFU on the GPU's peak
(or from a measured ms/iter), HellaSwag evaluations included (hellaswag_cost), energy at the
GPU's power limit.

The cockpit imports this module, and the cockpit never loads torch: keep it that way. data.py
(torch-free, but it brings numpy) is imported only inside the functions that need it, so the
command line builds its parser without paying for it.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import config as cfgmod
from ..errors import UserError
from ..fmt import fmt_hours, fmt_ms, fmt_si
from .hardware import display_name, known_gpu, memory_gb_from_name, peak_tflops
from .hardware import flops_per_token as _flops_per_token
from .nvml import probe as nvml_probe

DEFAULT_MFU = 0.35  # a well-tuned GPT-2 run with torch.compile + flash attention gets 0.35-0.5 on
#                     A100/H100; small models (d=384) and GeForce cards sit lower, so be modest
TOKENS_PER_PARAM_OPTIMAL = 20  # Chinchilla (Hoffmann et al. 2022): ~20 tokens per parameter
GIB = 1024 ** 3
CUDA_CONTEXT_GIB = 0.5  # CUDA context, cuBLAS workspaces and allocator slack, per GPU
FIT_FRACTION = 0.95  # leave 5% of VRAM for fragmentation and the odd temporary
PRICE_ENV = "GPT2_COCKPIT_PRICE_PER_KWH"

# Hugging Face GPT-2 checkpoints: (n_layer, n_head, n_embd); vocab 50257, 1024 positions, biases.
HF_GPT2 = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
    "distilgpt2": (6, 12, 768),
}
CHAR_VOCAB_GUESS = 256  # char-level before the corpus is tokenized: the corpus decides
# A HellaSwag validation row (context + " " + one ending) is ~85 GPT-2 tokens on average; a
# char-level model reads ~4 characters per GPT-2 token of English. Rows are cut to the context window.
HELLASWAG_ROW_TOKENS = 85
CHARS_PER_TOKEN = 4


# --------------------------------------------------------------------------- the model's shape


@dataclass
class ModelShape:
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int  # rows of the position embedding (pretrain: block_size; HF GPT-2: 1024)
    block_size: int  # context length trained on
    vocab_size: int
    bias: bool
    dropout: float
    vocab_note: str  # where vocab_size came from, for the reader
    hf: bool = False  # a Hugging Face GPT2LMHeadModel (finetune) rather than engine/train/model.py


def _char_vocab(cfg: cfgmod.Config) -> tuple[int, str]:
    """The cached corpus's vocabulary if it was tokenized already, else a guess."""
    from ..data.shards import cached_vocab_size# the token cache's meta.json

    v = cached_vocab_size(cfg)
    if v:
        return int(v), f"char, {v} symbols in the cached corpus"
    return CHAR_VOCAB_GUESS, f"char, ~{CHAR_VOCAB_GUESS} guessed (the corpus decides)"


def _hf_shape(cfg: cfgmod.Config) -> ModelShape:
    """A finetune's architecture: a hub GPT-2 size by name, or a local folder's config.json."""
    from ..data.tokenizers import GPT2_VOCAB

    name = cfg.model.pretrained.strip()
    key = name.split("/")[-1] if name.startswith(("openai-community/", "distilbert/")) else name
    if key in HF_GPT2:
        n_layer, n_head, n_embd = HF_GPT2[key]
        return ModelShape(n_layer, n_head, n_embd, 1024, cfg.model.block_size, GPT2_VOCAB, True, 0.1,
                          f"GPT-2 BPE, {GPT2_VOCAB:,} ({key})", hf=True)
    path = Path(name).expanduser() / "config.json"
    adapter = Path(name).expanduser() / "adapter_config.json"
    if not path.is_file() and adapter.is_file():  # a LoRA run's model/: the shape of the model it adapts
        try:
            base = json.loads(adapter.read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{adapter}: no base_model_name_or_path ({e.__class__.__name__}: {e})") from None
        return _hf_shape(cfgmod.with_overrides(cfg, {"model.pretrained": str(base)}))
    if not path.is_file():
        sizes = ", ".join(HF_GPT2)
        raise UserError(f"model.pretrained = {name!r}: the planner knows the hub GPT-2 sizes ({sizes}) "
                        f"and local folders with a config.json, and this is neither")
    try:
        hc = json.loads(path.read_text(encoding="utf-8"))
        shape = ModelShape(int(hc["n_layer"]), int(hc["n_head"]), int(hc["n_embd"]), int(hc.get("n_positions", 1024)),
                           cfg.model.block_size, int(hc["vocab_size"]), True, float(hc.get("resid_pdrop", 0.1)),
                           f"{hc['vocab_size']:,} from {path}", hf=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a GPT-2 config.json ({e.__class__.__name__}: {e})") from None
    return shape


def model_shape(cfg: cfgmod.Config, vocab_size: int | None = None) -> ModelShape:
    if cfg.engine == "finetune":
        shape = _hf_shape(cfg)
        if vocab_size:
            shape.vocab_size, shape.vocab_note = vocab_size, f"{vocab_size:,} (given)"
        return shape
    m = cfg.model
    if vocab_size:
        note = f"{vocab_size:,} (given)"
    elif cfg.data.tokenizer == "gpt2":
        from ..data.tokenizers import GPT2_VOCAB, GPT2_VOCAB_PADDED

        vocab_size = GPT2_VOCAB_PADDED
        note = f"GPT-2 BPE, {GPT2_VOCAB:,} padded to {GPT2_VOCAB_PADDED:,}"
    else:
        vocab_size, note = _char_vocab(cfg)
    return ModelShape(m.n_layer, m.n_head, m.n_embd, m.block_size, m.block_size, vocab_size, m.bias, m.dropout, note)


def _param_counts(s: ModelShape) -> dict[str, int]:
    d = s.n_embd
    # per block: LayerNorm gains 2d; attention c_attn d·3d + c_proj d·d; MLP c_fc d·4d + c_proj 4d·d
    per_layer = 2 * d + 12 * d * d
    if s.bias:  # LayerNorm biases 2d; Linear biases 3d + d + 4d + d
        per_layer += 2 * d + 9 * d
    ln_f = d * (2 if s.bias else 1)
    wte = s.vocab_size * d  # tied with lm_head: one matrix
    wpe = s.n_positions * d
    body = s.n_layer * per_layer + ln_f
    return {"params": body + wte, "params_total": body + wte + wpe, "params_non_embedding": body}


def count_params(cfg: cfgmod.Config, vocab_size: int | None = None) -> tuple[int, int]:
    """(parameters without position embeddings, as nanoGPT's get_num_params reports; all parameters).

    The token embedding is counted (once: it is the output layer too). GPT-2 small from the
    hub: (123,653,376, 124,439,808); without any embedding it would be 85,056,000.
    """
    c = _param_counts(model_shape(cfg, vocab_size))
    return c["params"], c["params_total"]


# --------------------------------------------------------------------------- the GPU


@dataclass
class GpuSpec:
    name: str
    mem_total_gb: float | None  # GiB
    power_limit_w: float | None
    peak_tflops: float | None  # dense bf16 tensor TFLOP/s (hardware.peak_tflops)
    bf16: bool = True
    source: str = "detected"  # "detected" (NVML) or "--gpu" (a GPU you don't have)

    @classmethod
    def detect(cls, nvml=None, peak_override: float = 0.0) -> "GpuSpec | None":
        """This machine's first GPU through NVML (no torch); None without one."""
        gpus = nvml_probe(nvml).gpus
        if not gpus:
            return None
        g = gpus[0]
        known = known_gpu(g.name)
        bf16 = g.compute_capability >= (8, 0) if g.compute_capability else (known.bf16 if known else True)
        return cls(g.name, g.mem_total / GIB if g.mem_total else (known.mem_gb if known else None),
                   g.power_limit_w or (known.watts if known else None), peak_tflops(g.name, peak_override),
                   bf16, "detected")

    @classmethod
    def named(cls, name: str, peak_override: float = 0.0) -> "GpuSpec":
        """A GPU from the table by (loose) name, e.g. "RTX 4070 Ti", "A100 40GB", "h100"."""
        known = known_gpu(name)
        peak = peak_tflops(name, peak_override)
        if known is None and peak is None:
            raise UserError(f"--gpu {name!r} is not in the GPU table (it knows e.g. \"RTX 4070 Ti\", \"A100\", "
                            f"\"H100\"); give its bf16 TFLOP/s with --peak-tflops to plan for it anyway")
        mem = memory_gb_from_name(name) or (known.mem_gb if known else None)
        if known:  # "rtx4070ti" -> "RTX 4070 Ti", keeping a memory size the user gave ("A100 40GB")
            name = display_name(known) + (f" {memory_gb_from_name(name):g}GB" if memory_gb_from_name(name) else "")
        return cls(name, mem, known.watts if known else None, peak, known.bf16 if known else True, "--gpu")


# --------------------------------------------------------------------------- VRAM


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters as the finetune engine adds them (engine/train/lora.py): rank r on GPT-2 modules."""

    r: int
    targets: tuple[str, ...]  # train.lora_targets: c_attn, c_proj (both), c_fc, attn.c_proj, mlp.c_proj
    dropout: float

    @classmethod
    def of(cls, cfg: cfgmod.Config) -> "LoraSpec | None":
        t = cfg.train
        if cfg.engine != "finetune" or not t.lora_r:
            return None
        return cls(t.lora_r, tuple(cfgmod.lora_targets(t)), t.lora_dropout)

    def modules(self, d: int) -> list[tuple[int, int]]:
        """(in, out) of each adapted module of one GPT-2 block (names GPT-2 lacks match nothing)."""
        block = {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, 4 * d), "mlp.c_proj": (4 * d, d)}
        return [dims for name, dims in block.items()
                if any(name == t or name.endswith("." + t) for t in self.targets)]

    def params(self, s: ModelShape) -> int:
        """A (r x in) and B (out x r) per adapted module and layer."""
        return s.n_layer * sum(self.r * (i + o) for i, o in self.modules(s.n_embd))


def estimate_vram(shape: ModelShape, micro_batch: int, dtype: str, compiled: bool, on_gpu: bool = True,
                  world_size: int = 1, fused_attention: bool = True, optimizer: str = "adamw",
                  lora: LoraSpec | None = None, checkpointing: bool = False) -> dict[str, float]:
    """Bytes on one GPU at the peak of a training step (the start of backward), by part.

    P = all parameters. AdamW training keeps, per parameter:
      weights 4 B (fp32 master copy; autocast adds a 2 B bf16/fp16 copy, cached for the step),
      grads 4 B (fp32; DDP adds 4 B of bucket copies), AdamW m and v 8 B.  -> 16-18 B/param
      (optimizer "muon": Muon keeps one 4 B momentum buffer for each weight of the blocks' matrices,
      12·d² a layer; the rest stays with AdamW's 8 B)
    Activations saved for backward, per token per layer, with e = 2 B (autocast) or 4 B (fp32),
    d = n_embd, for engine/train/model.py's block:
      two LayerNorm inputs (the residual stream, fp32 even under autocast)      8d
      c_attn input e·d, q/k/v (one qkv tensor) 3e·d, SDPA output e·d (also c_proj's input:
      putting the heads back side by side copies nothing), c_fc input e·d,
      GELU input 4e·d, GELU output (c_proj's input) 4e·d                        14e·d
      -> 36d bytes under bf16 autocast, 64d in fp32; dropout > 0 adds two 1-byte masks.
      Fused SDPA (flash on sm_80+ in bf16/fp16, memory-efficient otherwise, and a flash kernel
      on CPU since torch 2.2) keeps no T×T matrix, only a logsumexp per row. The math kernel,
      which only very old GPUs fall back to, keeps n_head·T score rows per token: 4 + e bytes.
      Hugging Face GPT-2 (finetune) also keeps its gelu_new's intermediates (3 × 4e·d).
    Logits, B·T·V, are the largest single term at GPT-2's vocabulary: the caller's logits (e),
      cross-entropy's fp32 log-softmax output (4) and, in backward, its fp32 gradient in and out
      (4 + 4): 14 B/token/vocab under autocast, 16 in fp32. torch.compile fuses the loss and keeps
      about e + 4 + e (8 B).
    Plus CUDA context and allocator slack, ~0.5 GiB.

    Fine-tuning techniques (the finetune engine; checked against MemTracker on fake CPU tensors,
    engine/machine/memtrack.py, within 15% for gpt2-medium-finetune, gpt2-large-finetune-12gb,
    gpt2-xl-lora-12gb and a full gpt2-xl fine-tune: tests/benchmarks/finetune_memory.py):
      LoRA (lora): the model is frozen in its dtype as loaded (float32: 4 B/param); gradients
        and optimizer state for the adapters alone, r·(in + out) per adapted module and layer.
        Autocast caches its 2 B copy only of weights that train; a frozen weight's copy is made
        at each use and kept for backward (the input's gradient needs it), so every frozen
        matrix's copy is there at the peak, or one block's when blocks are recomputed. Each
        adapted module also keeps its input's copy for A (e·in), A's output (e·r) and, with
        lora_dropout, a 1-byte mask (in).
      Gradient checkpointing (checkpointing): each block keeps only its input, 4d bytes per
        token (the fp32 residual stream), and one block at a time is recomputed in backward
        with all its activations.
      8-bit AdamW (optimizer "adamw8bit", bitsandbytes): m and v in 8 bits, ~2 B/param.

    Accuracy. The saved-for-backward part is measured, not guessed: counting the storages that
    autograd saves (torch.autograd.graph.saved_tensors_hooks) for engine/model.GPT on the CPU
    gives 36.1·d bytes per layer per token under bf16 autocast and 64.1·d in fp32, a 2 B/param
    bf16 weight cache, and a 4 B fp32 log-softmax per logit, as above. What this does not see:
    the transient backward buffers (counted above for the logits only), the CUDA caching
    allocator's fragmentation (the 5% kept free in `fits`), and torch.compile's choices, which
    usually save less (it recomputes cheap elementwise results); those parts are from first
    principles and not yet calibrated against torch.cuda.max_memory_allocated on a GPU: expect
    the total within ~20%, erring high under torch.compile. One public datapoint agrees: in
    nanoGPT issue #88, GPT-2 124M at B=32, T=1024, fp16, no compile, on a 16 GB V100, failed
    allocating 6.14 GiB, exactly one fp32 B·T·V tensor (32·1024·50304·4 B); this estimate puts
    that run at ~34 GiB, and the 12 GB-card preset (40.6M at B=16) at ~10 GiB with compile
    (~14.5 GiB without: it needs torch.compile to fit a 4070 Ti).
    """
    s = shape
    d, T, V = s.n_embd, s.block_size, s.vocab_size
    mixed = dtype in ("bfloat16", "float16") and on_gpu
    e = 2 if mixed else 4
    P = _param_counts(s)["params_total"]
    tokens = micro_batch * T
    P_lora = lora.params(s) if lora else 0
    trained = P_lora if lora else P

    weights = 4 * (P + P_lora)
    if mixed and lora:  # adapters' copies cached; frozen matrices' (blocks, output layer) kept for backward
        frozen_matrices = (1 if checkpointing else s.n_layer) * 12 * d * d + V * d
        weights += 2 * P_lora + 2 * frozen_matrices
    elif mixed:
        weights += 2 * P
    grads = 4 * trained + (4 * trained if world_size > 1 else 0)
    if lora:
        muon_params = P_lora if optimizer == "muon" else 0  # every adapter matrix is 2-D
    else:
        muon_params = s.n_layer * 12 * d * d if optimizer == "muon" else 0  # attention and MLP matrices
    state_bytes = 2 if optimizer == "adamw8bit" else 8  # AdamW's m and v: 8 bits or 32 each
    optimizer = state_bytes * (trained - muon_params) + 4 * muon_params

    per_layer = 8 * d + 14 * e * d
    if s.dropout > 0:
        per_layer += 2 * d  # residual dropout masks (attention dropout inside fused SDPA keeps none)
    if s.hf:
        per_layer += 12 * e * d  # gelu_new is built from elementwise ops that each save a tensor
        per_layer += e * d  # the heads put back side by side: a copy (c_proj's input)
    if not fused_attention:
        per_layer += s.n_head * T * (4 + (e if mixed else 0) + (1 + e if s.dropout > 0 else 0))
    if lora:
        per_layer += sum(e * i + e * lora.r + (i if lora.dropout > 0 else 0) for i, _ in lora.modules(d))
    head = 4 * d + e * d  # final LayerNorm input, lm_head input
    if checkpointing:  # every block's input, and one block recomputed
        activations = tokens * (s.n_layer * 4 * d + per_layer + head)
    else:
        activations = tokens * (s.n_layer * per_layer + head)

    logit_bytes = (e + 4 + (e if mixed else 0)) if compiled else (e + 4 + 4 + 4)
    logits = tokens * V * logit_bytes

    overhead = CUDA_CONTEXT_GIB * GIB if on_gpu else 0.0
    return {"weights": float(weights), "grads": float(grads), "optimizer": float(optimizer),
            "activations": float(activations), "logits": float(logits), "overhead": float(overhead)}


def planned_peak(cfg: cfgmod.Config, dtype: str, compiled: bool) -> float:
    """estimate_vram's bytes for cfg on a GPU in `dtype`, with its fine-tuning techniques and
    optimizer, less the CUDA context (what a memory tracker or max_memory_allocated counts)."""
    parts = estimate_vram(model_shape(cfg), cfg.train.micro_batch, dtype, compiled, on_gpu=True,
                          optimizer=cfg.train.optimizer, lora=LoraSpec.of(cfg),
                          checkpointing=cfg.engine == "finetune" and cfg.train.gradient_checkpointing)
    return sum(parts.values()) - parts["overhead"]


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    preset: str
    engine: str
    shape: ModelShape
    params: int
    params_total: int
    params_non_embedding: int
    micro_batch: int
    grad_accum: int
    world_size: int
    max_iters: int
    tokens_per_step: int
    total_tokens: int
    flops_per_token: float
    flops_attention_per_token: float
    flops_total: float
    tokens_per_param: float
    dtype: str
    compiled: bool
    vram_breakdown: dict[str, float]  # GiB per GPU
    vram_gb: float
    gpu: GpuSpec | None
    fits: bool | None
    max_micro_batch: int | None
    mfu: float
    hours: float | None
    ms_per_iter_estimate: float | None
    ms_per_iter_measured: float | None
    measured_from: str | None
    hours_measured: float | None
    kwh: float | None
    kwh_measured: float | None
    price_per_kwh: float | None
    cost: float | None
    cost_measured: float | None
    # HellaSwag during the run (train.hellaswag_interval): evaluations, items each, their forward
    # FLOPs, and their share of `hours` (None where hours are)
    hellaswag_evals: int = 0
    hellaswag_items: int = 0
    hellaswag_flops: float = 0.0
    hellaswag_hours: float | None = None
    # what trains and how (train.lora_r, gradient_checkpointing, optimizer), and what would fit
    params_trainable: int = 0
    lora: LoraSpec | None = None
    checkpointing: bool = False
    optimizer: str = "adamw"
    fit_with: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        g = self.gpu
        return {
            "preset": self.preset,
            "engine": self.engine,
            "model": {k: v for k, v in asdict(self.shape).items() if k != "vocab_note"},
            "vocab_size": self.shape.vocab_size,
            "params": self.params,  # without position embeddings (nanoGPT's count)
            "params_total": self.params_total,
            "params_non_embedding": self.params_non_embedding,  # Kaplan's N: no token or position embedding
            "params_trainable": self.params_trainable,  # LoRA: the adapters; otherwise params_total
            "lora_r": self.lora.r if self.lora else 0,
            "gradient_checkpointing": self.checkpointing,
            "optimizer": self.optimizer,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "world_size": self.world_size,
            "max_iters": self.max_iters,
            "tokens_per_step": self.tokens_per_step,
            "total_tokens": self.total_tokens,
            "flops_per_token": self.flops_per_token,
            "flops_total": self.flops_total,
            "tokens_per_param": round(self.tokens_per_param, 2),
            "compute_optimal_tokens": TOKENS_PER_PARAM_OPTIMAL * self.params,
            "dtype": self.dtype,
            "compile": self.compiled,
            "vram_gb": round(self.vram_gb, 3),
            "vram_breakdown": {k: round(v, 3) for k, v in self.vram_breakdown.items()},
            "gpu_name": g.name if g else None,
            "gpu_source": g.source if g else None,
            "gpu_mem_gb": round(g.mem_total_gb, 2) if g and g.mem_total_gb else None,
            "gpu_peak_tflops": g.peak_tflops if g else None,
            "gpu_power_w": g.power_limit_w if g else None,
            "fits": self.fits,
            "fit_with": self.fit_with,  # when it does not fit: settings that would make it ({"set", "vram_gb", ...})
            "max_micro_batch": self.max_micro_batch,
            "mfu": self.mfu,
            "hours": self.hours,
            "ms_per_iter_estimate": self.ms_per_iter_estimate,
            "ms_per_iter_measured": self.ms_per_iter_measured,
            "measured_from": self.measured_from,
            "hours_measured": self.hours_measured,
            "kwh": self.kwh,  # upper bound: every GPU at its power limit the whole time
            "kwh_measured": self.kwh_measured,
            "price_per_kwh": self.price_per_kwh,
            "cost": self.cost,
            "cost_measured": self.cost_measured,
            "hellaswag_evals": self.hellaswag_evals,  # hours and hours_measured include their time
            "hellaswag_items": self.hellaswag_items,
            "hellaswag_flops": self.hellaswag_flops,
            "hellaswag_hours": self.hellaswag_hours,
            "notes": self.notes,
        }

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, values short enough for an 80-column terminal."""
        return (self._model_rows() + self._memory_rows() + self._time_rows() + self._cost_rows()
                + [("note", note) for note in self.notes])

    def _model_rows(self) -> list[tuple[str, str]]:
        """The model, what trains, the tokens and the FLOPs."""
        s = self.shape
        rows = [
            ("preset", f"{self.preset} ({self.engine})"),
            ("model", f"{s.n_layer} layers x {s.n_head} heads x {s.n_embd} wide, context {s.block_size:,}"),
            ("vocabulary", s.vocab_note),
            ("parameters", f"{fmt_si(self.params)} (with position embeddings {fmt_si(self.params_total)})"),
            ("", f"{fmt_si(self.params_non_embedding)} without any embedding"),
        ]
        if self.lora:
            rows.append(("trainable", f"{fmt_si(self.params_trainable)}: LoRA r={self.lora.r} on "
                                      f"{', '.join(self.lora.targets)} (the model itself is frozen)"))
        return rows + [
            ("tokens/step", f"{self.tokens_per_step:,} = {self.micro_batch} x {s.block_size:,} x {self.grad_accum} accum"
                            + (f" x {self.world_size} GPUs" if self.world_size > 1 else "")),
            ("total tokens", f"{fmt_si(self.total_tokens)} in {self.max_iters:,} iters"),
            ("tokens/param", f"{_num(self.tokens_per_param)} (compute-optimal ~{TOKENS_PER_PARAM_OPTIMAL}: "
                             f"{fmt_si(TOKENS_PER_PARAM_OPTIMAL * self.params)} tokens)"),
            ("FLOPs/token", f"{fmt_si(self.flops_per_token)} = {'4N + 6 x adapters' if self.lora else '6N'} "
                            f"{fmt_si(self.flops_per_token - self.flops_attention_per_token)}"
                            f" + attention {fmt_si(self.flops_attention_per_token)}"),
            ("FLOPs total", f"{self.flops_total:.3g} ({fmt_si(self.flops_total, 'FLOP')})".replace("e+", "e")),
            ("precision", f"{_DTYPE_LABEL[self.dtype]}{', torch.compile' if self.compiled else ''}"),
        ]

    def _memory_rows(self) -> list[tuple[str, str]]:
        """The memory savers, the estimate (VRAM, or RAM without a GPU) by part, and the verdict."""
        g, b = self.gpu, self.vram_breakdown
        rows = []
        savers = [label for on, label in ((self.checkpointing, "gradient checkpointing (~1/3 more compute)"),
                                          (self.optimizer == "adamw8bit", "8-bit AdamW (bitsandbytes)")) if on]
        if savers:
            rows.append(("memory savers", ", ".join(savers)))
        if g:
            where = f"of {g.mem_total_gb:.1f} GiB" if g.mem_total_gb else "(GPU memory unknown)"
            verdict = ""
            if self.fits is not None:
                pct = self.vram_gb / g.mem_total_gb
                verdict = f": fits ({pct:.0%})" if self.fits else f": does NOT fit ({pct:.0%})"
            rows.append(("VRAM estimate", f"{self.vram_gb:.1f} GiB {where}{verdict}"))
        else:
            rows.append(("memory estimate", f"{self.vram_gb:.2f} GiB of RAM (no GPU: on the CPU)"))
        rows.append(("", f"weights+grads+optimizer {b['weights'] + b['grads'] + b['optimizer']:.2f}, "
                         f"activations {b['activations']:.2f}, logits {b['logits']:.2f}"
                         + (f", CUDA {b['overhead']:.1f}" if b["overhead"] else "")))
        return rows + self._micro_batch_rows()

    def _micro_batch_rows(self) -> list[tuple[str, str]]:
        """What micro-batch would fit, where that is worth saying."""
        if self.max_micro_batch is None:
            return []
        if self.max_micro_batch < 1 and self.fit_with:
            return [("", "even micro_batch 1 does not fit as set; the note below says what would")]
        if self.max_micro_batch < 1:
            return [("", "even micro_batch 1 does not fit: a smaller model or a bigger GPU")]
        if not self.fits:
            return [("", f"micro_batch {self.max_micro_batch} would fit (raise grad_accum to keep tokens/step)")]
        if self.max_micro_batch < 8 * self.micro_batch:
            return [("", f"largest micro_batch that fits: ~{self.max_micro_batch}")]
        return []

    def _time_rows(self) -> list[tuple[str, str]]:
        """The GPU, the hours estimated and measured, and HellaSwag's share of them."""
        g = self.gpu
        rows = []
        if g:
            peak = f"{g.peak_tflops:g} TFLOP/s" if g.peak_tflops else "peak unknown"
            power = f", {g.power_limit_w:.0f} W" if g.power_limit_w else ""
            rows.append(("GPU", f"{_short_gpu(g.name)} ({'detected' if g.source == 'detected' else 'from --gpu'}): "
                                f"{peak}{power}"))
        else:
            rows.append(("GPU", "none detected; plan for one with --gpu \"RTX 4070 Ti\""))
        if self.hours is not None:
            rows.append(("time", f"{fmt_hours(self.hours)} at {self.mfu:.0%} MFU (~{fmt_ms(self.ms_per_iter_estimate)}/iter)"))
        else:
            rows.append(("time", "n/a without a GPU peak (--gpu NAME or --peak-tflops)"))
        if self.hours_measured is not None:
            source = f" ({self.measured_from})" if self.measured_from else ""
            rows.append(("time measured", f"{fmt_hours(self.hours_measured)} at "
                                          f"{fmt_ms(self.ms_per_iter_measured)}/iter{source}"))
        if self.hellaswag_evals:
            share = f": {fmt_hours(self.hellaswag_hours)} of the time" if self.hellaswag_hours is not None else ""
            rows.append(("HellaSwag", f"{self.hellaswag_evals:,} evals x {self.hellaswag_items:,} items{share}"))
        return rows

    def _cost_rows(self) -> list[tuple[str, str]]:
        """Energy (at most: every GPU at its power limit) and its cost."""
        rows = []
        if self.kwh is not None or self.kwh_measured is not None:
            parts = []
            if self.kwh is not None:
                parts.append(f"{_kwh(self.kwh)} kWh")
            if self.kwh_measured is not None:
                parts.append(f"{_kwh(self.kwh_measured)} kWh measured")
            n = f"{self.world_size} GPUs" if self.world_size > 1 else "GPU"
            rows.append(("energy", f"at most {', '.join(parts)} ({n} at {self.gpu.power_limit_w:.0f} W)"))
        else:
            rows.append(("energy", "n/a (GPU power limit unknown)"))
        if self.price_per_kwh is not None:
            costs = [f"{c:,.2f}" for c in (self.cost, self.cost_measured) if c is not None]
            rows.append(("cost", f"{' / '.join(costs) or 'n/a'} at {self.price_per_kwh:g}/kWh"))
        else:
            rows.append(("cost", f"n/a (--price-per-kwh or ${PRICE_ENV})"))
        return rows


_DTYPE_LABEL = {"bfloat16": "bf16 autocast", "float16": "fp16 autocast + grad scaler", "float32": "float32"}


def _price(price: float | None) -> float | None:
    """The price per kWh: --price-per-kwh, else $GPT2_COCKPIT_PRICE_PER_KWH, else None."""
    if price is not None:
        if price < 0:
            raise UserError(f"--price-per-kwh {price}: expected 0 or more")
        return price
    env = os.environ.get(PRICE_ENV, "").strip()
    if not env:
        return None
    try:
        value = float(env)
    except ValueError:
        raise UserError(f"${PRICE_ENV}={env!r} is not a number (a price per kWh, e.g. 0.30)") from None
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"${PRICE_ENV}={env!r} must be a price of 0 or more")
    return value


def hellaswag_cost(cfg: cfgmod.Config, shape: ModelShape, params: int) -> tuple[int, int, float]:
    """(evaluations, items each, forward FLOPs of them all) of a run's HellaSwag
    (train.hellaswag_interval; (0, 0, 0.0) when off).

    A fresh run scores before its first step, then every interval, and once more at its end when
    max_iters is not a multiple of the interval (engine/train/loop.py). Each item is four rows (its four
    endings) of ~HELLASWAG_ROW_TOKENS tokens, cut to the context window, at 2·N FLOPs a token (one
    forward pass; the attention over such short rows is small beside it).
    """
    t = cfg.train
    if not t.hellaswag_interval or t.max_iters <= 0:
        return 0, 0, 0.0
    evals = 1 + t.max_iters // t.hellaswag_interval + (1 if t.max_iters % t.hellaswag_interval else 0)
    items = _hellaswag_items(t.hellaswag_source, t.hellaswag_limit)
    row = HELLASWAG_ROW_TOKENS * (CHARS_PER_TOKEN if cfg.engine == "pretrain" and cfg.data.tokenizer == "char" else 1)
    return evals, items, float(evals * items * 4 * min(row, shape.block_size) * 2 * params)


def _hellaswag_items(source: str, limit: int) -> int:
    """Items per evaluation: the validation set's 10,042 or a local file's lines, at most `limit` (0: all)."""
    from ..train.hellaswag import DEFAULT_SOURCE, VAL_ITEMS# torch-free at import

    items = VAL_ITEMS
    if source != DEFAULT_SOURCE:
        try:
            with open(Path(source).expanduser(), "rb") as f:
                items = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) or VAL_ITEMS
        except OSError:
            pass  # a missing file stops the run at its start; plan as for the validation set
    return min(items, limit) if limit > 0 else items


def plan_run(cfg: cfgmod.Config, gpu: "GpuSpec | None | str" = "auto", world_size: int = 1,
              mfu: float = DEFAULT_MFU, ms_per_iter: float | None = None,
              price_per_kwh: float | None = None, measured_from: str | None = None) -> Plan:
    """Everything the plan pane shows, for one config on one kind of GPU (× world_size).

    gpu: "auto" detects this machine's GPU through NVML (None on a CPU box), a GpuSpec plans
    for that GPU, None plans for the CPU. Without a GPU peak, hours are n/a: a CPU's attainable
    FLOP/s varies too much to guess, so pass a measured ms_per_iter instead (see
    measured_ms_per_iter). Energy is an upper bound: every GPU at its power limit throughout.
    """
    if gpu == "auto":
        gpu = None if cfg.train.device == "cpu" else GpuSpec.detect(peak_override=cfg.train.peak_tflops)
    _check_options(world_size, mfu, ms_per_iter)
    price = _price(price_per_kwh)

    shape = model_shape(cfg)
    counts = _param_counts(shape)
    t = cfg.train
    tokens_per_step = t.micro_batch * t.grad_accum * shape.block_size * world_size
    total_tokens = tokens_per_step * t.max_iters
    lora = LoraSpec.of(cfg)
    checkpointing = cfg.engine == "finetune" and t.gradient_checkpointing
    trainable = lora.params(shape) if lora else counts["params_total"]
    fpt, attention, work = _flops(shape, counts["params"], lora, trainable, checkpointing)
    flops_total = fpt * total_tokens
    dtype, compiled = _precision(t, gpu)
    memory = _memory(cfg, shape, dtype, compiled, gpu, world_size, lora, checkpointing)
    hs_evals, hs_items, hs_flops = hellaswag_cost(cfg, shape, counts["params"])
    duration = _duration(flops_total * work, hs_flops, flops_total, t.max_iters, gpu, world_size, mfu, ms_per_iter, price)

    return Plan(
        preset=cfg.name, engine=cfg.engine, shape=shape, params=counts["params"],
        params_total=counts["params_total"], params_non_embedding=counts["params_non_embedding"],
        micro_batch=t.micro_batch, grad_accum=t.grad_accum, world_size=world_size, max_iters=t.max_iters,
        tokens_per_step=tokens_per_step, total_tokens=total_tokens, flops_per_token=fpt,
        flops_attention_per_token=attention, flops_total=flops_total,
        tokens_per_param=total_tokens / counts["params"], dtype=dtype, compiled=compiled,
        vram_breakdown={k: v / GIB for k, v in memory.breakdown.items()}, vram_gb=memory.vram / GIB, gpu=gpu,
        fits=memory.fits, max_micro_batch=memory.max_micro_batch, mfu=mfu, hours=duration.hours,
        ms_per_iter_estimate=duration.ms_per_iter_estimate, ms_per_iter_measured=ms_per_iter,
        measured_from=measured_from if ms_per_iter is not None else None, hours_measured=duration.hours_measured,
        kwh=duration.kwh, kwh_measured=duration.kwh_measured, price_per_kwh=price, cost=duration.cost,
        cost_measured=duration.cost_measured, hellaswag_evals=hs_evals, hellaswag_items=hs_items,
        hellaswag_flops=hs_flops, hellaswag_hours=duration.hellaswag_hours, params_trainable=trainable, lora=lora,
        checkpointing=checkpointing, optimizer=t.optimizer, fit_with=memory.fit_with,
        notes=_notes(cfg, gpu, memory),
    )


def _check_options(world_size: int, mfu: float, ms_per_iter: float | None) -> None:
    """The command line's --gpus, --mfu and --ms-per-iter, each refused with one sentence."""
    if world_size < 1:
        raise UserError(f"--gpus {world_size}: needs at least 1")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu}: expected a fraction in (0, 1], e.g. 0.35")
    if ms_per_iter is not None and not ms_per_iter > 0:
        raise UserError(f"--ms-per-iter {ms_per_iter}: expected a positive number of milliseconds")


def _flops(shape: ModelShape, params: int, lora: LoraSpec | None, trainable: int,
           checkpointing: bool) -> tuple[float, float, float]:
    """(training FLOPs per token, their attention part, the work the clock sees per unit of them)."""
    fpt = _flops_per_token(params, shape.n_layer, shape.n_embd, shape.block_size)
    if lora:  # a frozen weight needs no gradient of its own: 2 FLOPs a token less, adapters 6 more
        fpt += 6.0 * trainable - 2.0 * params
    attention = 12.0 * shape.n_layer * shape.block_size * shape.n_embd
    # checkpointing recomputes each block's forward in backward: work the MFU convention leaves
    # out of the model's FLOPs but the clock does not
    work = (fpt + 2.0 * params + attention / 3) / fpt if checkpointing else 1.0
    return fpt, attention, work


def _precision(t: cfgmod.TrainConfig, gpu: GpuSpec | None) -> tuple[str, bool]:
    """(dtype, torch.compile) as a run resolves "auto" on this GPU (None: the CPU)."""
    on_gpu = gpu is not None
    dtype = t.dtype if t.dtype != "auto" else ("float32" if not on_gpu else "bfloat16" if gpu.bf16 else "float16")
    compiled = t.compile is True or (t.compile == "auto" and on_gpu)
    return dtype, compiled


@dataclass
class _Memory:
    """A config's bytes on one GPU (or in RAM, without one) and whether they fit its memory."""

    breakdown: dict[str, float]  # bytes by part (estimate_vram)
    vram: float  # their sum
    fits: bool | None = None  # None: no GPU, or its memory unknown
    max_micro_batch: int | None = None
    fit_with: list[dict[str, Any]] = field(default_factory=list)  # when it does not fit: what would


def _memory(cfg: cfgmod.Config, shape: ModelShape, dtype: str, compiled: bool, gpu: GpuSpec | None,
            world_size: int, lora: LoraSpec | None, checkpointing: bool) -> _Memory:
    t = cfg.train
    on_gpu = gpu is not None
    breakdown = estimate_vram(shape, t.micro_batch, dtype, compiled, on_gpu, world_size, optimizer=t.optimizer,
                              lora=lora, checkpointing=checkpointing)
    memory = _Memory(breakdown, sum(breakdown.values()))
    if on_gpu and gpu.mem_total_gb:
        budget = gpu.mem_total_gb * GIB * FIT_FRACTION
        memory.fits = memory.vram <= budget
        memory.max_micro_batch = _max_micro_batch(breakdown, t.micro_batch, budget)
        if not memory.fits:
            memory.fit_with = fit_options(cfg, shape, dtype, compiled, world_size, budget)
    return memory


@dataclass
class _Duration:
    """How long a run takes, estimated from the GPU's peak and the MFU and measured from a pace,
    with the energy and cost of each; None where it cannot be said."""

    hours: float | None = None
    ms_per_iter_estimate: float | None = None
    hellaswag_hours: float | None = None
    hours_measured: float | None = None
    kwh: float | None = None
    kwh_measured: float | None = None
    cost: float | None = None
    cost_measured: float | None = None


def _duration(work: float, hs_flops: float, flops_total: float, max_iters: int, gpu: GpuSpec | None,
          world_size: int, mfu: float, ms_per_iter: float | None, price: float | None) -> _Duration:
    """`work`: the training FLOPs the clock sees (checkpointing's recomputation included);
    HellaSwag's evaluations run at the pace training does (the same FLOP rate), so they add
    their FLOPs' share to the estimated hours and to the measured ones."""
    duration = _Duration()
    if gpu is not None and gpu.peak_tflops:
        seconds = work / (world_size * gpu.peak_tflops * 1e12 * mfu)
        duration.hellaswag_hours = hs_flops / (world_size * gpu.peak_tflops * 1e12 * mfu) / 3600
        duration.hours = seconds / 3600 + duration.hellaswag_hours
        duration.ms_per_iter_estimate = seconds * 1000 / max_iters  # a training step's
    if ms_per_iter is not None:
        train_seconds = ms_per_iter * max_iters / 1000
        measured_hs_hours = hs_flops / (flops_total / train_seconds) / 3600 if flops_total > 0 else 0.0
        duration.hours_measured = train_seconds / 3600 + measured_hs_hours
        if duration.hellaswag_hours is None:
            duration.hellaswag_hours = measured_hs_hours
    watts = gpu.power_limit_w if gpu is not None else None
    if watts:
        duration.kwh = watts * world_size * duration.hours / 1000 if duration.hours is not None else None
        duration.kwh_measured = watts * world_size * duration.hours_measured / 1000 if duration.hours_measured is not None else None
    if price is not None:
        duration.cost = duration.kwh * price if duration.kwh is not None else None
        duration.cost_measured = duration.kwh_measured * price if duration.kwh_measured is not None else None
    return duration


def _notes(cfg: cfgmod.Config, gpu: GpuSpec | None, memory: _Memory) -> list[str]:
    """What the plan's numbers alone do not say: a dtype the GPU lacks, a length the data decides,
    what would fit, a schedule that does not end within the run."""
    t = cfg.train
    notes = []
    if t.dtype == "bfloat16" and gpu is not None and not gpu.bf16:
        notes.append(f"{_short_gpu(gpu.name)} has no bf16: use train.dtype=float16")
    if cfg.engine == "finetune" and t.epochs > 0:
        notes.append(f"train.epochs = {t.epochs:g}: the run derives max_iters from the data; "
                     f"this plan uses {t.max_iters:,}")
    if memory.fits is False:
        if memory.fit_with:
            notes.append("it would fit with " + "; or ".join(_fit_text(o, t.micro_batch) for o in memory.fit_with))
        notes.append("on OOM the run shrinks micro_batch and raises grad_accum (same tokens/step)")
    if t.decay_end > t.max_iters and not (cfg.engine == "finetune" and t.epochs > 0):
        last_lr = t.lr_at(t.max_iters - 1)  # the lr of the run's last step
        notes.append(f"the lr schedule does not end within the run: train.lr_decay_iters = {t.lr_decay_iters:,} "
                     f"is past max_iters = {t.max_iters:,}, so the last step trains at {last_lr:.3g} "
                     f"({last_lr / t.learning_rate:.0%} of the peak), not min_lr = {t.min_lr:g}; "
                     f"train.lr_decay_iters=auto decays over the run")
    return notes


def _max_micro_batch(breakdown: dict[str, float], micro_batch: int, budget: float) -> int:
    """The largest micro-batch within `budget` bytes: activations and logits scale with it, the rest does not."""
    per_sample = (breakdown["activations"] + breakdown["logits"]) / micro_batch
    fixed = sum(breakdown.values()) - per_sample * micro_batch
    return int((budget - fixed) // per_sample)


# What makes a fine-tune fit, the mildest first: recomputing activations costs ~1/3 more time;
# 8-bit AdamW state needs bitsandbytes and CUDA; LoRA trains adapters instead of the model.
FIT_CHANGES: tuple[dict[str, Any], ...] = (
    {"train.gradient_checkpointing": True},
    {"train.optimizer": "adamw8bit"},
    {"train.gradient_checkpointing": True, "train.optimizer": "adamw8bit"},
    {"train.lora_r": 16},
    {"train.lora_r": 16, "train.gradient_checkpointing": True},
)
MAX_FIT_OPTIONS = 3


def fit_options(cfg: cfgmod.Config, shape: ModelShape, dtype: str, compiled: bool, world_size: int,
                budget: float) -> list[dict[str, Any]]:
    """Settings that would make `cfg` fit `budget` bytes, at most MAX_FIT_OPTIONS, the mildest
    first: {"set": {key: value}, "vram_gb": ..., "micro_batch": ...}. A change that fits only
    with a smaller micro-batch says so (grad_accum rises to keep tokens per step)."""
    t = cfg.train
    out = []
    for change in FIT_CHANGES:
        if cfg.engine != "finetune" and set(change) != {"train.optimizer"}:
            continue  # gradient checkpointing and LoRA are the finetune engine's
        if any(cfg.get(k) == v or (k == "train.lora_r" and t.lora_r) for k, v in change.items()):
            continue  # in effect already
        if any(o["set"].items() <= change.items() for o in out):
            continue  # part of it fits already
        if change.get("train.optimizer") and t.optimizer != "adamw":
            continue  # Muon's state is its own choice
        trial = cfgmod.with_overrides(cfg, change)
        parts = estimate_vram(shape, t.micro_batch, dtype, compiled, True, world_size, optimizer=trial.train.optimizer,
                              lora=LoraSpec.of(trial), checkpointing=cfg.engine == "finetune"
                              and trial.train.gradient_checkpointing)
        micro_batch = min(t.micro_batch, _max_micro_batch(parts, t.micro_batch, budget))
        if micro_batch < 1:
            continue
        per_sample = (parts["activations"] + parts["logits"]) / t.micro_batch
        vram = sum(parts.values()) - per_sample * (t.micro_batch - micro_batch)
        out.append({"set": dict(change), "vram_gb": round(vram / GIB, 2), "micro_batch": micro_batch})
        if len(out) == MAX_FIT_OPTIONS:
            break
    return out


def _fit_text(option: dict[str, Any], micro_batch: int) -> str:
    """'--set train.gradient_checkpointing=true (10.2 GiB)', and the micro-batch where it is smaller."""
    sets = " ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in option["set"].items())
    where = f" at micro_batch {option['micro_batch']}" if option["micro_batch"] < micro_batch else ""
    return f"{sets} ({option['vram_gb']:.1f} GiB{where})"


# --------------------------------------------------------------------------- measured pace


def _same_workload(a: cfgmod.Config, b: cfgmod.Config) -> bool:
    """Would a step of `a` take as long as a step of `b` (same model, tokens per step, precision)?"""
    ma, mb = a.model, b.model
    keys = ("block_size",) + (("pretrained",) if a.engine == "finetune" else ("n_layer", "n_head", "n_embd", "bias"))
    return (a.engine == b.engine and all(getattr(ma, k) == getattr(mb, k) for k in keys)
            and a.tokens_per_step == b.tokens_per_step and a.data.tokenizer == b.data.tokenizer
            and a.train.dtype == b.train.dtype and a.train.compile == b.train.compile
            and a.train.lora_r == b.train.lora_r and a.train.gradient_checkpointing == b.train.gradient_checkpointing)


def measured_ms_per_iter(cfg: cfgmod.Config, world_size: int = 1, last: int = 20) -> tuple[float, str] | None:
    """(median ms/iter of the newest matching run's last `last` step events, "run NAME"), or None.

    A run matches when it trains the same workload (model, tokens per step, dtype, compile) on
    as many GPUs. The first step event is skipped: it carries torch.compile's warm-up.
    The pace covers training steps only; evals and checkpoints add a few percent.
    """
    from ..runs.events import read_all
    from ..runs.rundir import list_dirs

    for run in list_dirs():  # newest first
        try:
            if not _same_workload(run.config(), cfg):
                continue
        except UserError:
            continue
        events = read_all(run.events_path)
        ws = next((e.get("world_size") for e in events if e.get("type") == "run"), 1) or 1
        if ws != world_size:
            continue
        ms = [e["ms"] for e in events if e.get("type") == "step" and isinstance(e.get("ms"), (int, float))
              and not isinstance(e.get("ms"), bool) and e["ms"] > 0]
        ms = ms[1:] if len(ms) > 1 else ms
        if ms:
            return float(statistics.median(ms[-last:])), f"run {run.name}"
    return None


# --------------------------------------------------------------------------- formatting


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def _kwh(kwh: float) -> str:
    if kwh < 0.01:
        return "<0.01"
    return f"{kwh:.1f}" if kwh >= 10 else f"{kwh:.2f}"


def _short_gpu(name: str) -> str:
    return name.replace("NVIDIA ", "").replace("GeForce ", "")


def format_rows(rows: list[tuple[str, str]], width: int = 80) -> str:
    """Aligned 'label  value' lines, long values wrapped under their column."""
    import textwrap

    col = max(len(label) for label, _ in rows) + 2
    lines = []
    for label, value in rows:
        wrapped = textwrap.wrap(value, width=max(20, width - col), break_long_words=False) or [""]
        lines.append(f"{label:<{col}}{wrapped[0]}".rstrip())
        lines += [" " * col + more for more in wrapped[1:]]
    return "\n".join(lines)
