"""The finetune engine's memory savers: LoRA adapters (peft) and gradient checkpointing.

train.lora_r > 0 freezes the pretrained model and trains, beside each module that
train.lora_targets names, two small matrices A (r x in) and B (out x r), B starting at zero:
the module computes W x + (lora_alpha / r) B A dropout(x) (Hu et al. 2021, through peft, the
library people use for it). GPT-2's c_attn, c_proj and c_fc are Conv1D layers, which store
their weight as (in, out): peft is told so (fan_in_fan_out). What the run trains, checkpoints
and hands to its optimizer is the adapters alone (GPT-2 xl with r = 16 on c_attn, c_proj and
c_fc: 19.7M trainable of 1.58B); the frozen model is loaded again from model.pretrained on resume.

runs/<name>/model/ of such a run is a PEFT adapter folder (adapter_config.json, naming the base
model, and adapter_model.safetensors): `PeftModel.from_pretrained(base, folder)` loads it.
load_pretrained (engine/train/finetune.py) reads such a folder as the base with the adapter merged in,
so `eval`, `export` and a new run's model.pretrained take it like any model folder.

train.gradient_checkpointing keeps only each block's input in forward and recomputes the block
in backward (Hugging Face's gradient_checkpointing_enable, now activation_checkpointing_enable;
non-reentrant: gradients reach the adapters even though the frozen embeddings' output needs
none, and dropout draws the same masks when a block is recomputed, so the losses are those of a
run without it).
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .. import config as cfgmod
from ..errors import UserError

if TYPE_CHECKING:
    import torch.nn as nn

ADAPTER_CONFIG = "adapter_config.json"  # torch is imported only by the functions that need it


def apply(hf_model: nn.Module, t: cfgmod.TrainConfig, name: str) -> nn.Module:
    """The model a run trains: `hf_model` with gradient checkpointing and LoRA adapters as t says."""
    if t.gradient_checkpointing:
        if not getattr(hf_model, "supports_gradient_checkpointing", False):
            raise UserError(f"train.gradient_checkpointing = true, but {name} ({type(hf_model).__name__}) does not "
                            f"support it; set it to false")
        enable = getattr(hf_model, "activation_checkpointing_enable", None)  # transformers 5.2x's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.lora_r:
        hf_model = with_adapters(hf_model, t, name)
    return hf_model


def with_adapters(hf_model: nn.Module, t: cfgmod.TrainConfig, name: str) -> nn.Module:
    """`hf_model` frozen, with trainable LoRA adapters on the modules train.lora_targets names."""
    from peft import LoraConfig, get_peft_model

    targets = cfgmod.lora_targets(t)
    found = matching_modules(hf_model, targets)
    for target in targets:
        if not any(_matches(n, target) for n in found):
            raise UserError(f"train.lora_targets names {target!r}, and {name} has no such module (its linear layers: "
                            f"{', '.join(linear_names(hf_model)) or 'none'})")
    conv1d = all(type(m).__name__ == "Conv1D" for m in found.values())  # GPT-2's layers store (in, out)
    config = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, target_modules=targets,
                        fan_in_fan_out=conv1d, bias="none", task_type="CAUSAL_LM")
    with _quiet_peft():
        return get_peft_model(hf_model, config)


@contextmanager
def _quiet_peft():
    """peft asks transformers 5 a question under its deprecated name: no FutureWarning for it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _matches(module_name: str, target: str) -> bool:
    """peft's rule for a target given by name: the module's full name, or its last dotted part(s)."""
    return module_name == target or module_name.endswith("." + target)


def matching_modules(model: nn.Module, targets: list[str]) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and any(_matches(n, t) for t in targets)}


def linear_names(model: nn.Module) -> list[str]:
    """The distinct short names of a model's linear layers (nn.Linear, GPT-2's Conv1D)."""
    import torch.nn as nn

    names = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
            short = n.rsplit(".", 1)[-1]
            if short not in names:
                names.append(short)
    return names


def plain(hf_model: nn.Module) -> nn.Module:
    """The transformers model under a PeftModel (the model itself otherwise)."""
    get_base = getattr(hf_model, "get_base_model", None)
    return get_base() if callable(get_base) else hf_model


def is_adapter(hf_model: nn.Module) -> bool:
    return callable(getattr(hf_model, "get_base_model", None))


# --------------------------------------------------------------------------- adapter folders


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def base_of(folder: Path) -> str:
    """The base model an adapter folder names (adapter_config.json's base_model_name_or_path)."""
    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / ADAPTER_CONFIG} is unreadable ({e.__class__.__name__}: {e})") from None
    if not isinstance(base, str) or not base:
        raise UserError(f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    return base


def merge(base_model: nn.Module, folder: Path) -> nn.Module:
    """`base_model` with the adapter in `folder` added into its weights: a plain transformers model."""
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(base_model, str(folder)).merge_and_unload()
