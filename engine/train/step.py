"""The maths of training, for both engines: one optimizer step, evaluation, generation.

A `Stepper` holds the model, the optimizer, the grad scaler and the current micro-batch split.
It knows nothing of files, events or commands: engine/train/loop.py drives it and records what it
does. An engine supplies a Workload (model, batches, tokenizer); see engine/train/pretrain.py and
engine/train/finetune.py.

Step k (0-based) trains on a batch drawn as a whole from a generator seeded by (seed, k) and
split into micro-batches, so the same tokens are trained in the same order whatever the split
(an OOM re-split changes it) and resuming needs no data cursor beyond k itself.
"""

from __future__ import annotations

import gc
import math
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn as nn

from .. import config as cfgmod
from .. import faults
from ..errors import UserError
from ..machine.hardware import peak_tflops
from . import optim
from .cpushare import CpuShare
from .dist import Dist

EVAL_SEED_OFFSET = 7919  # eval batches come from their own generator: the same ones every time


class Workload(Protocol):
    """What differs between the pretrain and finetune engines."""

    model: nn.Module  # the raw module (never compiled or DDP-wrapped)

    def sample_batch(self, split: str, n: int, gen: torch.Generator, step: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """n (input, target) rows of int64 token ids on the CPU, drawn with `gen` (train: for step `step`)."""

    context_window: int  # the most tokens the model attends to

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt (an empty one starts a new document)."""

    def stream(self, ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
               gen: torch.Generator) -> Iterator[int]:
        """New token ids after `ids`, one at a time, drawn with `gen` (called under no_grad, in eval mode)."""

    def decode(self, ids: list[int]) -> str:
        """Text of token ids."""

    def flops_per_token(self) -> float | None:
        """Training FLOPs per token for MFU, or None."""

    def tokenizer_state(self) -> dict | None:
        """What a checkpoint must carry to decode without the token cache (char vocabularies)."""

    def on_checkpoint(self, run_dir, iter: int, best: bool) -> None:
        """Extra artefacts to write beside a checkpoint (finetune: save_pretrained)."""

    def missing(self, k: int, rows: int) -> str | None:
        """Why step k's batch of `rows` rows cannot be drawn yet (pretrain: its shards are still being
        prepared), or None; the loop waits, taking commands, until it is None."""

    data_complete: bool  # nothing is left to wait for: the loop stops asking `missing`

    def close(self) -> None:
        """Stop what the workload runs in the background (pretrain: a data preparation), at the run's end."""


# --------------------------------------------------------------------------- settings


def resolve_device(cfg: cfgmod.Config, dist: Dist) -> str:
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device = {cfg.train.device!r} but torch sees no CUDA GPU "
                            f"(run 'gpt2-cockpit doctor'; or --set train.device=cpu)")
        if dist.enabled:
            return f"cuda:{dist.local_rank}"
    return want


def resolve_dtype(cfg: cfgmod.Config, device: str) -> torch.dtype:
    name = cfg.train.dtype
    if name == "auto":
        if device.startswith("cuda"):
            # emulated bf16 (T4, V100) is slow: only native support counts
            name = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
        else:
            name = "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def lr_at(step: int, t: cfgmod.TrainConfig) -> float:
    """Linear warm-up to learning_rate, cosine decay to min_lr at lr_decay_iters (max_iters when
    "auto", read at every step so a live `set train.max_iters` moves the end), then flat."""
    return t.lr_at(step)


def apply_memory_limit(cfg: cfgmod.Config, device: str) -> str | None:
    """train.memory_limit_gb: cap this process's share of its GPU, to rehearse a smaller card on a
    bigger one (an allocation past the cap is a real CUDA OOM). Returns the sentence for the run's
    log, or None when no limit is set."""
    limit = cfg.train.memory_limit_gb
    if not limit:
        return None
    if not device.startswith("cuda"):
        return f"train.memory_limit_gb = {limit:g} applies to GPUs; this run trains on the {device}, without a limit"
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index  # "cuda": the current one
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, limit * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return f"GPU memory limited to {limit:g} GiB of {total / 2**30:.1f} GiB (train.memory_limit_gb)"


def step_generator(seed: int, step: int) -> torch.Generator:
    # seed + step would give seed 1's step 0 the batch of seed 0's step 1; a prime past any run's
    # step count keeps two seeds' batches apart
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


# --------------------------------------------------------------------------- faults


def is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the MPS / cuDNN allocation failures that arrive as RuntimeError."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "CUDNN_STATUS_ALLOC_FAILED" in msg
                                           or "MPS backend out of memory" in msg)


def install_fault_injection(model: nn.Module, rank: int = 0) -> torch.utils.hooks.RemovableHandle | None:
    """The fake OOM of engine/faults.py (OOM_TOKENS, OOM_RANK) as a forward pre-hook on `model`;
    returns its handle, or None (no hook at all) when this rank has none to fake."""
    f = faults.active()
    if f.oom_tokens is None or (f.oom_rank is not None and f.oom_rank != rank):
        return None
    limit = f.oom_tokens

    def hook(module, args, kwargs):
        idx = args[0] if args else kwargs.get("input_ids")
        if idx is not None and idx.numel() > limit:
            raise torch.OutOfMemoryError(
                f"fake OOM: {idx.numel()} tokens in one forward pass > {faults.OOM_TOKENS}={limit}")

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def fake_loss_fault() -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    """The fake NaN and spike of engine/faults.py (NAN_AT_ITER, SPIKE_AT_ITER) as a function of
    (loss, step k); None when neither is set."""
    f = faults.active()
    nan_at, spike_at = f.nan_at_iter, f.spike_at_iter
    if nan_at is None and spike_at is None:
        return None

    def fault(loss: torch.Tensor, k: int) -> torch.Tensor:
        if nan_at == k + 1:  # k is 0-based, the variables count as events do (from 1)
            loss = loss * float("nan")
        if spike_at == k + 1:
            loss = loss * faults.SPIKE_FACTOR
        return loss

    return fault


# --------------------------------------------------------------------------- spikes


class SpikeDetector:
    """How far a value stands above its recent history, in standard deviations (a z-score over the
    last `window` values, as llm.c's outlier detector). Every finite value joins the history, so a
    lasting change of level stops being a spike after a while."""

    MIN_HISTORY = 16  # fewer values say too little about the spread

    def __init__(self, window: int, history: list[float] | None = None):
        self.window = window
        self.history: deque[float] = deque(history or [], maxlen=window)

    def zscore(self, value: float) -> float | None:
        """The z-score of `value` against the history before it; None while the history is short."""
        n = len(self.history)
        if n < self.MIN_HISTORY or not math.isfinite(value):
            return None
        mean = sum(self.history) / n
        std = math.sqrt(max(sum((v - mean) ** 2 for v in self.history) / n, 0.0))
        return (value - mean) / std if std > 0 else None

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self.history.append(value)


# --------------------------------------------------------------------------- the step object


@dataclass
class Resplit:
    """An OOM made the step shrink its micro-batch (tokens per step unchanged)."""

    micro_batch_before: int
    micro_batch_after: int
    grad_accum_after: int


@dataclass
class Spike:
    kind: str  # "loss_spike" or "grad_spike"
    value: float
    zscore: float


@dataclass
class StepResult:
    loss: float  # mean over the step's micro-batches (and ranks)
    grad_norm: float  # before clipping
    applied: bool  # False: the update was skipped (non-finite, or a spike with train.skip_spikes)
    nonfinite: bool  # a NaN/inf loss or gradient (never applied)
    resplits: list[Resplit] = field(default_factory=list)
    spikes: list[Spike] = field(default_factory=list)


class Stepper:
    """Model, optimizer, scaler and split; `step(k)`, `evaluate()`, `generate()`, `state_dict()`."""

    def __init__(self, cfg: cfgmod.Config, workload: Workload, device: str, dist: Dist | None = None,
                 cpu_share: CpuShare | None = None):
        self.cfg = cfg  # cfg.train holds the current split (micro_batch x grad_accum)
        self.workload = workload
        self.device = device
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.dist = dist or Dist()
        self.cpu_share = cpu_share  # on a CPU: this run's fair share of the cores, looked at now and between steps
        t = cfg.train

        self.dtype = resolve_dtype(cfg, device)
        self.memory_note = apply_memory_limit(cfg, device)  # before the model takes any GPU memory
        self.autocast = (nullcontext() if self.dtype == torch.float32
                         else torch.autocast(device_type=self.device_type, dtype=self.dtype))
        self.raw_model = workload.model.to(device)
        self.dist.sync_module(self.raw_model)  # every rank starts from rank 0's weights
        self.oom_hook = install_fault_injection(self.raw_model, self.dist.rank)  # None unless faked
        # AdamW, or Muon for the blocks' matrices beside AdamW for the rest (train.optimizer)
        self.optimizer = optim.build(self.raw_model, t)
        # a GradScaler only for float16: bf16 has float32's range and needs no loss scaling
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)
        self.model = self.raw_model
        self.compiled = (t.compile is True) or (t.compile == "auto" and self.device_type == "cuda")
        if self.compiled:
            # dynamic=False: a micro-batch shrunk after an OOM compiles one more static graph;
            # torch.compile caches a few shapes, and an OOM shrinks at most log2(micro_batch) times
            self.model = torch.compile(self.model, dynamic=False)
        # several ranks: no DDP wrapper; step() averages the gradients itself once the ranks agree
        # that none ran out of memory (DDP would all-reduce inside backward, before they can agree)
        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.iters_done = 0  # optimizer steps completed (with the checkpoint's when resumed)
        self.peak_tflops = peak_tflops(torch.cuda.get_device_name(device) if self.device_type == "cuda" else None,
                                       t.peak_tflops)
        self.flops_per_token = workload.flops_per_token()
        self.loss_history = SpikeDetector(t.spike_window)
        self.grad_history = SpikeDetector(t.spike_window)
        self.loss_fault = fake_loss_fault()  # None unless faked
        if self.cpu_share is not None:
            self.cpu_share.apply()  # the first look: the first eval already runs on this run's share

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.tokens_per_step * self.dist.world_size

    def mfu(self, tokens_per_sec: float) -> float | None:
        """Model FLOPs utilisation: achieved training FLOPs over the GPUs' peak (None on a CPU)."""
        if not (self.peak_tflops and self.flops_per_token):
            return None
        return self.flops_per_token * tokens_per_sec / (self.peak_tflops * 1e12 * self.dist.world_size)

    # ---------------------------------------------------------------- one optimizer step

    def step(self, k: int, lr: float) -> StepResult:
        """Optimizer step k at learning rate lr; an OOM halves the micro-batch and redoes step k.

        Several ranks agree after their micro-batches whether any ran out of memory (one small
        all-reduce that also averages the loss): if one did, all re-split the same way and redo
        the step; if none did, the gradients are averaged. A rank that alone runs out of memory
        never leaves the others waiting in an all-reduce it will not join."""
        if self.cpu_share is not None:
            self.cpu_share.apply()
        optim.set_lr(self.optimizer, lr, self.cfg.train)  # Muon's groups: the same curve at muon_lr's scale
        x, y = self._local_rows(k)
        resplits = []
        while True:
            loss = self._attempt(x, y, k)
            ran_out = loss is None
            if self.dist.enabled:
                ran_out, loss = self.dist.agree(ran_out, torch.zeros((), device=self.device) if ran_out else loss)
            if not ran_out:
                break
            resplits.append(self._resplit())
        if self.dist.enabled:
            self.dist.average_gradients(self.params)
        self.scaler.unscale_(self.optimizer)  # true gradients before the norm and the clip (fp16)
        # no clipping: clip at inf, which still returns the total norm the spike check and events read
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        loss_value, norm_value = torch.stack([loss.float(), norm.float().to(loss.device)]).tolist()  # one sync
        # fp16: an inf gradient with a finite loss is the GradScaler's business (it skips and rescales)
        bad = not math.isfinite(loss_value) or (not math.isfinite(norm_value) and self.dtype != torch.float16)
        spikes = self._spikes(loss_value, norm_value)
        skip = bad or (bool(spikes) and self.cfg.train.skip_spikes)
        if not skip:
            self.scaler.step(self.optimizer)
        # even after a skip: update() ends the step unscale_ began (the next unscale_ raises
        # otherwise) and, fp16, lowers the scale after an inf gradient; disabled (bf16, fp32) a no-op
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iters_done = k + 1
        return StepResult(loss_value, norm_value, not skip, bad, resplits, spikes)

    def _spikes(self, loss: float, grad_norm: float) -> list[Spike]:
        """Loss and gradient norm against their recent history (the same on every rank: both are
        all-reduced already)."""
        threshold = self.cfg.train.spike_zscore
        spikes = []
        for kind, value, history in (("loss_spike", loss, self.loss_history), ("grad_spike", grad_norm, self.grad_history)):
            z = history.zscore(value)
            if threshold > 0 and z is not None and z > threshold:
                spikes.append(Spike(kind, value, z))
            history.add(value)
        return spikes

    def _local_rows(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of step k's batch (the whole batch is drawn on every rank)."""
        t = self.cfg.train
        per_rank = t.micro_batch * t.grad_accum
        x, y = self.workload.sample_batch("train", per_rank * self.dist.world_size, step_generator(t.seed, k), k)
        r = self.dist.rank
        # x, y: (rows, T) int64 token ids on the CPU, y is x shifted by one token
        return x[r * per_rank:(r + 1) * per_rank], y[r * per_rank:(r + 1) * per_rank]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device_type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _attempt(self, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor | None:
        """_forward_backward, or None when it ran out of memory (the re-split drops its gradients)."""
        try:
            return self._forward_backward(x, y, k)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e):
                raise
        # returned outside the except block: the exception's traceback holds the failed
        # micro-batch's activations, and they must be gone before we retry
        return None

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
        """Accumulate this rank's gradients over the micro-batches of (x, y); returns the mean loss
        (a tensor). Nothing here talks to other ranks."""
        mb = self.cfg.train.micro_batch
        accum = x.size(0) // mb
        loss_sum = torch.zeros((), device=self.device)
        for i in range(accum):
            # xb, yb: (mb, T) int64 on the device
            xb, yb = self._to_device(x[i * mb:(i + 1) * mb]), self._to_device(y[i * mb:(i + 1) * mb])
            with self.autocast:
                _, loss = self.model(xb, yb)  # logits (mb, T, vocab) unused; loss: mean cross-entropy, a scalar
            if self.loss_fault is not None:
                loss = self.loss_fault(loss, k)
            # the gradients add up over the micro-batches: dividing each loss by accum makes their sum
            # the gradient of the mean loss over the step's rows, whatever the split
            loss = loss / accum
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        return loss_sum

    def _resplit(self) -> Resplit:
        """Halve the micro-batch, raise accumulation: same rows per step, same tokens, same order."""
        t = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device_type == "cuda":
            torch.cuda.empty_cache()
        before = t.micro_batch
        if before == 1:
            raise UserError(
                f"CUDA out of memory at micro_batch 1 (block_size {self.cfg.model.block_size}); this preset "
                f"does not fit this GPU: lower model.block_size, the model size (n_layer, n_embd), or use "
                f"train.dtype=bfloat16 or float16")
        rows = before * t.grad_accum
        mb = before // 2
        while rows % mb:  # an odd micro-batch: the largest smaller one that divides the rows
            mb -= 1
        t.micro_batch, t.grad_accum = mb, rows // mb
        return Resplit(before, t.micro_batch, t.grad_accum)

    # ---------------------------------------------------------------- evaluation and generation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters batches per split; the same batches every time (own generator)."""
        t = self.cfg.train
        out = {}
        self.raw_model.eval()
        try:
            for i, split in enumerate(("train", "val")):
                gen = torch.Generator().manual_seed(t.seed + EVAL_SEED_OFFSET + i)
                losses = [self._eval_batch(*self.workload.sample_batch(split, t.micro_batch, gen, None))
                          for _ in range(t.eval_iters)]
                out[split] = sum(losses) / len(losses)
        finally:
            self.raw_model.train()
        return out

    def _eval_batch(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Loss of one eval batch; on OOM, the same rows in halves (eval never kills the run)."""
        try:
            with self.autocast:
                _, loss = self.raw_model(self._to_device(x), self._to_device(y))
            return loss.item()
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e) or x.size(0) == 1:
                raise
        if self.device_type == "cuda":
            torch.cuda.empty_cache()
        half = x.size(0) // 2
        a, b = self._eval_batch(x[:half], y[:half]), self._eval_batch(x[half:], y[half:])
        return (a * half + b * (x.size(0) - half)) / x.size(0)

    def start_generation(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
                         seed: int) -> "Generation":
        """A sample to generate a slice at a time (`Generation.advance`), with its own generator:
        the training RNG stream is never touched. A prompt longer than the context is refused."""
        ids = self.workload.encode_prompt(prompt)
        window = self.workload.context_window
        if len(ids) > window:
            raise UserError(f"the prompt is {len(ids):,} tokens and the model's context window is {window:,}; "
                            f"shorten the prompt")
        gen = torch.Generator(self.device).manual_seed(seed)
        return Generation(self, prompt, self.workload.stream(ids, max_new_tokens, temperature, top_k, gen))

    def generate(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int) -> str:
        """The whole sample at once (a stopped run's checkpoint, tests)."""
        generation = self.start_generation(prompt, max_new_tokens, temperature, top_k, seed)
        generation.advance(math.inf)
        return generation.text

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer, scaler, RNG, split and config: with the loop's counters, a checkpoint."""
        return {
            "model": self.weights(),
            "trainable_only": self.frozen_params > 0,  # LoRA: the adapters; the frozen rest is model.pretrained
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "micro_batch": self.cfg.train.micro_batch,
            "grad_accum": self.cfg.train.grad_accum,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device_type == "cuda" else None,
            },
            "config": cfgmod.to_raw(self.cfg),
            "tokenizer": self.workload.tokenizer_state(),
            "spike_history": {"loss": list(self.loss_history.history), "grad_norm": list(self.grad_history.history)},
        }

    @property
    def frozen_params(self) -> int:
        """Parameters that do not train (LoRA's frozen model); tied ones counted once."""
        return sum(p.numel() for p in self.raw_model.parameters() if not p.requires_grad)

    def weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model: every tensor, or with frozen parameters (LoRA) the
        trainable ones alone (the adapters: megabytes, not the gigabytes of the model they adapt)."""
        state = self.raw_model.state_dict()
        if not self.frozen_params:
            return state
        trainable = {name for name, p in self.raw_model.named_parameters() if p.requires_grad}
        return {k: v for k, v in state.items() if k in trainable}

    def load_weights(self, state: dict[str, Any]) -> None:
        """A checkpoint's weights into the model; adapters alone (trainable_only) into the adapters."""
        partial = bool(state.get("trainable_only"))
        try:
            missing, unexpected = self.raw_model.load_state_dict(state["model"], strict=not partial)
            if partial:  # the frozen rest is model.pretrained's, loaded already
                trainable = {name for name, p in self.raw_model.named_parameters() if p.requires_grad}
                missing = [k for k in missing if k in trainable]
        except RuntimeError as e:  # missing or unexpected names, other shapes
            missing, unexpected = [" ".join(str(e).split())[:200]], []
        if missing or unexpected:
            keys = ("model.pretrained, train.lora_r and train.lora_targets" if self.cfg.engine == "finetune"
                    else "the model's shape (model.n_layer, n_head, n_embd, bias)")
            raise UserError(f"the checkpoint's weights do not fit this run's model ({(missing or unexpected)[0]}): "
                            f"{keys} must stay as they were when it was written")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_weights(state)
        optim.load_state(self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iters_done = int(state.get("iter", 0))
        # micro_batch/grad_accum come from config.toml, which an OOM re-split rewrote already
        history = state.get("spike_history") or {}
        self.loss_history = SpikeDetector(self.cfg.train.spike_window, history.get("loss"))
        self.grad_history = SpikeDetector(self.cfg.train.spike_window, history.get("grad_norm"))
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and self.device_type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


class Generation:
    """A sample in progress. Each `advance` runs in eval mode under no_grad for about the time it
    is given, then hands the model back in training mode, so a long sample is spread over
    several optimizer steps and never holds the run; the KV cache lives in the token stream."""

    def __init__(self, stepper: Stepper, prompt: str, tokens: Iterator[int]):
        self.stepper = stepper
        self.prompt = prompt
        self.tokens = tokens
        self.new: list[int] = []

    @property
    def text(self) -> str:
        return self.prompt + self.stepper.workload.decode(self.new)

    def advance(self, seconds: float) -> bool:
        """Generate for about `seconds` (at least one token); True once the sample is complete.
        Raises UserError when it runs out of GPU memory."""
        s = self.stepper
        deadline = time.perf_counter() + seconds
        s.raw_model.eval()
        # decoding one token at a time is a chain of tiny ops: on a CPU, extra OpenMP threads only
        # spin and wait (20x slower on a busy 2-core box), so decode on one thread
        threads = torch.get_num_threads()
        if s.device_type == "cpu":
            torch.set_num_threads(1)
        try:
            with torch.no_grad(), s.autocast:
                for token in self.tokens:
                    self.new.append(token)
                    if time.perf_counter() >= deadline:
                        return False
            return True
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e):
                raise
        finally:
            torch.set_num_threads(threads)
            s.raw_model.train()
        self.tokens = iter(())  # the stream died with the error
        if s.device_type == "cuda":
            torch.cuda.empty_cache()
        raise UserError("sampling ran out of GPU memory; try fewer max_new_tokens")
