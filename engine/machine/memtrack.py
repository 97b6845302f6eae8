"""Peak memory of one training step without a GPU: PyTorch's MemTracker over fake tensors.

Under torch._subclasses.fake_tensor.FakeTensorMode a tensor has a shape, a dtype and a device
but no storage, and no op computes anything, so a GPT-2 xl step costs no memory and a few
seconds. torch.distributed._tools.mem_tracker.MemTracker counts the bytes every live tensor
would hold (parameters, gradients, optimizer state, activations, temporaries) at each op, and
keeps the peak. On a 2-layer model the fake peak equalled a real CPU run's byte for byte.

How a step is built (what works with torch 2.13's CPU build):
- the model on the CPU, never "cuda": fake CUDA tensors abort a CPU build in backward;
- a warm-up step first, so the optimizer's state exists when the tracked step begins;
- the finetune engine's model (a Hugging Face GPT-2 with the run's LoRA adapters and gradient
  checkpointing, engine/train/lora.py) is built on the meta device and then given fake CPU storage
  (to_empty), the tied output layer tied again: peft cannot move a fake module between devices;
- frozen parameters (LoRA) take no gradient hook (MemTracker would install one on each);
- only the overall peak is kept (MemTracker's per-module peaks walk every module at every op:
  3.5 minutes instead of 34 seconds for GPT-2 xl);
- an accumulating step (grad_accum > 1) runs two micro-batches, so the first one's gradients
  are there during the second's backward, as in a run.

What CPU kernels change against a GPU: CPU autocast casts its own list of ops (not CUDA's), the
attention runs a CPU flash kernel (no T x T matrix: attention dropout is left out, as the GPU's
fused kernels keep no mask either), and no CUDA context, cuBLAS workspace or allocator
fragmentation is counted. bitsandbytes has no CPU optimizer: train.optimizer = "adamw8bit" is
stood in for by an optimizer that keeps state of AdamW8bit's sizes (two uint8 moments per
parameter and a float32 scale per block of 256; 32-bit moments under 4,096 elements).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

from .. import config as cfgmod


TOLERANCE = 0.15  # the planner's estimate may be this far off the tracked peak (fine-tuning techniques)

# The fine-tunes the planner is checked against: the three 12 GB presets, and a full gpt2-xl
# fine-tune (micro-batch 1 of 1024 tokens, accumulating: gradients there), which needs ~31 GiB.
FINETUNE_CASES = (
    ("gpt2-medium-finetune", "gpt2-medium-finetune", ()),
    ("gpt2-large-finetune-12gb", "gpt2-large-finetune-12gb", ()),
    ("gpt2-xl-lora-12gb", "gpt2-xl-lora-12gb", ()),
    ("gpt2-xl full fine-tune", "gpt2-finetune", ("model.pretrained=gpt2-xl", "model.block_size=1024",
                                                 "train.micro_batch=1", "train.grad_accum=16", "train.compile=false")),
)


def finetune_case(label: str) -> cfgmod.Config:
    from .. import presets

    for name, preset, overrides in FINETUNE_CASES:
        if name == label:
            return presets.load(preset, list(overrides))
    raise KeyError(label)


def planned_and_tracked(cfg: cfgmod.Config) -> tuple[float, dict[str, int]]:
    """(the planner's bytes, the tracker's peak by kind) of one step under bf16 autocast, eager
    (torch.compile cannot run under the tracker), without the CUDA context."""
    from .planner import planned_peak

    return planned_peak(cfg, "bfloat16", compiled=False), tracked_breakdown(cfg, "bfloat16")


class TrackerUnavailable(Exception):
    """This torch has no MemTracker."""


def tracked_peak(cfg: cfgmod.Config, autocast: str | None) -> int:
    """Peak bytes of one training step of cfg's model at its micro-batch (autocast: None for
    float32, or "bfloat16"), as MemTracker counts them on fake CPU tensors."""
    return tracked_breakdown(cfg, autocast)["Total"]


def tracked_breakdown(cfg: cfgmod.Config, autocast: str | None) -> dict[str, int]:
    """The peak by MemTracker's kinds (Parameter, Gradient, Optstate, Activation, Temp, ...;
    "Total" is their sum)."""
    if cfg.engine == "finetune":
        return _finetune_peak(cfg, autocast)
    return _pretrain_peak(cfg, autocast)


def _tracker_class():
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as e:
        raise TrackerUnavailable(f"this torch has no MemTracker ({e})") from None

    class _NoHook:
        def remove(self) -> None:
            pass

    class PeakTracker(MemTracker):
        """MemTracker keeping the overall peak only, and leaving frozen parameters alone."""

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            for p in module.parameters():
                if not p.requires_grad:  # a hook on a tensor that takes no gradient is refused
                    self._param_to_grad_hook_handles.setdefault(p, (_NoHook(), _NoHook()))
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

        def _update_peak_stats(self, peak_state) -> None:
            from copy import deepcopy

            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = deepcopy(snap)

    return PeakTracker


def _track(model, optimizer, batches, step) -> dict[str, int]:
    """Warm up (optimizer state), then the peak of one more `step(between)` under the tracker;
    `step` calls `between()` between its micro-batches (MemTracker takes a module's second
    forward for a new iteration unless its per-module records are reset; the peak stays)."""
    step(lambda: None)
    tracker = _tracker_class()()
    tracker.track_external(model, optimizer, *batches)
    with tracker:
        step(tracker.reset_mod_stats)
    out: dict[str, int] = {}
    for per_device in tracker.get_tracker_snapshot("peak").values():
        for kind, nbytes in per_device.items():
            name = getattr(kind, "value", kind)  # _MemRefType members, and "Total"
            out[name] = out.get(name, 0) + int(nbytes)
    return out


# --------------------------------------------------------------------------- pretrain


def _pretrain_peak(cfg: cfgmod.Config, autocast: str | None) -> dict[str, int]:
    """Our GPT, one micro-batch, fused AdamW (the suite's `memory` section on a CPU)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..data.tokenizers import GPT2_VOCAB_PADDED
    from ..train.model import GPT, param_groups
    from ..train.pretrain import gpt_config

    _tracker_class()  # fail early, before building anything
    t = cfg.train
    vocab = GPT2_VOCAB_PADDED if cfg.data.tokenizer == "gpt2" else 256
    precision = torch.autocast("cpu", dtype=getattr(torch, autocast)) if autocast else nullcontext()
    with FakeTensorMode():
        model = GPT(gpt_config(cfg, vocab))
        optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.learning_rate,
                                      betas=(t.beta1, t.beta2), fused=True)
        x = torch.randint(vocab, (t.micro_batch, cfg.model.block_size))
        y = torch.randint(vocab, (t.micro_batch, cfg.model.block_size))

        def step(between):  # Stepper.step's maths for one micro-batch
            with precision:
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return _track(model, optimizer, (x, y), step)


# --------------------------------------------------------------------------- finetune


def _finetune_peak(cfg: cfgmod.Config, autocast: str | None) -> dict[str, int]:
    """The finetune engine's model (GPT-2 of the planner's shape, random weights, with the run's
    LoRA adapters and gradient checkpointing) and optimizer, min(grad_accum, 2) micro-batches."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from ..train import lora, optim
    from ..train.finetune import CausalLMAdapter
    from .planner import model_shape

    _tracker_class()
    hf_logging.set_verbosity_error()
    t = cfg.train
    s = model_shape(cfg)
    precision = torch.autocast("cpu", dtype=getattr(torch, autocast)) if autocast else nullcontext()
    with torch.device("meta"):  # no memory, no init; then fake storage below
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=s.vocab_size, n_positions=s.n_positions, n_embd=s.n_embd,
                                        n_layer=s.n_layer, n_head=s.n_head, resid_pdrop=s.dropout,
                                        embd_pdrop=s.dropout, attn_pdrop=0.0))
        hf = lora.apply(hf, t, cfg.model.pretrained)
    with FakeTensorMode(allow_non_fake_inputs=True):
        hf.to_empty(device="cpu")
        lora.plain(hf).tie_weights()  # to_empty gives the tied output layer its own storage
        hf.train()
        model = CausalLMAdapter(hf)
        optimizer = _Adam8bitSizes(model) if t.optimizer == "adamw8bit" else optim.build(model, t)
        n = min(2, t.grad_accum)
        x = torch.randint(s.vocab_size, (n, t.micro_batch, s.block_size))
        y = torch.randint(s.vocab_size, (n, t.micro_batch, s.block_size))
        params = [p for p in model.parameters() if p.requires_grad]

        def step(between):  # Stepper.step's maths: n micro-batches, clip, step
            for i in range(n):
                if i:
                    between()
                with precision:
                    _, loss = model(x[i], y[i])
                (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return _track(model, optimizer, (x, y), step)


def _Adam8bitSizes(model):
    """An optimizer keeping bitsandbytes AdamW8bit's state sizes (its update is not computed)."""
    import torch

    class Adam8bitSizes(torch.optim.Optimizer):
        BLOCK = 256  # blockwise quantization: one float32 absmax per block
        MIN_8BIT = 4096  # smaller tensors keep 32-bit moments

        def __init__(self, params):
            super().__init__(params, {"lr": 1e-3})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None or self.state[p]:
                        continue
                    if p.numel() >= self.MIN_8BIT:
                        blocks = math.ceil(p.numel() / self.BLOCK)
                        self.state[p] = {"state1": torch.zeros_like(p, dtype=torch.uint8),
                                         "state2": torch.zeros_like(p, dtype=torch.uint8),
                                         "absmax1": torch.zeros(blocks), "absmax2": torch.zeros(blocks)}
                    else:
                        self.state[p] = {"state1": torch.zeros_like(p), "state2": torch.zeros_like(p)}

    return Adam8bitSizes([p for p in model.parameters() if p.requires_grad])
