"""The training loop both engines share: one contract for events, control, checkpoints and OOM.

An engine supplies a Workload (model, batches, tokenizer); the Trainer does the rest:
AdamW, cosine schedule with warm-up, gradient accumulation and clipping, autocast, optional
torch.compile, DDP, periodic eval, sampling between steps, live settings, checkpoints, exact
resume, OOM recovery and non-finite-step skipping.

Step k (0-based) trains on a batch drawn as a whole from a generator seeded by (seed, k) and
split into micro-batches, so the same tokens are trained in the same order whatever the split
(OOM recovery changes the split) and resuming needs no data cursor beyond k itself.
"""

from __future__ import annotations

import gc
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from . import config as cfgmod
from .control import Command, NullControl
from .errors import UserError
from .events import NullEventWriter
from .hardware import peak_tflops

EVAL_SEED_OFFSET = 7919


class Workload(Protocol):
    """What differs between the pretrain and finetune engines."""

    model: nn.Module  # the raw module (never compiled or DDP-wrapped)

    def sample_batch(self, split: str, n: int, gen: torch.Generator, step: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """n (input, target) rows of int64 token ids on the CPU, drawn with `gen`."""

    def generate(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
                 gen: torch.Generator) -> str:
        """Text continuing `prompt`, from the model in its current state (called under no_grad, eval)."""

    def flops_per_token(self) -> float | None:
        """Training FLOPs per token for MFU, or None."""

    def on_checkpoint(self, run_dir, iter: int, best: bool) -> None:
        """Extra artefacts to write beside a checkpoint (finetune: save_pretrained)."""


@dataclass
class Dist:
    """This process's place in a torchrun group (world_size 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "Dist":
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's object on every rank (commands reach all ranks at the same step)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


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
    """Linear warm-up to learning_rate, cosine decay to min_lr at lr_decay_iters, then flat."""
    if step < t.warmup_iters:
        return t.learning_rate * (step + 1) / (t.warmup_iters + 1)
    if step >= t.lr_decay_iters:
        return t.min_lr
    ratio = (step - t.warmup_iters) / max(1, t.lr_decay_iters - t.warmup_iters)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.learning_rate - t.min_lr)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the MPS / cuDNN allocation failures that arrive as RuntimeError."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "CUDNN_STATUS_ALLOC_FAILED" in msg
                                           or "MPS backend out of memory" in msg)


def install_fault_injection(model: nn.Module) -> None:
    """GPT2_COCKPIT_FAKE_OOM_TOKENS=N: any forward over more than N tokens raises a real OutOfMemoryError."""
    budget = os.environ.get("GPT2_COCKPIT_FAKE_OOM_TOKENS")
    if not budget:
        return
    limit = int(budget)

    def hook(module, args, kwargs):
        idx = args[0] if args else kwargs.get("input_ids")
        if idx is not None and idx.numel() > limit:
            raise torch.OutOfMemoryError(
                f"fake OOM: {idx.numel()} tokens in one forward pass > GPT2_COCKPIT_FAKE_OOM_TOKENS={limit}")

    model.register_forward_pre_hook(hook, with_kwargs=True)


class Trainer:
    def __init__(self, cfg: cfgmod.Config, workload: Workload, device: str, run=None, events=None,
                 control=None, dist: Dist | None = None, log=print):
        self.cfg = cfg
        self.workload = workload
        self.device = device
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.run = run  # RunDir or None (bench)
        self.events = events or NullEventWriter()
        self.control = control or NullControl()
        self.dist = dist or Dist()
        self.log = log

        self.dtype = resolve_dtype(cfg, device)
        self.autocast = (nullcontext() if self.dtype == torch.float32
                         else torch.autocast(device_type=self.device_type, dtype=self.dtype))
        self.raw_model = workload.model.to(device)
        install_fault_injection(self.raw_model)
        t = cfg.train
        groups = (self.raw_model.param_groups(t.weight_decay) if hasattr(self.raw_model, "param_groups")
                  else _param_groups(self.raw_model, t.weight_decay))
        try:
            # fused AdamW: one kernel over all parameters (CUDA, and CPU since torch 2.4: ~3% a step
            # for the CPU baby GPT)
            self.optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2), fused=True)
        except (RuntimeError, TypeError, ValueError):  # a device or dtype without a fused kernel
            self.optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.beta1, t.beta2))
        # a GradScaler only for float16: bf16 has float32's range and needs no loss scaling
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)
        self.model = self.raw_model
        self.compiled = (t.compile is True) or (t.compile == "auto" and self.device_type == "cuda")
        if self.compiled:
            # dynamic=False: a micro-batch shrunk after an OOM compiles one more static graph;
            # torch.compile caches a few shapes, and an OOM shrinks at most log2(micro_batch) times
            self.model = torch.compile(self.model, dynamic=False)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.model, device_ids=[self.dist.local_rank] if self.device_type == "cuda" else None)

        self.iter = 0  # optimizer steps completed
        self.best_val = math.inf
        self.bad_steps = 0  # consecutive non-finite steps
        self.state = "preparing"
        self._signal_stop: str | None = None  # set by a signal handler, turned into a stop command
        self.stop_reason: str | None = None  # why the loop is ending early
        self.last_checkpoint: dict[str, Any] | None = None
        self.last_eval_iter = -1
        self.last_checkpoint_iter = -1
        self._sample_count = 0
        self._interval_ms: list[float] = []
        self.peak = peak_tflops(torch.cuda.get_device_name(device) if self.device_type == "cuda" else None,
                                t.peak_tflops)
        self.flops_per_token = workload.flops_per_token()

    # ------------------------------------------------------------------ bookkeeping

    @property
    def micro_batch(self) -> int:
        return self.cfg.train.micro_batch

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.tokens_per_step * self.dist.world_size

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state = state
        if self.dist.is_main:
            self.events.emit("state", state=state, reason=reason)
            self.control.update_status(state=state, reason=reason)

    def _save_config(self) -> None:
        if self.run is not None and self.dist.is_main:
            cfgmod.save(self.cfg, self.run.config_path)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val_loss": self.best_val,
            "bad_steps": self.bad_steps,
            "data_position": self.iter,  # the next step's batch is drawn from step_generator(seed, iter)
            "micro_batch": self.cfg.train.micro_batch,
            "grad_accum": self.cfg.train.grad_accum,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device_type == "cuda" else None,
            },
            "config": cfgmod.to_raw(self.cfg),
            "tokenizer": self.workload.tokenizer_state() if hasattr(self.workload, "tokenizer_state") else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iter = int(state["iter"])
        self.best_val = float(state["best_val_loss"])
        self.bad_steps = int(state.get("bad_steps", 0))
        # micro_batch/grad_accum come from config.toml, which an OOM shrink rewrote already
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and self.device_type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.last_eval_iter = self.last_checkpoint_iter = self.iter

    def save_checkpoint(self, best: bool = False) -> dict[str, Any] | None:
        if self.run is None or not self.dist.is_main:
            return None
        if self.last_checkpoint_iter == self.iter and not best and self.last_checkpoint:
            return self.last_checkpoint
        path = ckpt.save(self.run.checkpoints, self.iter, self.state_dict(), best)
        self.workload.on_checkpoint(self.run, self.iter, best)
        self.last_checkpoint_iter = self.iter
        self.last_checkpoint = self.events.emit("checkpoint", iter=self.iter, path=str(path), best=best)
        self.control.update_status(last_checkpoint=self.iter)
        return self.last_checkpoint

    # ------------------------------------------------------------------ one optimizer step

    def _local_rows(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of step `step`'s batch (the whole batch is drawn on every rank)."""
        t = self.cfg.train
        per_rank = t.micro_batch * t.grad_accum
        x, y = self.workload.sample_batch("train", per_rank * self.dist.world_size, step_generator(t.seed, step), step)
        r = self.dist.rank
        return x[r * per_rank:(r + 1) * per_rank], y[r * per_rank:(r + 1) * per_rank]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device_type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """Accumulate gradients over the micro-batches of (x, y); returns the mean loss (a tensor)."""
        mb = self.cfg.train.micro_batch
        accum = x.size(0) // mb
        nan_at = os.environ.get("GPT2_COCKPIT_FAKE_NAN_AT_ITER")
        loss_sum = torch.zeros((), device=self.device)
        for i in range(accum):
            xb, yb = self._to_device(x[i * mb:(i + 1) * mb]), self._to_device(y[i * mb:(i + 1) * mb])
            last = i == accum - 1
            # DDP: all-reduce gradients once, on the last micro-step, not after every backward
            sync = self.model.no_sync() if self.dist.enabled and not last else nullcontext()
            with sync:
                with self.autocast:
                    _, loss = self.model(xb, yb)
                if nan_at and int(nan_at) == step + 1:
                    loss = loss * float("nan")
                loss = loss / accum
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        return loss_sum

    def _recover_from_oom(self, step: int) -> None:
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
        self._save_config()
        if self.dist.is_main:
            self.events.emit("oom", iter=step + 1, micro_batch_before=before,
                             micro_batch_after=t.micro_batch, grad_accum_after=t.grad_accum)
        self.log(f"out of memory at iter {step + 1}: micro_batch {before} -> {t.micro_batch}, "
                 f"grad_accum -> {t.grad_accum} (tokens per step unchanged); redoing the step")

    def train_step(self, step: int) -> tuple[float, float, bool]:
        """One optimizer step at index `step`. Returns (loss, grad_norm, applied)."""
        t = self.cfg.train
        lr = lr_at(step, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self._local_rows(step)
        while True:
            oom = False
            try:
                loss_sum = self._forward_backward(x, y, step)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not is_oom(e):
                    raise
                oom = True
            if not oom:
                break
            # recover outside the except block: the exception's traceback holds the failed
            # step's activations, and they must be gone before we retry
            self._recover_from_oom(step)
        if self.dist.enabled:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
        loss, norm_value = torch.stack([loss_sum.float(), norm.float().to(loss_sum.device)]).tolist()  # one CPU-GPU sync
        # fp16: an inf gradient with a finite loss is the GradScaler's business (it skips and rescales)
        bad = not math.isfinite(loss) or (not math.isfinite(norm_value) and self.dtype != torch.float16)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            return loss, norm_value, False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, norm_value, True

    # ------------------------------------------------------------------ eval and sampling

    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        """Mean loss over eval_iters batches per split; the same batches every time (own generator)."""
        t = self.cfg.train
        out = {}
        self.raw_model.eval()
        try:
            for i, split in enumerate(("train", "val")):
                gen = torch.Generator().manual_seed(t.seed + EVAL_SEED_OFFSET + i)
                batch = t.micro_batch
                losses = []
                for _ in range(t.eval_iters):
                    x, y = self.workload.sample_batch(split, batch, gen, None)
                    losses.append(self._eval_batch(x, y))
                out[split] = sum(losses) / len(losses)
        finally:
            self.raw_model.train()
        return out

    def _eval_batch(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Loss of one eval batch; on OOM, the same rows in halves (eval never kills the run)."""
        while True:
            failed = False
            try:
                with self.autocast:
                    _, loss = self.raw_model(self._to_device(x), self._to_device(y))
                return loss.item()
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not is_oom(e) or x.size(0) == 1:
                    raise
                failed = True
            if failed:
                if self.device_type == "cuda":
                    torch.cuda.empty_cache()
                half = x.size(0) // 2
                a = self._eval_batch(x[:half], y[:half])
                b = self._eval_batch(x[half:], y[half:])
                return (a * half + b * (x.size(0) - half)) / x.size(0)

    def evaluate(self) -> dict[str, float]:
        losses = self.estimate_loss()
        self.last_eval_iter = self.iter
        fields = {"iter": self.iter, "train_loss": losses["train"], "val_loss": losses["val"]}
        if self.cfg.engine == "finetune":
            fields["val_ppl"] = math.exp(min(losses["val"], 50.0))
        self.events.emit("eval", **fields)
        self.control.update_status(val_loss=losses["val"])
        self.log(f"eval iter {self.iter}: train {losses['train']:.4f}, val {losses['val']:.4f}")
        return losses

    @torch.no_grad()
    def sample(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
               request_id: str | None = None) -> dict[str, Any]:
        """Generate with the in-memory weights, in eval mode; the training RNG is never touched."""
        self._sample_count += 1
        gen = torch.Generator(self.device).manual_seed(self.cfg.train.seed + 104729 * self._sample_count + self.iter)
        self.raw_model.eval()
        # decoding one token at a time is a chain of tiny ops: on a CPU, extra OpenMP threads only
        # spin and wait (20x slower on a busy 2-core box), so decode on one thread
        threads = torch.get_num_threads()
        if self.device_type == "cpu":
            torch.set_num_threads(1)
        try:
            with self.autocast:
                text = self.workload.generate(prompt, max_new_tokens, temperature, top_k, gen)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e):
                raise
            text = None
        finally:
            torch.set_num_threads(threads)
            self.raw_model.train()
        if text is None:
            if self.device_type == "cuda":
                torch.cuda.empty_cache()
            raise UserError("sampling ran out of GPU memory; try fewer max_new_tokens")
        return self.events.emit("sample", iter=self.iter, prompt=prompt, text=text, request_id=request_id)

    # ------------------------------------------------------------------ commands

    def _commands(self) -> list[Command]:
        """Commands from the control channel, the same on every rank (rank 0 reads the socket)."""
        local = self.control.poll() if self.dist.is_main else []
        if self._signal_stop and self.dist.is_main:
            local.append(Command("stop", {"reason": self._signal_stop}))
            self._signal_stop = None
        if not self.dist.enabled:
            return local
        wire = self.dist.broadcast([c.to_wire() for c in local] if self.dist.is_main else None)
        if self.dist.is_main:
            return local
        return [Command(w.pop("cmd"), w) for w in wire]

    def request_stop(self, reason: str) -> None:
        """From a signal handler: stop after the current step (checkpoint first)."""
        self._signal_stop = reason

    def handle_commands(self) -> bool:
        """Apply pending commands; waits here while paused. Returns True when the run must stop."""
        stop = False
        while True:
            for c in self._commands():
                try:
                    stop |= self._apply(c)
                except UserError as e:
                    c.fail(str(e))
                except Exception as e:  # a command must never kill the run
                    c.fail(f"{e.__class__.__name__}: {e}")
                    self.events.emit("error", message=f"command {c.cmd} failed: {e}")
            if stop or self.state != "paused":
                return stop
            self._heartbeat()
            time.sleep(0.1)

    def _heartbeat(self) -> None:
        self.control.update_status(heartbeat=time.time())

    def _apply(self, c: Command) -> bool:
        if c.cmd == "pause":
            if self.state == "running":
                self._set_state("paused", c.args.get("reason") or "paused by user")
                self.log(f"paused at iter {self.iter}")
            c.reply(state=self.state, iter=self.iter)
        elif c.cmd == "resume":
            if self.state == "paused":
                self.bad_steps = 0  # the user has acted (e.g. lowered the learning rate): count afresh
                self._set_state("running", "resumed by user")
                self.log(f"resumed at iter {self.iter}")
            c.reply(state=self.state, iter=self.iter)
        elif c.cmd == "stop":
            c.reply(state="stopping", iter=self.iter)
            self.stop_reason = c.args.get("reason") or "stopped by user"
            return True
        elif c.cmd == "checkpoint":
            event = self.save_checkpoint()
            if event is not None:
                c.reply(iter=self.iter, path=event["path"])
        elif c.cmd == "sample":
            if self.dist.is_main:
                event = self.sample(str(c.args.get("prompt", "")), int(c.args.get("max_new_tokens", 200)),
                                    float(c.args.get("temperature", 0.8)), int(c.args.get("top_k", 200)),
                                    c.args.get("request_id"))
                c.reply(iter=event["iter"], text=event["text"], request_id=event["request_id"])
        elif c.cmd == "set":
            key, value = c.args.get("key"), c.args.get("value")
            if key not in cfgmod.LIVE_KEYS:
                raise UserError(f"{key} cannot change during a run (live keys: {', '.join(cfgmod.LIVE_KEYS)})")
            old = self.cfg.get(key)
            self.cfg = cfgmod.with_overrides(self.cfg, {key: value}, origin=f"set {key}")
            new = self.cfg.get(key)
            self._save_config()
            if self.dist.is_main:
                self.events.emit("set", key=key, old=old, new=new)
            self.control.update_status(max_iters=self.cfg.train.max_iters)
            self.log(f"set {key}: {old} -> {new}")
            c.reply(key=key, old=old, new=new)
        else:
            c.fail(f"unknown command {c.cmd}")
        return False

    # ------------------------------------------------------------------ the loop

    def fit(self, resumed_from: int | None = None) -> str:
        """Train until max_iters or a stop; returns the final state ("done" or "stopped")."""
        t = self.cfg.train
        self.stop_reason = None
        if self.dist.is_main:
            self.events.emit("run", name=self.run.name if self.run else "bench", preset=self.cfg.name,
                             engine=self.cfg.engine, config=cfgmod.to_raw(self.cfg), device=self.device,
                             world_size=self.dist.world_size, resumed_from=resumed_from)
        self.control.update_status(iter=self.iter, max_iters=t.max_iters, name=self.cfg.name)
        self._set_state("running", f"resumed from iter {resumed_from}" if resumed_from is not None else "")
        if resumed_from is None and t.eval_interval and self.dist.is_main:
            self.evaluate()  # the loss before any training: a baseline for the plot
        while True:
            if self.handle_commands():
                break
            t = self.cfg.train  # `set` may have replaced the config
            if self.iter >= t.max_iters:
                break
            step = self.iter
            t0 = time.perf_counter()
            loss, norm, applied = self.train_step(step)
            dt = time.perf_counter() - t0
            self.iter += 1
            self._interval_ms.append(dt * 1000)
            if not applied:
                self._anomaly(loss, norm)
            else:
                self.bad_steps = 0
            if self.iter % t.log_interval == 0 or self.iter == t.max_iters:
                self._log_step(loss, lr_at(step, t))
            self.control.update_status(iter=self.iter, loss=loss, heartbeat=time.time())
            if not self.dist.is_main:
                continue
            if t.eval_interval and self.iter % t.eval_interval == 0:
                losses = self.evaluate()
                if losses["val"] < self.best_val:
                    self.best_val = losses["val"]
                    if applied:
                        self.save_checkpoint(best=True)
            if t.checkpoint_interval and self.iter % t.checkpoint_interval == 0 and self.bad_steps == 0:
                self.save_checkpoint()
            if t.sample_interval and self.iter % t.sample_interval == 0:
                self.sample("", 200, 0.8, 200)
        # finishing: a last eval and checkpoint so nothing since the last one is lost
        finished = self.iter >= self.cfg.train.max_iters and self.stop_reason is None
        if self.dist.is_main:
            if self.state != "paused":
                self._set_state("stopping", "max_iters reached" if finished else (self.stop_reason or ""))
            if finished and self.last_eval_iter != self.iter and self.cfg.train.eval_interval:
                losses = self.evaluate()
                if losses["val"] < self.best_val and self.bad_steps == 0:
                    self.best_val = losses["val"]
                    self.save_checkpoint(best=True)
            if self.bad_steps == 0:
                self.save_checkpoint()
        final = "done" if finished else "stopped"
        self._set_state(final, "max_iters reached" if finished else (self.stop_reason or ""))
        return final

    def _anomaly(self, loss: float, norm: float) -> None:
        self.bad_steps += 1
        limit = self.cfg.train.max_bad_steps
        kind = "nonfinite_loss" if not math.isfinite(loss) else "nonfinite_grad"
        action = "paused" if self.bad_steps >= limit else "skipped_step"
        if self.dist.is_main:
            self.events.emit("anomaly", iter=self.iter, kind=kind, action=action, loss=loss, grad_norm=norm)
        self.log(f"iter {self.iter}: {kind.replace('_', ' ')}; step skipped ({self.bad_steps} in a row)")
        if action == "paused":
            self._set_state("paused", f"{self.bad_steps} non-finite steps in a row: lower train.learning_rate "
                                      f"(gpt2-cockpit set RUN train.learning_rate=...) and resume")

    def _log_step(self, loss: float, lr: float) -> None:
        ms = sum(self._interval_ms) / max(1, len(self._interval_ms))
        self._interval_ms.clear()
        tps = self.tokens_per_step / (ms / 1000) if ms > 0 else 0.0
        mfu = None
        if self.peak and self.flops_per_token:
            mfu = self.flops_per_token * tps / (self.peak * 1e12 * self.dist.world_size)
        t = self.cfg.train
        if self.dist.is_main:
            self.events.emit("step", iter=self.iter, loss=loss, lr=lr, tokens=self.iter * self.tokens_per_step,
                             tokens_per_sec=round(tps, 1), ms=round(ms, 2), mfu=mfu,
                             micro_batch=t.micro_batch, grad_accum=t.grad_accum)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups for any model: decay 2-D weights, not biases or norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
