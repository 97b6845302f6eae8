"""The finetune engine's workload: a Hugging Face causal LM on the user's text, packed into blocks.

The shared Stepper (engine/train/step.py) and loop (engine/train/loop.py) train it, so events, control,
checkpoints, OOM recovery and exact resume are the pretrain engine's; this module supplies what differs:

- the model and its tokenizer, `from_pretrained` from a local folder or a hub name. The hub cache
  is tried first with no network at all; only a name missing from it reaches for the Hub, after
  one short reachability probe, so an offline box gets one sentence instead of a retry storm.
  Weights are loaded in float32 (the Stepper's autocast gives mixed precision on a GPU).
- the data: engine/data/packing.py tokenizes the documents once with the model's tokenizer and
  packs them, with their held-out split, into one token stream per split.
- the batches: the train stream is cut into blocks of block_size + 1 tokens (x = [:-1], y = [1:])
  and visited epoch by epoch, each epoch in its own random order. Row r of the run (step k's
  batch of n rows holds rows k*n .. k*n+n-1) is block perm_e[r % n_blocks] of epoch
  e = r // n_blocks, perm_e drawn from (seed, e) alone: stateless, so exact resume needs nothing
  but the step index, every block is seen once per epoch, and train.epochs means what it says.
- train.epochs > 0: max_iters = ceil(epochs * blocks / rows per step); the schedule decays over
  the whole run, as the HF Trainer's does (lr_decay_iters "auto" follows max_iters; a number,
  written before the run's length was known, is replaced by it). epochs is then set to 0 in
  the config, so the resolved max_iters is what config.toml keeps and a later `set` or
  `resume --set train.max_iters=...` is not undone by deriving it again.
- runs/<name>/model/ holds the latest model and tokenizer (save_pretrained, written to a temp
  folder and swapped in at every checkpoint); runs/<name>/model-best/ the best by val loss.
  Either loads with transformers.pipeline("text-generation", model=...). With train.lora_r > 0
  (engine/train/lora.py) they are PEFT adapter folders, and `export` writes the merged model.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import config as cfgmod
from ..data.packing import eos_id, prepare
from ..data.sources import hub_reachable
from ..errors import NetworkUnavailable, UserError
from ..machine.hardware import flops_per_token
from . import lora
from .checkpoint import BEST_DIR



# --------------------------------------------------------------------------- model and tokenizer


def quiet_transformers() -> None:
    """No tqdm bars in stdout.log (loading and saving weights draw them in transformers 5)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_pretrained(name: str, progress=lambda msg: None):
    """(model, tokenizer) from a local folder or a hub name; one sentence when that cannot be done."""
    quiet_transformers()
    local = Path(name).expanduser()
    if local.is_dir():
        if lora.is_adapter_folder(local):
            return _load_adapter(local, progress)
        if not (local / "config.json").is_file():
            raise UserError(f"model.pretrained {name} is a folder without a config.json (point it at a folder "
                            f"written by save_pretrained, e.g. a finetune run's model/ folder)")
        progress(f"loading {name}")
        # by its absolute path: a LoRA run's adapter folder names its base model this way
        return _load(str(local.resolve()), local_files_only=True)
    if local.exists():
        raise UserError(f"model.pretrained {name} is a file; it needs a model folder written by save_pretrained")
    if name.startswith((".", "/", "~")):
        raise UserError(f"model.pretrained {name} does not exist (a hub name such as \"gpt2\", or a local folder "
                        f"written by save_pretrained)")
    try:
        model_tok = _load(name, local_files_only=True)  # the local cache first: no network at all
        progress(f"loaded {name} from the Hugging Face cache")
        return model_tok
    except _NotCached:
        pass
    if not hub_reachable():
        raise NetworkUnavailable(
            f"model.pretrained {name!r} is not in the Hugging Face cache and the Hub cannot be reached: connect "
            f"once to download it (it is cached for later), or set model.pretrained to a local model folder")
    progress(f"downloading {name} from the Hugging Face Hub")
    try:
        return _load(name, local_files_only=False)
    except _NotCached as e:
        raise UserError(f"model.pretrained {name!r} could not be loaded from the Hugging Face Hub "
                        f"({e.detail})") from None


def _load_adapter(folder: Path, progress):
    """A PEFT adapter folder (a LoRA run's model/): its base model with the adapter merged in, and
    the tokenizer saved beside the adapter (else the base model's)."""
    base = lora.base_of(folder)
    progress(f"{folder} is a LoRA adapter of {base}: loading {base} and merging the adapter into it")
    model, tokenizer = load_pretrained(base, progress)
    model = lora.merge(model, folder)
    try:
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if len(own) >= 2:
            tokenizer = own
    except (OSError, ValueError):
        pass  # no tokenizer files beside the adapter: the base model's
    return model, tokenizer


class _NotCached(Exception):
    def __init__(self, detail: str):
        self.detail = detail


def _load(where: str, local_files_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(where, local_files_only=local_files_only, dtype=torch.float32)
    except (OSError, ValueError) as e:  # not cached, not found, no tokenizer files, not a causal LM
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        if Path(where).is_dir():
            raise UserError(f"model.pretrained {where} could not be loaded ({detail})") from None
        raise _NotCached(detail) from None
    # transformers 5 builds an empty tokenizer from config.json when the tokenizer files are missing
    if len(tokenizer) < 2:
        raise UserError(f"model.pretrained {where} has no tokenizer files (save the tokenizer beside the model: "
                        f"tokenizer.save_pretrained(folder))")
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UserError(f"model.pretrained {where}: its tokenizer has {len(tokenizer)} tokens and the model only "
                        f"{rows} embedding rows (model.resize_token_embeddings(len(tokenizer)) before saving)")
    return model, tokenizer


class CausalLMAdapter(nn.Module):
    """Our Stepper's model interface, `model(idx, targets) -> (logits, loss)`, over an HF causal LM.

    The batches already hold shifted targets (x = rows[:, :-1], y = rows[:, 1:]), so the loss is a
    plain cross-entropy over every position. idx stays the first positional argument: the fault
    injection hook in step.py reads it there.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.hf(input_ids=idx, use_cache=False).logits  # (B, T, V)
        if targets is None:
            return logits[:, [-1], :], None
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (tied ones once); by default without the position embeddings, as ours."""
        n = sum(p.numel() for p in self.parameters())
        wpe = position_embedding(self.hf)
        if non_embedding and wpe is not None:
            n -= wpe.weight.numel()
        return n


def position_embedding(hf_model: nn.Module) -> nn.Module | None:
    base = getattr(lora.plain(hf_model), "base_model", hf_model)
    wpe = getattr(base, "wpe", None)
    return wpe if isinstance(wpe, nn.Embedding) else None


def max_positions(hf_config) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        v = getattr(hf_config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


# --------------------------------------------------------------------------- data


# --------------------------------------------------------------------------- the workload


def rows_per_step(cfg: cfgmod.Config) -> int:
    """Rows (blocks) of one optimizer step over the whole run (torchrun's WORLD_SIZE included)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return cfg.train.micro_batch * cfg.train.grad_accum * max(1, world)


def iters_for_epochs(epochs: float, train_blocks: int, rows: int) -> int:
    return max(1, math.ceil(epochs * train_blocks / rows))


class FinetuneWorkload:
    def __init__(self, cfg: cfgmod.Config, progress=None, model=None, tokenizer=None):
        progress = progress or (lambda msg: None)
        self.cfg = cfg
        if model is None or tokenizer is None:
            model, tokenizer = load_pretrained(cfg.model.pretrained, progress)
        self.tokenizer = tokenizer
        self.eos = eos_id(tokenizer)
        self.n_positions = max_positions(model.config) or cfg.model.block_size
        if cfg.model.block_size > self.n_positions:
            raise UserError(f"model.block_size = {cfg.model.block_size} is longer than {cfg.model.pretrained} "
                            f"can attend to ({self.n_positions} positions); use at most {self.n_positions}")
        model = lora.apply(model, cfg.train, cfg.model.pretrained)  # LoRA adapters, gradient checkpointing
        model.train()  # from_pretrained returns eval mode; training (dropout) must not wait for the first eval
        self.model = CausalLMAdapter(model)
        if cfg.train.lora_r:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            progress(f"LoRA r={cfg.train.lora_r} on {', '.join(cfgmod.lora_targets(cfg.train))}: {trainable:,} "
                     f"trainable parameters of {total:,} ({trainable / total:.2%}); the rest is frozen")
        self.data = prepare(cfg.data.source, tokenizer, cfg.data.val_fraction, cfg.model.block_size,
                            cfg.data.text_column, progress)
        self.train_blocks = self.data.num_blocks("train", cfg.model.block_size)
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, its block order), the one in use
        if cfg.train.epochs > 0:
            self._resolve_epochs(progress)

    def _resolve_epochs(self, progress) -> None:
        t = self.cfg.train
        rows = rows_per_step(self.cfg)
        iters = iters_for_epochs(t.epochs, self.train_blocks, rows)
        progress(f"train.epochs = {t.epochs:g}: max_iters = {iters:,} ({self.train_blocks:,} blocks of "
                 f"{self.cfg.model.block_size} tokens per epoch, {rows} per step)")
        t.max_iters = iters
        if t.lr_decay_iters != "auto":  # a number was written before the run's length was known
            t.lr_decay_iters = iters
        t.epochs = 0.0

    # ------------------------------------------------------------------ batches

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + 7_777_777 + epoch)
            self._perm = (epoch, torch.randperm(self.train_blocks, generator=gen))
        return self._perm[1]

    def train_block_indices(self, step: int, n: int) -> np.ndarray:
        """The blocks of step `step` (n rows): rows step*n .. step*n+n-1 of the epoch-ordered stream."""
        out = np.empty(n, dtype=np.int64)
        for j in range(n):
            r = step * n + j
            epoch, pos = divmod(r, self.train_blocks)
            out[j] = int(self._epoch_order(epoch)[pos])
        return out

    def sample_batch(self, split: str, n: int, gen: torch.Generator, step: int | None):
        T = self.cfg.model.block_size
        if split == "train" and step is not None:
            index = self.train_block_indices(step, n)
        else:  # eval: random blocks from `gen` (the Stepper seeds it the same way every time)
            index = torch.randint(self.data.num_blocks(split, T), (n,), generator=gen).numpy()
        rows = torch.from_numpy(self.data.blocks(split, index, T))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    # ------------------------------------------------------------------ sampling

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"] if prompt else []
        if ids:
            return ids
        return [self.eos] if self.eos is not None else [0]  # an empty prompt starts a new document

    @property
    def context_window(self) -> int:
        return self.n_positions

    @torch.no_grad()
    def stream(self, ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
               gen: torch.Generator) -> Iterator[int]:
        """The new token ids after `ids`, one at a time: `gen` only (never the global RNG), a KV
        cache, temperature and top-k; the window slides once the context is full."""
        hf = self.model.hf
        device = next(hf.parameters()).device
        limit = self.n_positions
        ids = list(ids)
        n_vocab = len(self.tokenizer)
        out = hf(input_ids=torch.tensor([ids[-limit:]], device=device), use_cache=True)
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()  # (1, V)
            if logits.size(-1) > n_vocab:  # rows past the tokenizer (padding) cannot be decoded
                logits[:, n_vocab:] = -float("inf")
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=gen)
            yield int(nxt)
            ids.append(int(nxt))
            past = out.past_key_values
            if past is None or past.get_seq_length() >= limit:  # context full: slide the window
                out = hf(input_ids=torch.tensor([ids[-(limit - 1):]], device=device), use_cache=True)
            else:
                out = hf(input_ids=nxt.view(1, 1), past_key_values=past, use_cache=True)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # ------------------------------------------------------------------ the rest of the protocol

    def missing(self, k: int, rows: int) -> None:
        """Never anything: every document is tokenized and packed before the run starts."""
        return None

    data_complete = True  # (the same reason)

    def close(self) -> None:
        pass  # nothing runs in the background

    def flops_per_token(self) -> float:
        """6N + attention, less the weight gradients a frozen parameter does not need (2 per token)."""
        c = self.model.hf.config
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        wpe = position_embedding(self.model.hf)
        if wpe is not None and not wpe.weight.requires_grad:
            frozen -= wpe.weight.numel()  # a lookup: not in N to begin with
        return (flops_per_token(self.model.num_params(), c.num_hidden_layers, c.hidden_size, self.cfg.model.block_size)
                - 2.0 * frozen)

    def tokenizer_state(self) -> None:
        return None  # the tokenizer is saved beside the model (on_checkpoint), not in the checkpoint

    def on_checkpoint(self, run_dir, iter: int, best: bool) -> None:
        """runs/<name>/model/ (and model-best/ when best): save_pretrained, swapped in whole. A LoRA
        run's is the adapter folder (PeftModel.save_pretrained), a full fine-tune's the whole model."""
        from ..fsutil import as_plain_files

        root = Path(run_dir.path)
        tmp = root / f".model.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if lora.is_adapter(self.model.hf):
            # the embeddings are neither adapted nor resized; "auto" would ask the Hub at every checkpoint
            self.model.hf.save_pretrained(tmp, save_embedding_layers=False)
        else:
            self.model.hf.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        as_plain_files(tmp)  # safetensors writes its file 0600; the rest of the folder is 0644
        if best:
            best_tmp = root / f".{BEST_DIR}.tmp{os.getpid()}"
            shutil.rmtree(best_tmp, ignore_errors=True)
            shutil.copytree(tmp, best_tmp, copy_function=_link_or_copy)  # the same bytes: hard links
            _swap_in(best_tmp, root / BEST_DIR)
        _swap_in(tmp, Path(run_dir.model_dir))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap_in(new: Path, dest: Path) -> None:
    """Replace folder `dest` by `new` (two renames: `dest` is missing only between them)."""
    old = dest.with_name(f".{dest.name}.old{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.rename(dest, old)
    os.rename(new, dest)
    shutil.rmtree(old, ignore_errors=True)
