"""Starting runs and talking to them: the part of the engine the CLI and the cockpit share.

Never imports torch: a run's own process (engine.runner) does the training; this module
creates its directory, launches it (in the foreground, or detached in its own session, or
through torchrun for several GPUs) and speaks to it over its control socket.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import config as cfgmod
from . import control as ctl
from . import presets
from .errors import UserError
from .runs import RunDir, create, format_age, list_dirs, resolve, summarize


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
        cfg = cfgmod.with_overrides(run.config(), overrides)
        cfgmod.save(cfg, run.config_path)


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
    """Send one command to a live run; a failed command becomes a UserError."""
    if not run.alive():
        state = summarize(run).state
        raise UserError(f"run {run.name} is not running (state: {state}); "
                        f"restart it with 'gpt2-cockpit resume {run.name}'")
    reply = ctl.request(run.socket_path, msg, timeout=timeout)
    if not reply.get("ok"):
        raise UserError(f"run {run.name}: {reply.get('error', 'the command failed')}")
    return reply


def simple_command(run_name: str, cmd: str) -> int:
    run = resolve(run_name)
    reply = control(run, {"cmd": cmd})
    if cmd == "checkpoint":
        print(f"{run.name}: checkpoint at iter {reply.get('iter')} -> {reply.get('path')}")
    else:
        print(f"{run.name}: {reply.get('state', cmd)}")
    return 0


def sample(run_name: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int) -> int:
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: needs at least 1")
    if not temperature > 0:
        raise UserError(f"--temperature {temperature}: must be greater than 0")
    if top_k < 0:
        raise UserError(f"--top-k {top_k}: must not be negative (0 means no top-k)")
    run = resolve(run_name)
    msg = {"cmd": "sample", "prompt": prompt, "max_new_tokens": max_new_tokens,
           "temperature": temperature, "top_k": top_k}
    if run.alive():
        reply = control(run, msg, timeout=900)
        print(reply["text"])
        return 0
    # not live: generate from the newest checkpoint in this process
    from .runner import sample_from_checkpoint

    print(sample_from_checkpoint(run, prompt, max_new_tokens, temperature, top_k))
    return 0


def set_live(run_name: str, assignments: list[str]) -> int:
    run = resolve(run_name)
    pairs = [cfgmod.parse_assignment(a) for a in assignments]
    for key, _ in pairs:
        if key not in cfgmod.LIVE_KEYS:
            raise UserError(f"{key} cannot change during a run (live keys: {', '.join(cfgmod.LIVE_KEYS)}); "
                            f"for a stopped run use 'gpt2-cockpit resume {run.name} --set {key}=...'")
    for key, value in pairs:
        reply = control(run, {"cmd": "set", "key": key, "value": value})
        print(f"{run.name}: {key} {reply.get('old')} -> {reply.get('new')}")
    return 0


def print_runs() -> int:
    dirs = list_dirs()
    if not dirs:
        print("no runs yet; start one with 'gpt2-cockpit train'")
        return 0
    rows = [("NAME", "PRESET", "STATE", "ITER", "LOSS", "AGE")]
    for run in dirs:
        s = summarize(run)
        loss = f"{s.loss:.4f}" if isinstance(s.loss, (int, float)) else "-"
        rows.append((s.name, s.preset, s.state, f"{s.iter}/{s.max_iters}", loss, format_age(s.age)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def print_presets() -> int:
    infos = presets.available()
    width = max(len(i.name) for i in infos)
    for info in infos:
        try:
            desc = cfgmod.load(info.path).description
        except UserError as e:
            desc = f"(invalid: {e})"
        tag = "" if info.origin == "shipped" else " [user]"
        print(f"{info.name.ljust(width)}  {desc}{tag}")
    return 0
