"""Starting runs and talking to them: the part of the engine the CLI and the cockpit share.

Never imports torch and never prints: a run's own process (engine.runner) does the training;
this module creates its directory, launches it (in the foreground, or detached in its own
session, or through torchrun for several GPUs) and speaks to it over its control socket. What
a command did is read back from the run's event log (control.py says why).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from . import config as cfgmod
from . import control as ctl
from . import presets, sampling
from .errors import UserError
from .events import FINAL_STATES, EventReader
from .runs import RunDir, create, summarize


def create_run(preset: str | None, overrides: list[str], name: str | None) -> RunDir:
    """Resolve the preset and overrides, and make the run directory with its config.toml."""
    cfg = presets.load(preset or presets.default_name(), overrides)
    if not cfg.data.source.startswith(("builtin:", "hf:", "url:")):
        from .data import source_identity

        source_identity(cfg.data.source)  # a missing local corpus fails now, before a run exists
        # the run process works in its own directory: pin a relative path to where the user was
        cfg.data.source = str(Path(cfg.data.source).expanduser().resolve())
    if cfg.engine == "finetune" and Path(cfg.model.pretrained).expanduser().exists():
        cfg.model.pretrained = str(Path(cfg.model.pretrained).expanduser().resolve())
    return create(cfg, name)


def prepare_restart(run: RunDir, overrides: list[str]) -> None:
    """Before restarting a stopped/crashed run: apply --set overrides to its config.toml."""
    if overrides:
        run.write_config(cfgmod.with_overrides(run.config(), overrides))


def runner_argv(run: RunDir, resume: bool, gpus: int | None) -> list[str]:
    args = ["-m", "gpt2_cockpit.engine.runner", str(run.path)] + (["--resume"] if resume else [])
    if gpus and gpus > 1:
        if shutil.which("torchrun") is None and not _has_module("torch.distributed.run"):
            raise UserError("--gpus needs torchrun (it ships with PyTorch); install torch in this environment")
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"] + args
    return [sys.executable] + args


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _check_gpus(gpus: int | None) -> None:
    if gpus is not None and gpus < 1:
        raise UserError(f"--gpus {gpus}: needs at least 1")


def run_foreground(run: RunDir, resume: bool, gpus: int | None) -> int:
    """--headless: train in this terminal. One GPU trains in-process; several go through torchrun."""
    _check_gpus(gpus)
    if gpus and gpus > 1:
        proc = subprocess.Popen(runner_argv(run, resume, gpus), stdin=subprocess.DEVNULL)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)  # torchrun forwards it; rank 0 checkpoints and stops
            return proc.wait()
    from .runner import run_process

    return run_process(run.path, resume=resume, headless=True)


def spawn(run: RunDir, resume: bool, gpus: int | None, wait: float = 20.0) -> int:
    """Start the run in its own session (closing the terminal or SSH never stops it); returns its pid.

    stdin is /dev/null and stdout/stderr go to stdout.log in the run directory, never a pipe
    to us. Waits until the run has written its pid (or has died, which is reported).
    """
    _check_gpus(gpus)
    try:
        run.pid_path.unlink()
    except FileNotFoundError:
        pass
    with open(run.stdout_path, "ab") as log:
        proc = subprocess.Popen(
            runner_argv(run, resume, gpus),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=run.path,
        )
    deadline = time.time() + wait
    while time.time() < deadline:
        if run.pid_path.exists():
            return proc.pid
        if proc.poll() is not None:
            tail = _tail(run.stdout_path)
            raise UserError(f"run {run.name} exited at start (code {proc.returncode}): {tail}")
        time.sleep(0.05)
    return proc.pid


def _tail(path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return " / ".join(text[-lines:]) if text else "no output"


def control(run: RunDir, msg: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Send one command to a live run; its reply is only {"ok": true}. A refusal, or a run that
    is not there, becomes a UserError."""
    if not run.alive():
        state = summarize(run).state
        raise UserError(f"run {run.name} is not running (state: {state}); "
                        f"restart it with 'gpt2-cockpit resume {run.name}'")
    reply = ctl.request(run.socket_path, msg, timeout=timeout)
    if not reply.get("ok"):
        raise UserError(f"run {run.name}: {reply.get('error') or 'the command was refused'}")
    return reply


def command(run: RunDir, msg: dict[str, Any], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Send pause/resume/stop/checkpoint/set to a live run; returns the events logged meanwhile.

    The run applies such a command before it replies, and logs what it did first, so the
    events it caused (a `state`, `checkpoint` or `set` event) are among those returned. The
    reader is opened before sending, so nothing logged in between is missed.
    """
    reader = EventReader(run.events_path, from_end=True)
    control(run, msg, timeout)
    return reader.poll()


def sample_text(run: RunDir, prompt: str, max_new_tokens: int = sampling.MAX_NEW_TOKENS,
                temperature: float = sampling.TEMPERATURE, top_k: int = sampling.TOP_K,
                timeout: float = 900.0) -> str:
    """Generate from a live run's weights as they are now; returns the text.

    The run accepts the request, samples between optimizer steps, and logs the text as a
    `sample` event (or a failure as an `error` event) carrying the request's id; this follows
    the log until one of those arrives. A refusal, a timeout or the run stopping first is a
    UserError.
    """
    sampling.check(max_new_tokens, temperature, top_k, prompt)
    request_id = uuid.uuid4().hex[:12]
    deadline = time.monotonic() + timeout
    reader = EventReader(run.events_path, from_end=True)
    control(run, {"cmd": "sample", "prompt": prompt, "max_new_tokens": max_new_tokens,
                  "temperature": temperature, "top_k": top_k, "request_id": request_id}, timeout)
    try:
        return _await_sample(run, reader, request_id, deadline, timeout)
    except KeyboardInterrupt:  # Ctrl-C: the run drops the sample too, instead of finishing it for nobody
        try:
            control(run, {"cmd": "cancel", "request_id": request_id}, timeout=10)
        except UserError:
            pass  # finished or gone meanwhile
        raise


def _await_sample(run: RunDir, reader: EventReader, request_id: str, deadline: float, timeout: float) -> str:
    while True:
        alive = run.alive()  # asked before reading, so a sample logged just before exiting is seen
        for event in reader.poll():
            if event.get("request_id") == request_id and event.get("type") == "sample":
                return str(event.get("text", ""))
            if event.get("request_id") == request_id and event.get("type") == "error":
                raise UserError(f"run {run.name}: {event.get('message') or 'the sample failed'}")
            if event.get("type") == "state" and event.get("state") in FINAL_STATES:
                raise UserError(f"run {run.name} {event['state']} before the sample was ready; "
                                f"'gpt2-cockpit sample {run.name}' samples from its last checkpoint")
        if not alive:
            raise UserError(f"run {run.name} exited before the sample was ready")
        if time.monotonic() > deadline:
            raise UserError(f"run {run.name} sent no sample within {timeout:.0f}s")
        time.sleep(0.1)
