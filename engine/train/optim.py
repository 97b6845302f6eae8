"""The run's optimizer, for both engines: AdamW for everything, or Muon for the blocks' matrices.

train.optimizer = "adamw": torch's AdamW (fused where the device has the kernel), weight decay
on 2-D weights (matmuls and embeddings), none on biases and LayerNorm gains.

train.optimizer = "muon": torch.optim.Muon (torch 2.9+) for the 2-D weights inside the
transformer blocks, the attention and MLP matrices, and AdamW (as above) for the rest: the token
and position embeddings (the tied output head is the token embedding), biases and LayerNorm
gains. Muon's update is the momentum orthogonalised by a Newton-Schulz iteration, an update that
means something for a matrix mapping one hidden space to another; an embedding is a lookup table
and a gain or bias a vector, so those stay with AdamW (as in the speedrun records). No weight
changes shape or meaning: the model is still a GPT-2 that `export` writes.

The learning rates. The schedule (TrainConfig.lr_at) gives AdamW's learning rate; Muon's follows
the same curve scaled by train.muon_lr / train.learning_rate, so warm-up, decay and a live `set
train.learning_rate` (which scales muon_lr with it: engine/train/loop.py) keep the two in ratio.

Both are stepped as one object (MuonAdamW), so the Stepper, the GradScaler, gradient clipping,
skipped steps, the OOM re-split and checkpoints see a single optimizer with every group.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .. import config as cfgmod
from ..errors import UserError
from .model import param_groups


def build(model: nn.Module, t: cfgmod.TrainConfig):
    """The optimizer train.optimizer names, over the trainable parameters of `model`."""
    if t.optimizer == "muon":
        return _muon_adamw(model, t)
    if t.optimizer == "adamw8bit":
        return _adamw8bit(model, t)
    return _adamw(param_groups(model, t.weight_decay), t)


def _adamw(groups: list[dict], t: cfgmod.TrainConfig) -> torch.optim.AdamW:
    groups = [g for g in groups if g["params"]]  # a fused AdamW refuses an empty group
    try:
        # fused AdamW: one kernel over all parameters (CUDA, and CPU since torch 2.4: ~3% a step
        # for the CPU baby GPT)
        return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2))


def _adamw8bit(model: nn.Module, t: cfgmod.TrainConfig):
    """bitsandbytes' AdamW8bit: both moments in 8 bits, quantized blockwise (~2 B per parameter
    instead of AdamW's 8; tensors under 4,096 elements keep 32-bit moments). CUDA only."""
    device = next((p.device for p in model.parameters() if p.requires_grad), torch.device("cpu"))
    if device.type != "cuda":
        raise UserError(f"train.optimizer = \"adamw8bit\" (bitsandbytes) runs on CUDA GPUs only and this run trains "
                        f"on the {device.type}; use train.optimizer = \"adamw\"")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("train.optimizer = \"adamw8bit\" needs bitsandbytes, which is not installed: "
                        "pip install \"gpt2-cockpit[8bit]\" (or use train.optimizer = \"adamw\")") from None
    groups = [g for g in param_groups(model, t.weight_decay) if g["params"]]
    return bnb.optim.AdamW8bit(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2))


def _is_8bit(optimizer) -> bool:
    return type(optimizer).__module__.startswith("bitsandbytes")


# --------------------------------------------------------------------------- which parameter goes where


def _tables(model: nn.Module) -> set[int]:
    """ids of the parameters that are lookup tables or the output layer: every nn.Embedding's,
    our GPT's lm_head, a Hugging Face model's get_output_embeddings() (GPT-2 ties both to wte)."""
    out: set[int] = set()
    for name, module in model.named_modules():
        tables = []
        if isinstance(module, nn.Embedding) or name.rsplit(".", 1)[-1] == "lm_head":
            tables.append(module)
        get_head = getattr(module, "get_output_embeddings", None)
        if callable(get_head) and isinstance(head := get_head(), nn.Module):
            tables.append(head)
        out |= {id(p) for m in tables for p in m.parameters()}
    return out


def split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter, float]], list[tuple[str, nn.Parameter]]]:
    """(Muon's parameters, each with its lr factor; AdamW's parameters), by name.

    Muon: every trainable 2-D weight that is not an embedding or the output head, i.e. the
    blocks' attention and MLP matrices (nn.Linear in engine/train/model.py, Conv1D in Hugging Face
    GPT-2). AdamW: embeddings (the tied head included), biases, LayerNorm gains.

    The lr factor is for Hugging Face's Conv1D, which stores its weight transposed, (in, out)
    where nn.Linear stores (out, in). Orthogonalising W or W^T gives the same update transposed
    (Newton-Schulz works on the smaller side either way), so the update itself is the same
    whichever the layout; but Muon's adjust_lr_fn "original" scales the lr by
    sqrt(max(1, shape[0] / shape[1])), Keller Jordan's sqrt(fan_out / fan_in) for an (out, in)
    weight. On Conv1D that would boost the MLP's c_proj (3072, 768) by 2 instead of c_fc and
    c_attn (by 2 and sqrt 3), so a Conv1D weight gets the factor that turns the one into the
    other. "match_rms_adamw" (0.2·sqrt(max(A, B))) is symmetric and needs none (the factor is
    applied for "original" only)."""
    tables = _tables(model)
    muon, adamw = [], []
    seen: set[int] = set()
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() == 2 and id(p) not in tables:
            owner = modules.get(name.rsplit(".", 1)[0]) if "." in name else model
            factor = 1.0
            if type(owner).__name__ == "Conv1D":  # (in, out): scale as the (out, in) weight would be
                rows, cols = p.shape
                factor = math.sqrt(max(1.0, cols / rows)) / math.sqrt(max(1.0, rows / cols))
            muon.append((name, p, factor))
        else:
            adamw.append((name, p))
    return muon, adamw


# --------------------------------------------------------------------------- Muon beside AdamW


class MuonAdamW:
    """torch.optim.Muon for the blocks' matrices and AdamW for the rest, stepped as one optimizer.

    What the Stepper and torch's GradScaler ask of an optimizer: param_groups (AdamW's, then
    Muon's: the same dicts, so setting a group's lr sets it), step, zero_grad, state_dict and
    load_state_dict. A Muon group carries "muon": True and "lr_factor" (see split)."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon = muon
        self.adamw = adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    @property
    def state(self) -> dict:
        return {**self.adamw.state, **self.muon.state}

    def step(self, closure=None) -> None:
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def _muon_adamw(model: nn.Module, t: cfgmod.TrainConfig) -> MuonAdamW:
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f"train.optimizer = \"muon\" needs torch 2.9 or newer (this is torch {torch.__version__}); "
                        f"upgrade torch or use train.optimizer = \"adamw\"")
    muon_params, adamw_params = split(model)
    if not muon_params:
        raise UserError("train.optimizer = \"muon\": this model has no 2-D weight matrices outside its embeddings "
                        "for Muon to train; use train.optimizer = \"adamw\"")
    factors: dict[float, list[nn.Parameter]] = {}
    for _, p, factor in muon_params:
        factors.setdefault(factor if t.muon_adjust_lr == "original" else 1.0, []).append(p)
    # torch's Muon decays by the group's lr × weight_decay: dividing the decay by the layout factor
    # keeps every matrix's decay at muon_lr × muon_weight_decay
    groups = [{"params": ps, "muon": True, "lr_factor": f, "weight_decay": t.muon_weight_decay / f}
              for f, ps in factors.items()]
    muon = torch.optim.Muon(groups, lr=t.muon_lr, weight_decay=t.muon_weight_decay, momentum=t.muon_momentum,
                            nesterov=t.muon_nesterov, adjust_lr_fn=t.muon_adjust_lr)
    adamw = _adamw([
        {"params": [p for _, p in adamw_params if p.dim() >= 2], "weight_decay": t.weight_decay},  # embeddings
        {"params": [p for _, p in adamw_params if p.dim() < 2], "weight_decay": 0.0},  # biases and gains
    ], t)
    return MuonAdamW(muon, adamw)


# --------------------------------------------------------------------------- each step, and a resume


def set_lr(optimizer, lr: float, t: cfgmod.TrainConfig) -> None:
    """AdamW's groups at the schedule's `lr`; Muon's at the same point of the same curve:
    lr × muon_lr / learning_rate (× the group's layout factor)."""
    muon_ratio = t.muon_lr / t.learning_rate
    for group in optimizer.param_groups:
        group["lr"] = lr * muon_ratio * group["lr_factor"] if group.get("muon") else lr


def kind(optimizer) -> str:
    return "muon" if isinstance(optimizer, MuonAdamW) else "adamw8bit" if _is_8bit(optimizer) else "adamw"


def _saved_kind(state: dict[str, Any]) -> str:
    """The optimizer a checkpoint's state came from (bitsandbytes keeps its moments as state1/state2)."""
    if "muon" in state:
        return "muon"
    moments = state.get("state") or {}
    return "adamw8bit" if any("state1" in s for s in moments.values() if isinstance(s, dict)) else "adamw"


def load_state(optimizer, state: dict[str, Any]) -> None:
    """A checkpoint's optimizer state (moments, momentum buffers, step counts) into `optimizer`.
    The hyperparameters stay the config's (a `resume --set train.muon_momentum=...` holds);
    torch's load_state_dict would take the checkpoint's."""
    saved = _saved_kind(state)
    if saved != kind(optimizer) and (state.get("state") or "muon" in state):  # none yet (iter 0): nothing to mix up
        raise UserError(f"the checkpoint was trained with train.optimizer = \"{saved}\" and this run is set to "
                        f"\"{kind(optimizer)}\": resume with --set train.optimizer={saved}, or start a new run "
                        f"to train with {kind(optimizer)}")
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
