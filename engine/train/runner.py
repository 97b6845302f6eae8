"""A run's own process: `python -m gpt2_cockpit.engine.train.runner [RUN_DIR] [--resume]`.

Started by `gpt2-cockpit train` (in the foreground with --headless, or detached in its own
session), or by torchrun for several GPUs or machines. It sets the process up (signals, process
group, device, workload, checkpoint to resume from) and hands over to the loop in engine/train/loop.py.
Rank 0 speaks for the run through its RunOwner (events, control socket, checkpoints, pid,
heartbeat, GPU readings) and alone reads the run directory; the other ranks get a NullRunOwner
and receive the config and checkpoint from rank 0 (on a machine that joins a run, there is no
RUN_DIR). A rank that dies or hangs fails the run with one sentence naming it (LostRank). As the
process's entry point, this module prints its progress to stdout (stdout.log for a detached run).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .. import config as cfgmod
from ..errors import UserError
from ..fsutil import survive_lost_output
from ..runs.rundir import RunDir
from .owner import NullRunOwner, RunOwner


def build_workload(cfg: cfgmod.Config, progress=None, on_prepare=None, on_disk_full=None, prepare_rest: bool = True):
    """The engine's workload; `progress` takes one-line messages, `on_disk_full(path)` a token
    cache that filled the disk while preparing in the background, `on_prepare` the structured
    progress of tokenizing a pretrain corpus (engine.data.prepare.PrepareProgress)."""
    if cfg.engine == "finetune":
        from .finetune import FinetuneWorkload

        return FinetuneWorkload(cfg, progress=progress)
    from .pretrain import PretrainWorkload

    return PretrainWorkload(cfg, progress=progress, on_prepare=on_prepare, on_disk_full=on_disk_full,
                            prepare_rest=prepare_rest)


def progress_printer(event: dict) -> None:
    """The headless progress line: one per log interval, plus evals and notable events."""
    t = event["type"]
    if t == "prepare":
        _prepare_line.show(event)
        return
    _prepare_line.end()  # a progress line updated in place gives way to the next line
    if t == "step":
        mfu = f"{event['mfu'] * 100:.1f}%" if event.get("mfu") is not None else "n/a"
        loss = event["loss"]
        loss_s = f"{loss:.4f}" if loss is not None else "nan"
        print(f"iter {event['iter']:>6} | loss {loss_s} | lr {event['lr']:.2e} | {event['ms']:.1f} ms"
              f" | {event['tokens_per_sec']:,.0f} tok/s | mfu {mfu} | {event['micro_batch']}x{event['grad_accum']}",
              flush=True)
    elif t == "eval":
        print(f"eval iter {event['iter']}: train {event['train_loss']:.4f}, val {event['val_loss']:.4f}", flush=True)
    elif t == "hellaswag":
        print(f"hellaswag iter {event['iter']}: acc_norm {event['acc_norm']:.4f}, acc {event['acc']:.4f} "
              f"({event['n']:,} items, {event['seconds']:.1f} s; {event.get('reference')} "
              f"{event.get('reference_acc_norm')})", flush=True)
    elif t == "notice":
        print(event["message"], flush=True)
    elif t == "checkpoint":
        print(f"checkpoint iter {event['iter']}{' (best)' if event.get('best') else ''}: {event['path']}", flush=True)
    elif t == "sample":
        print(f"--- sample at iter {event['iter']} ---\n{event['text']}\n---", flush=True)
    elif t == "state":  # a failed state's reason is the `error` line just before it
        reason = "" if event["state"] == "failed" else event.get("reason") or ""
        print(f"[{event['state']}] {reason}".rstrip(), flush=True)
    elif t == "oom":
        print(f"out of memory at iter {event['iter']}: micro_batch {event['micro_batch_before']} -> "
              f"{event['micro_batch_after']}, grad_accum -> {event['grad_accum_after']} (tokens per step "
              f"unchanged); redoing the step", flush=True)
    elif t == "anomaly":
        print(f"iter {event['iter']}: {event['kind'].replace('_', ' ')} -> {event['action'].replace('_', ' ')}",
              flush=True)
    elif t == "set":
        print(f"set {event['key']}: {event['old']} -> {event['new']}", flush=True)
    elif t == "error":
        print(f"error: {event['message']}", flush=True)


PREPARE_LINE_SECONDS = 10.0


class _PrepareLine:
    """Preparation progress in --headless: in a terminal, one line updated in place until another
    line is printed (training's), then again after PREPARE_LINE_SECONDS; in a file (stdout.log),
    a line every PREPARE_LINE_SECONDS and at each phase's end."""

    def __init__(self) -> None:
        self.time, self.phase, self.open = 0.0, None, False

    def show(self, event: dict) -> None:
        from ..data.prepare import PrepareProgress, format_progress

        p = PrepareProgress(**{k: event.get(k) for k in ("phase", "done", "total", "unit", "rate", "eta")})
        ended = p.total is not None and p.done >= p.total
        if sys.stdout.isatty():
            if self.open or ended or time.monotonic() - self.time >= PREPARE_LINE_SECONDS:
                print(f"\r{format_progress(p)}\x1b[K", end="\n" if ended else "", flush=True)
                self.open = not ended
        elif ended or p.phase != self.phase or time.monotonic() - self.time >= PREPARE_LINE_SECONDS:
            self.time, self.phase = time.monotonic(), p.phase
            print(format_progress(p), flush=True)

    def end(self) -> None:
        if self.open:
            print(flush=True)
            self.open = False
            self.time = time.monotonic()


_prepare_line = _PrepareLine()


def run_process(path: Path | None, resume: bool = False, headless: bool = False) -> int:
    """Train the run in `path` in this process; returns the exit code.

    Rank 0 alone uses the run directory. `path` is None on the ranks of a machine that joins a
    run held by another (`train --node-rank 1 ...`): they get everything from rank 0."""
    survive_lost_output()  # a closed pipe, terminal or full disk under our output never fails the run
    from .. import faults

    faults.reset()  # the GPT2_COCKPIT_FAKE_* of this run, read once (tests, the GPU suite)
    main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank; rank 0 speaks for the run
    if main and path is None:
        print("gpt2-cockpit: rank 0 needs the run directory (it runs on node 0, which holds it)", file=sys.stderr)
        return 2
    return RunProcess(RunDir(Path(path)) if main else None, resume, headless).run()


class StopSignals:
    """SIGINT and SIGTERM, and SIGHUP for a headless run (its terminal closed): the first, once
    training runs, lets the step finish, then the run checkpoints and stops; a second one, or one
    before training started, exits at once (the last checkpoint stands). A detached run ignores
    SIGHUP."""

    def __init__(self, owner: RunOwner | NullRunOwner):
        self.owner = owner
        self.count = 0
        self.training = False  # set as the loop starts: before, there is nothing to finish

    def install(self, headless: bool) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.on_signal)
        # a detached run ignores hang-ups; a headless one whose terminal closed checkpoints and stops
        signal.signal(signal.SIGHUP, self.on_signal if headless else signal.SIG_IGN)

    def on_signal(self, signum, frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if not self.training or self.count > 1:
            # a second signal (or one before training started): leave now; the last checkpoint stands
            self.owner.emit("state", state="stopped", reason=f"{name} again: exited without a final checkpoint")
            os._exit(128 + signum)
        self.owner.request_stop(f"{name}: checkpointed and stopped")
        print(f"{name}: finishing this step, then checkpoint and stop (again to exit at once)", flush=True)


class RunProcess:
    """One run process from its start to its exit code, phase by phase: open the owner (and the
    CPU share), join the torchrun group, build the Stepper, train, leave the group together. The
    resources the phases open (workload, owner, CPU share, process group) are closed in close(),
    whatever happened; the exit code says how it ended (0 done or stopped, 1 failed, 2 refused)."""

    def __init__(self, run_dir: RunDir | None, resume: bool, headless: bool):
        self.run_dir = run_dir  # None on the ranks other than 0
        self.resume = resume
        self.headless = headless
        self.owner = RunOwner(run_dir) if run_dir is not None else NullRunOwner()
        if headless:
            self.owner.listeners.append(progress_printer)
        self.signals = StopSignals(self.owner)
        self.cpu_share = None
        self.dist = None
        self.lost: LostRank | None = None
        self.workload = None

    def run(self) -> int:
        self.signals.install(self.headless)
        try:
            self.open()
            cfg, state = self.join_group()
            stepper = self.build(cfg)
            return self.train(stepper, state)
        except UserError as e:
            return self.refused(e)
        except Exception as e:
            return self.failed(e)
        finally:
            self.close()

    # ------------------------------------------------------------------ the phases

    def open(self) -> None:
        """pid, heartbeat and control socket before torch loads (seconds): a launcher and a
        cockpit see the run at once; then the CPU share, measuring how busy the CPU is."""
        self.owner.open()
        self.owner.emit("state", state="preparing", reason="resuming" if self.resume else "loading data and model")
        from .cpushare import CpuShare, pinned

        # how busy the CPU is, measured from now on: the first look comes before the first eval
        self.cpu_share = CpuShare(say=self.say_cpu, pinned=pinned())

    def say_cpu(self, message: str) -> None:
        """What the CPU share did: in the event log and stdout.log."""
        self.owner.emit("notice", message=message)
        if not (self.headless and self.run_dir is not None):  # (there the progress printer prints notices)
            print(message, flush=True)

    def join_group(self) -> tuple[cfgmod.Config, dict | None]:
        """torchrun's process group (a group of one without torchrun), watched for a rank that
        dies; the config and the checkpoint to resume from, as rank 0 read them."""
        from .dist import Dist

        self.dist = Dist.from_env()
        self.dist.init()
        self.lost = LostRank(self.run_dir, self.dist)
        self.owner.watch(self.lost.check)  # rank 0: a rank on this machine that dies fails the run at once
        return shared_start(self.run_dir, self.dist, self.resume)

    def build(self, cfg: cfgmod.Config):
        """The device, the seed, the workload and the Stepper that trains it."""
        import torch

        from .step import Stepper, resolve_device

        device = resolve_device(cfg, self.dist)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        torch.manual_seed(cfg.train.seed + self.dist.rank)  # dropout masks differ per rank
        self.workload = build_workload(cfg, progress=lambda msg: print(msg, flush=True),
                                       on_prepare=lambda p: self.owner.emit("prepare", **p.fields()),
                                       # rank 0's owner pauses the run when the disk fills; on another
                                       # machine the preparation's error fails the run
                                       on_disk_full=self.owner.disk_full if self.run_dir is not None else None)
        if self.run_dir is not None and cfg != self.run_dir.config():  # what the engine resolved (finetune: epochs -> max_iters)
            self.owner.write_config(cfg)
        if device.startswith("cuda"):  # a GPU run takes no share of the CPU
            self.cpu_share.close()
            self.cpu_share = None
        stepper = self.lost.stepper = Stepper(cfg, self.workload, device, self.dist, self.cpu_share)
        if stepper.memory_note:  # train.memory_limit_gb: what it did (or that a CPU run ignores it)
            print(stepper.memory_note, flush=True)
        return stepper

    def train(self, stepper, state: dict | None) -> int:
        """The loop, then every rank leaves the group together."""
        from .loop import train

        self.signals.training = True
        final = train(stepper, self.owner, resume=state)
        self.owner.watch(None)  # the others may leave as soon as the barrier lets them
        if not self.dist.barrier():
            print("gpt2-cockpit: another rank left the group before the end (the run itself had ended)", flush=True)
        return 0 if final in ("done", "stopped") else 1

    # ------------------------------------------------------------------ how it ended

    def refused(self, error: UserError) -> int:
        """A user's mistake (a config, a missing file): one sentence, exit code 2."""
        self.fail_said(str(error))
        return 2

    def failed(self, error: Exception) -> int:
        """A lost rank: the sentence that names it; anything else: the traceback. Exit code 1."""
        message = self.lost.message(error) if self.lost is not None else None
        if message is not None:  # a rank died or hung: say which, and how to go on
            self.fail_said(message)
            return 1
        traceback.print_exc()
        first = str(error).splitlines()[0] if str(error) else ""
        self.owner.fail(f"{error.__class__.__name__}: {error}", reason=f"{error.__class__.__name__}: {first}")
        return 1

    def fail_said(self, message: str) -> None:
        """The run failed with `message`, said once on stderr (the headless printer need not echo it)."""
        print(f"gpt2-cockpit: {message}", file=sys.stderr, flush=True)
        if progress_printer in self.owner.listeners:
            self.owner.listeners.remove(progress_printer)
        self.owner.fail(message)

    def close(self) -> None:
        """Whatever the phases opened, whatever happened."""
        if self.workload is not None:
            self.workload.close()  # e.g. stop a data preparation still going on in the background
        self.owner.close()
        if self.cpu_share is not None:
            self.cpu_share.close()
        if self.dist is not None:
            self.dist.close()


def shared_start(run: RunDir | None, dist, resume: bool) -> tuple[cfgmod.Config, dict | None]:
    """The run's config and the checkpoint to resume from (or None): read by rank 0 and sent to
    the other ranks, which may run on a machine without the run directory."""
    raw = state = None
    if run is not None:
        raw = cfgmod.to_raw(run.config())
        if resume:
            from . import checkpoint as ckpt

            path, state = ckpt.load_latest(run.checkpoints, warn=lambda m: print(m, flush=True))
            print(f"resuming from {path.name} (iter {state['iter']})", flush=True)
    raw, state = dist.broadcast((raw, state))
    return cfgmod.from_dict(raw, origin="the run's config (from rank 0)"), state


class LostRank:
    """Says, in one sentence, that the group lost a rank, where the run stood and how to go on."""

    def __init__(self, run: RunDir | None, dist):
        self.run = run
        self.dist = dist
        self.stepper = None  # set once training can start: it knows the iteration

    def check(self) -> str | None:
        """For the owner's background thread: a sentence when a rank on this machine is gone."""
        return self.message(None)

    def message(self, error: BaseException | None) -> str | None:
        """The sentence for `error` (or for a liveness check), or None when no rank was lost."""
        what = self.dist.describe_loss(error)
        if what is None:
            return None
        at = self.stepper.iters_done if self.stepper is not None else 0
        if self.run is None:  # a rank other than 0: rank 0 tells the user how to go on
            return f"{what} at iter {at}; the run stopped"
        done = newest_checkpoint_iter(self.run)
        then = (f"'gpt2-cockpit resume {self.run.name}' continues from the checkpoint at iter {done}"
                if done is not None else "it had no checkpoint yet: start it again with 'gpt2-cockpit train'")
        return f"{what} at iter {at}; the run stopped; {then}"


def newest_checkpoint_iter(run: RunDir) -> int | None:
    """The iteration of the newest complete checkpoint in the run directory, if any."""
    from . import checkpoint as ckpt

    newest = ckpt.listing(run.checkpoints)  # ckpt-ITER.pt, newest first
    return int(newest[0].stem.split("-")[1]) if newest else None


def sample_from_checkpoint(run: RunDir, prompt: str, max_new_tokens: int, temperature: float, top_k: int) -> str:
    """Generate from a run's newest checkpoint (the run is not live)."""
    from . import checkpoint as ckpt
    from .dist import Dist
    from .loop import SAMPLE_SEED_STRIDE
    from .step import Stepper, resolve_device

    cfg = run.config()
    _, state = ckpt.load_latest(run.checkpoints, warn=lambda m: print(m, file=sys.stderr))
    cfg.train.compile = False
    cfg.train.optimizer = "adamw"  # never stepped here: no need for bitsandbytes or Muon to sample
    workload = build_workload(cfg, prepare_rest=False)  # the weights need the vocabulary, not every shard
    try:
        stepper = Stepper(cfg, workload, resolve_device(cfg, Dist()), Dist())
        stepper.load_weights(state)
        return stepper.generate(prompt, max_new_tokens, temperature, top_k,
                                seed=cfg.train.seed + SAMPLE_SEED_STRIDE + int(state["iter"]))
    finally:
        workload.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpt2-cockpit-run", description="a run's own process (started by gpt2-cockpit)")
    p.add_argument("run_dir", nargs="?", help="the run directory (none on a machine that joins a run held by another)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--headless", action="store_true")
    args = p.parse_args(argv)
    return run_process(Path(args.run_dir) if args.run_dir else None, resume=args.resume, headless=args.headless)


def exit_process(code: int) -> None:
    """Leave with `code`. A rank of a torchrun group leaves through os._exit once everything is
    written and closed: the interpreter's normal shutdown runs C++ static destructors of the
    process-group machinery, and one of its threads still joinable there aborts the process
    ("terminate called without an active exception", exit -6) now and then, so torchrun would
    report a finished run as failed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
