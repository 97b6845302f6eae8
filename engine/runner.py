"""A run's own process: `python -m gpt2_cockpit.engine.runner RUN_DIR [--resume]`.

Started by `gpt2-cockpit train` (in the foreground with --headless, or detached in its own
session), or by torchrun for several GPUs (rank 0 speaks for the run: events, control socket,
checkpoints, pid, heartbeat, GPU readings).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from . import config as cfgmod
from .control import ControlServer, NullControl
from .errors import UserError
from .events import EventWriter, NullEventWriter
from .runs import HEARTBEAT_SECONDS, RunDir

GPU_SAMPLE_SECONDS = 5.0


def build_workload(cfg: cfgmod.Config, progress=None):
    if cfg.engine == "finetune":
        from .finetune import FinetuneWorkload

        return FinetuneWorkload(cfg, progress=progress)
    from .pretrain import PretrainWorkload

    return PretrainWorkload(cfg, progress=progress)


def _background(run: RunDir, events, stop: threading.Event) -> None:
    """Heartbeat file and periodic `gpu` events, in a daemon thread of rank 0."""
    try:
        from .gpustats import GpuSampler

        sampler = GpuSampler.create()
    except Exception:
        sampler = None
    last_gpu = 0.0
    while not stop.is_set():
        run.heartbeat_path.touch()
        now = time.time()
        if sampler is not None and now - last_gpu >= GPU_SAMPLE_SECONDS:
            last_gpu = now
            try:
                for reading in sampler.sample():
                    events.emit("gpu", **reading)
            except Exception:
                pass  # a GPU reading must never disturb training
        stop.wait(min(HEARTBEAT_SECONDS, GPU_SAMPLE_SECONDS))


def progress_printer(event: dict) -> None:
    """The headless progress line: one per log interval, plus evals and notable events."""
    t = event["type"]
    if t == "step":
        mfu = f"{event['mfu'] * 100:.1f}%" if event.get("mfu") is not None else "n/a"
        loss = event["loss"]
        loss_s = f"{loss:.4f}" if loss is not None else "nan"
        print(f"iter {event['iter']:>6} | loss {loss_s} | lr {event['lr']:.2e} | {event['ms']:.1f} ms"
              f" | {event['tokens_per_sec']:,.0f} tok/s | mfu {mfu} | {event['micro_batch']}x{event['grad_accum']}",
              flush=True)
    elif t == "checkpoint":
        print(f"checkpoint iter {event['iter']}{' (best)' if event.get('best') else ''}: {event['path']}", flush=True)
    elif t == "sample":
        print(f"--- sample at iter {event['iter']} ---\n{event['text']}\n---", flush=True)
    elif t == "state":
        print(f"[{event['state']}] {event.get('reason') or ''}".rstrip(), flush=True)


def run_process(path: Path, resume: bool = False, headless: bool = False) -> int:
    """Train the run in `path` in this process; returns the exit code."""
    run = RunDir(Path(path))
    main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank; rank 0 speaks for the run
    dist = None
    events = EventWriter(run.events_path) if main else NullEventWriter()
    if headless and main:
        events.listeners.append(progress_printer)
    control = NullControl()
    stop_bg = threading.Event()
    trainer = None
    signals = {"count": 0}

    def on_signal(signum, frame):
        signals["count"] += 1
        name = signal.Signals(signum).name
        if trainer is None or signals["count"] > 1:
            # a second signal (or one before training started): leave now; the last checkpoint stands
            events.emit("state", state="stopped", reason=f"{name} again: exited without a final checkpoint")
            os._exit(128 + signum)
        trainer.request_stop(f"{name}: checkpointed and stopped")
        print(f"{name}: finishing this step, then checkpoint and stop (again to exit at once)", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    # a detached run ignores hang-ups; a headless one whose terminal closed checkpoints and stops
    signal.signal(signal.SIGHUP, on_signal if headless else signal.SIG_IGN)
    try:
        if main:
            run.pid_path.write_text(f"{os.getpid()}\n")
            run.heartbeat_path.touch()
            control = ControlServer(run.socket_path)
            threading.Thread(target=_background, args=(run, events, stop_bg), daemon=True).start()
            events.emit("state", state="preparing", reason="resuming" if resume else "loading data and model")
        # torch loads here (seconds): after the pid and the socket are out, so a launcher and a
        # cockpit see the run at once
        from .train import Dist, Trainer, resolve_device

        dist = Dist.from_env()
        cfg = run.config()
        if dist.enabled:
            import torch.distributed as tdist

            backend = "nccl" if cfg.train.device != "cpu" and _cuda() else "gloo"
            tdist.init_process_group(backend=backend)
        device = resolve_device(cfg, dist)
        if device.startswith("cuda"):
            import torch

            torch.cuda.set_device(device)
        import torch

        torch.manual_seed(cfg.train.seed + dist.rank)  # dropout masks differ per rank
        workload = build_workload(cfg, progress=lambda msg: print(msg, flush=True))
        if main and cfg != run.config():
            # what the engine resolved (finetune: train.epochs -> max_iters), so runs, plan and resume agree
            cfgmod.save(cfg, run.config_path)
        trainer = Trainer(cfg, workload, device, run=run, events=events, control=control, dist=dist)
        resumed_from = None
        if resume:
            from . import checkpoint as ckpt

            path_, state = ckpt.load_latest(run.checkpoints)
            trainer.load_state_dict(state)
            resumed_from = trainer.iter
            print(f"resuming from {path_.name} (iter {trainer.iter})", flush=True)
        final = trainer.fit(resumed_from=resumed_from)
        return 0 if final in ("done", "stopped") else 1
    except UserError as e:
        print(f"gpt2-cockpit: {e}", file=sys.stderr, flush=True)
        events.emit("error", message=str(e))
        events.emit("state", state="failed", reason=str(e))
        return 2
    except Exception as e:
        traceback.print_exc()
        events.emit("error", message=f"{e.__class__.__name__}: {e}")
        events.emit("state", state="failed", reason=f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return 1
    finally:
        stop_bg.set()
        control.close()
        events.close()
        if dist is not None and dist.enabled:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sample_from_checkpoint(run: RunDir, prompt: str, max_new_tokens: int, temperature: float, top_k: int) -> str:
    """Generate from a run's newest checkpoint (the run is not live)."""
    from . import checkpoint as ckpt
    from .train import Dist, Trainer, resolve_device

    cfg = run.config()
    _, state = ckpt.load_latest(run.checkpoints)
    cfg.train.compile = False
    device = resolve_device(cfg, Dist())
    trainer = Trainer(cfg, build_workload(cfg), device)
    trainer.raw_model.load_state_dict(state["model"])
    trainer.iter = int(state["iter"])
    return trainer.sample(prompt, max_new_tokens, temperature, top_k)["text"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpt2-cockpit-run", description="a run's own process (started by gpt2-cockpit)")
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--headless", action="store_true")
    args = p.parse_args(argv)
    return run_process(Path(args.run_dir), resume=args.resume, headless=args.headless)


if __name__ == "__main__":
    sys.exit(main())
