"""The training loop: one function, `train`, read top to bottom.

    prepare (started by the caller) -> resume -> per step: commands (and a slice of any sample
    in progress), wait for the step's data, lr, step, log, eval, HellaSwag, checkpoint, sample -> finish

The maths lives in the Stepper (engine/train/step.py); every file the run writes goes through the
RunOwner (engine/train/owner.py), a null one on ranks other than 0, so nothing here asks which rank
it is on. Commands are broadcast from rank 0, so every rank pauses, changes a setting or stops
at the same step.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .. import config as cfgmod
from .. import sampling
from ..errors import UserError
from . import hellaswag
from .owner import NullRunOwner, RunOwner
from .step import Generation, Stepper, StepResult, lr_at

SAMPLE_SEED_STRIDE = 104729  # each sample of a run gets its own seed
# A sample in progress gets this share of each optimizer step's time between steps (at least
# MIN_SAMPLE_SLICE seconds), so sampling never holds training, pause, stop or SIGTERM for long.
SAMPLE_SLICE_FRACTION = 0.5
MIN_SAMPLE_SLICE = 0.05
PAUSED_SAMPLE_SLICE = 0.1  # while paused: commands are polled between slices this long
DATA_POLL = 0.5  # seconds between looks at a preparation that training caught up with


@dataclass
class PendingSample:
    generation: Generation
    iter: int  # where it started (the weights go on training while it is generated)
    request_id: str | None


@dataclass
class Progress:
    """What the loop keeps besides the weights (the counters also go into every checkpoint)."""

    iter: int = 0  # optimizer steps completed
    best_val: float = math.inf
    bad_steps: int = 0  # non-finite steps in a row
    state: str = "preparing"
    stop_reason: str | None = None
    last_eval: int = -1
    last_hellaswag: int = -1
    last_checkpoint: int = -1
    samples: int = 0
    step_seconds: float = 0.0  # the last optimizer step's time
    data_complete: bool = False  # every shard is prepared: no more waiting for data
    sampling: deque[PendingSample] = field(default_factory=deque)


def train(stepper: Stepper, run: RunOwner | NullRunOwner, resume: dict[str, Any] | None = None) -> str:
    """Train until max_iters or a stop; returns the final state, "done" or "stopped"."""
    p = Progress()
    if resume is not None:
        stepper.load_state_dict(resume)
        p.iter, p.best_val = int(resume["iter"]), float(resume["best_val_loss"])
        p.bad_steps = int(resume.get("bad_steps", 0))
        p.last_eval = p.last_checkpoint = p.last_hellaswag = p.iter
    cfg = stepper.cfg
    run.emit("run", name=run.name, preset=cfg.name, engine=cfg.engine, config=cfgmod.to_raw(cfg),
             device=stepper.device, world_size=stepper.dist.world_size,
             resumed_from=p.iter if resume is not None else None,
             params_trainable=sum(w.numel() for w in stepper.params),  # LoRA: the adapters alone
             params_total=sum(w.numel() for w in stepper.raw_model.parameters()))
    set_state(run, p, "running", f"resumed from iter {p.iter}" if resume is not None else "")
    # HellaSwag every train.hellaswag_interval steps; None when that is 0, or when its items cannot
    # be had offline (then a `notice` says so once and the run trains without it)
    hellaswag_eval = hellaswag.RunEval.start(stepper, lambda message: run.emit("notice", message=message))
    wait_for_data(stepper, run, p)
    if resume is None and cfg.train.eval_interval and p.stop_reason is None:
        evaluate(stepper, run, p, track_best=False)  # the loss before any training: the plot's baseline
    if resume is None and hellaswag_eval is not None and p.stop_reason is None:
        score_hellaswag(hellaswag_eval, run, p)  # and HellaSwag's (chance is 0.25)

    step_ms: list[float] = []  # optimizer-step times since the last `step` event
    while True:
        handle_commands(stepper, run, p)  # waits here while paused
        t = stepper.cfg.train  # a `set` may have replaced the config
        if p.stop_reason is not None or p.iter >= t.max_iters:
            break
        if not p.data_complete:
            wait_for_data(stepper, run, p)
            if p.stop_reason is not None:
                break
        lr = lr_at(p.iter, t)
        t0 = time.perf_counter()
        result = stepper.step(p.iter, lr)
        p.step_seconds = time.perf_counter() - t0
        step_ms.append(p.step_seconds * 1000)
        p.iter += 1

        record_step(stepper, run, p, result, lr, step_ms)
        if due(p.iter, t.eval_interval):
            evaluate(stepper, run, p, track_best=True, checkpoint_best=p.bad_steps == 0)
        if hellaswag_eval is not None and due(p.iter, t.hellaswag_interval):
            score_hellaswag(hellaswag_eval, run, p)
        if due(p.iter, t.checkpoint_interval) and p.bad_steps == 0:
            checkpoint(stepper, run, p)
        if due(p.iter, t.sample_interval):
            start_sample(stepper, run, p, "", sampling.MAX_NEW_TOKENS, sampling.TEMPERATURE, sampling.TOP_K, None)

    # finish: a last eval and checkpoint, so nothing since the last ones is lost
    finished = p.stop_reason is None
    reason = "max_iters reached" if finished else p.stop_reason
    if finished:
        set_state(run, p, "stopping", reason)
        if p.last_eval != p.iter and stepper.cfg.train.eval_interval:
            evaluate(stepper, run, p, track_best=True, checkpoint_best=p.bad_steps == 0)
        if hellaswag_eval is not None and p.last_hellaswag != p.iter:
            score_hellaswag(hellaswag_eval, run, p)
    if p.bad_steps == 0:
        checkpoint(stepper, run, p)
    while p.sampling:  # samples in progress: finished at the end of the run, dropped at a stop
        if finished:
            advance_sample(run, p, math.inf)
        else:
            run.emit("error", message="the run stopped before this sample was finished",
                     request_id=p.sampling.popleft().request_id)
    final = "done" if finished else "stopped"
    stepper.workload.close()  # a preparation going on in the background stops with the run
    set_state(run, p, final, reason)
    return final


def record_step(stepper: Stepper, run: RunOwner | NullRunOwner, p: Progress, result: StepResult, lr: float,
                step_ms: list[float]) -> None:
    """What step p.iter did, as events: its OOM re-splits, its anomalies (a non-finite step skips
    its update; max_bad_steps of them in a row pause the run) and, every log_interval steps and at
    the last, the `step` line with the mean time of the steps since the one before (`step_ms`,
    emptied)."""
    t = stepper.cfg.train
    for r in result.resplits:  # out of memory: the same step was redone with a smaller micro-batch
        run.write_config(stepper.cfg)
        run.emit("oom", iter=p.iter, micro_batch_before=r.micro_batch_before,
                 micro_batch_after=r.micro_batch_after, grad_accum_after=r.grad_accum_after)
    if result.nonfinite:  # a NaN or inf loss or gradient: the update was skipped
        p.bad_steps += 1
        pause = p.bad_steps >= t.max_bad_steps
        run.emit("anomaly", iter=p.iter, kind="nonfinite_loss" if not math.isfinite(result.loss)
                 else "nonfinite_grad", action="paused" if pause else "skipped_step",
                 loss=result.loss, grad_norm=result.grad_norm)
        if pause:
            set_state(run, p, "paused", f"{p.bad_steps} non-finite steps in a row: lower train.learning_rate "
                                        f"(gpt2-cockpit set RUN train.learning_rate=...) and resume")
    else:
        p.bad_steps = 0
    for spike in result.spikes:  # far above the recent history: logged, skipped if skip_spikes says so
        run.emit("anomaly", iter=p.iter, kind=spike.kind, action="none" if result.applied else "skipped_step",
                 value=spike.value, zscore=round(spike.zscore, 2))

    if p.iter % t.log_interval == 0 or p.iter == t.max_iters:
        ms = sum(step_ms) / len(step_ms)
        step_ms.clear()
        tokens_per_sec = stepper.tokens_per_step / (ms / 1000) if ms > 0 else 0.0
        run.emit("step", iter=p.iter, loss=result.loss, lr=lr, tokens=p.iter * stepper.tokens_per_step,
                 tokens_per_sec=round(tokens_per_sec, 1), ms=round(ms, 2), mfu=stepper.mfu(tokens_per_sec),
                 micro_batch=t.micro_batch, grad_accum=t.grad_accum, grad_norm=result.grad_norm)


def due(iter: int, interval: int) -> bool:
    return bool(interval) and iter % interval == 0


def set_state(run: RunOwner | NullRunOwner, p: Progress, state: str, reason: str = "") -> None:
    p.state = state
    run.emit("state", state=state, reason=reason)


def wait_for_data(stepper: Stepper, run: RunOwner | NullRunOwner, p: Progress) -> None:
    """Until step p.iter's shards are prepared: a run may start training while its corpus is still
    being prepared (data.order "shards") and may catch up with the preparation. It waits in the
    `preparing` state with the reason, taking commands (stop) meanwhile. Rank 0's view decides,
    so every rank waits at the same step."""
    t = stepper.cfg.train
    rows = t.micro_batch * t.grad_accum * stepper.dist.world_size
    workload = stepper.workload
    while True:
        reason, complete = stepper.dist.broadcast((workload.missing(p.iter, rows), workload.data_complete))
        p.data_complete = complete
        if reason is None:
            break
        if p.state != "preparing":
            set_state(run, p, "preparing", reason)
        handle_commands(stepper, run, p)
        if p.stop_reason is not None:
            return
        if stepper.cpu_share is not None:
            stepper.cpu_share.idle()  # waiting for data takes no share of the cores either
        time.sleep(DATA_POLL)
    if p.state == "preparing":
        set_state(run, p, "running", "the data for the next step is prepared")


def evaluate(stepper: Stepper, run: RunOwner | NullRunOwner, p: Progress, track_best: bool,
             checkpoint_best: bool = False) -> None:
    """Train and val loss on fixed batches; a new best val loss writes a best checkpoint."""
    losses = stepper.evaluate()
    p.last_eval = p.iter
    fields = {"iter": p.iter, "train_loss": losses["train"], "val_loss": losses["val"]}
    if stepper.cfg.engine == "finetune":
        fields["val_ppl"] = math.exp(min(losses["val"], 50.0))
    run.emit("eval", **fields)
    if track_best and losses["val"] < p.best_val:
        p.best_val = losses["val"]
        if checkpoint_best:
            checkpoint(stepper, run, p, best=True)


def score_hellaswag(hellaswag_eval: hellaswag.RunEval, run: RunOwner | NullRunOwner, p: Progress) -> None:
    """HellaSwag acc and acc_norm of the weights as they are (each rank scores its share), with
    the GPT-2 size nearest the model for the cockpit's reference line."""
    r = hellaswag_eval.score()
    p.last_hellaswag = p.iter
    ref = hellaswag_eval.reference
    run.emit("hellaswag", iter=p.iter, acc=r.acc, acc_norm=r.acc_norm, n=r.n, seconds=round(r.seconds, 3),
             reference=ref.name, reference_acc_norm=ref.acc_norm)


def checkpoint(stepper: Stepper, run: RunOwner | NullRunOwner, p: Progress, best: bool = False,
               again: bool = False) -> None:
    """A checkpoint of this iteration, unless one was written already (`again`: write it anyway)."""
    if p.last_checkpoint == p.iter and not (best or again):
        return
    state = {**stepper.state_dict(), "best_val_loss": p.best_val, "bad_steps": p.bad_steps,
             "data_position": p.iter}  # step k's batch is drawn from (seed, k): the position is the iter
    run.save_checkpoint(p.iter, state, best, stepper.workload.on_checkpoint)
    p.last_checkpoint = p.iter


def start_sample(stepper: Stepper, run: RunOwner | NullRunOwner, p: Progress, prompt: str, max_new_tokens: int,
                 temperature: float, top_k: int, request_id: str | None) -> None:
    """Queue a sample from the weights in memory; it is generated a slice at a time between steps."""
    p.samples += 1
    seed = stepper.cfg.train.seed + SAMPLE_SEED_STRIDE * p.samples + p.iter
    generation = stepper.start_generation(prompt, max_new_tokens, temperature, top_k, seed)
    p.sampling.append(PendingSample(generation, p.iter, request_id))


def advance_sample(run: RunOwner | NullRunOwner, p: Progress, seconds: float) -> None:
    """Generate the oldest sample in progress for about `seconds`; its text (or why it failed)
    goes to the event log once it is complete."""
    pending = p.sampling[0]
    try:
        finished = pending.generation.advance(seconds)
    except UserError as e:
        p.sampling.popleft()
        run.emit("error", message=str(e), request_id=pending.request_id)
        return
    if finished:
        p.sampling.popleft()
        run.emit("sample", iter=pending.iter, prompt=pending.generation.prompt, text=pending.generation.text,
                 request_id=pending.request_id)


def handle_commands(stepper: Stepper, run: RunOwner | NullRunOwner, p: Progress) -> None:
    """Apply the commands that came in since the last step, the same on every rank, and give a
    sample in progress its slice; wait here (sampling, if asked to) while paused."""
    while True:
        for request in stepper.dist.broadcast(run.requests()):
            try:
                apply(request, stepper, run, p)
            except UserError as e:
                run.answer(request["id"], str(e))
            except Exception as e:  # a command must never kill the run
                run.emit("error", message=f"command {request.get('cmd')} failed: {e.__class__.__name__}: {e}")
                run.answer(request["id"], f"{e.__class__.__name__}: {e}")
            else:
                run.answer(request["id"])
        paused = p.state == "paused" and p.stop_reason is None
        if p.sampling and p.stop_reason is None:
            advance_sample(run, p, PAUSED_SAMPLE_SLICE if paused
                           else max(MIN_SAMPLE_SLICE, SAMPLE_SLICE_FRACTION * p.step_seconds))
        if not paused:
            return
        if stepper.cpu_share is not None:
            stepper.cpu_share.idle()  # a paused run takes no share of the cores (its next step takes it back)
        if not p.sampling:
            time.sleep(0.1)


def apply(request: dict[str, Any], stepper: Stepper, run: RunOwner | NullRunOwner, p: Progress) -> None:
    """One command; a UserError refuses it with that sentence."""
    cmd = request.get("cmd")
    if cmd == "pause":
        if p.state in ("running", "preparing"):  # (preparing: waiting for the step's data)
            set_state(run, p, "paused", request.get("reason") or "paused by user")
    elif cmd == "resume":
        if p.state == "paused":
            p.bad_steps = 0  # the user has acted (e.g. lowered the learning rate): count afresh
            set_state(run, p, "running", "resumed by user")
    elif cmd == "stop":
        p.stop_reason = request.get("reason") or "stopped by user"
        set_state(run, p, "stopping", p.stop_reason)
    elif cmd == "checkpoint":
        checkpoint(stepper, run, p, again=True)
    elif cmd == "sample":  # accepted once it starts: the text follows as a `sample` event
        prompt, n, temperature, top_k = (request.get("prompt") or "", request.get("max_new_tokens", sampling.MAX_NEW_TOKENS),
                                         request.get("temperature", sampling.TEMPERATURE),
                                         request.get("top_k", sampling.TOP_K))
        sampling.check(n, temperature, top_k, prompt)
        start_sample(stepper, run, p, prompt, n, temperature, top_k, request.get("request_id"))
    elif cmd == "cancel":
        rid = request.get("request_id")
        pending = next((s for s in p.sampling if s.request_id == rid and rid is not None), None)
        if pending is None:
            raise UserError(f"no sample {rid!r} is in progress")
        p.sampling.remove(pending)  # the text so far is logged, marked cancelled
        run.emit("sample", iter=pending.iter, prompt=pending.generation.prompt, text=pending.generation.text,
                 request_id=rid, cancelled=True)
    elif cmd == "set":
        key = request.get("key")
        if key not in cfgmod.LIVE_KEYS:
            raise UserError(f"{key} cannot change during a run (live keys: {', '.join(cfgmod.LIVE_KEYS)})")
        before = stepper.cfg
        changes = {key: request.get("value")}
        stepper.cfg = cfgmod.with_overrides(before, changes, origin=f"set {key}")
        if key == "train.learning_rate" and stepper.cfg.train.optimizer == "muon":
            # Muon's lr is the same curve at muon_lr / learning_rate times AdamW's (engine/train/optim.py):
            # a new learning rate moves muon_lr with it, so the two keep their ratio (and a resume too)
            scale = stepper.cfg.train.learning_rate / before.train.learning_rate
            changes["train.muon_lr"] = before.train.muon_lr * scale
            stepper.cfg = cfgmod.with_overrides(before, changes, origin=f"set {key}")
        run.write_config(stepper.cfg)
        for changed in changes:  # from the next step on
            run.emit("set", key=changed, old=before.get(changed), new=stepper.cfg.get(changed), iter=p.iter)
    else:
        raise UserError(f"unknown command {cmd!r}")
