"""Starting runs and talking to them: the part of the engine the CLI and the cockpit share.

Never imports torch and never prints: a run's own process (engine.runner) does the training;
this module creates its directory, launches it (in the foreground, or detached in its own
session, or through torchrun for several GPUs or machines) and speaks to it over its control
socket. What a command did is read back from the run's event log (control.py says why).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config as cfgmod
from .. import presets, sampling
from ..errors import UserError
from ..paths import home
from . import control as ctl
from .events import FINAL_STATES, EventReader
from .rundir import RunDir, create, summarize


def create_run(preset: str | None, overrides: list[str], name: str | None) -> RunDir:
    """Resolve the preset and overrides, and make the run directory with its config.toml."""
    cfg = presets.load(preset or presets.default_name(), overrides)
    if not cfg.data.source.startswith(("builtin:", "hf:", "url:")):
        from ..data.sources import source_identity

        source_identity(cfg.data.source)  # a missing local corpus fails now, before a run exists
        # the run process works in its own directory: pin a relative path to where the user was
        cfg.data.source = str(Path(cfg.data.source).expanduser().resolve())
    if cfg.engine == "finetune" and Path(cfg.model.pretrained).expanduser().exists():
        cfg.model.pretrained = str(Path(cfg.model.pretrained).expanduser().resolve())
    return create(cfg, name)


def check_resumable(run: RunDir) -> None:
    """One sentence, before any process starts, for a run that has nothing to resume from (a
    restart would only fail in its own process, and say so on every road its output takes)."""
    folder = run.checkpoints  # checkpoint.py's names, matched here without loading torch
    if not (folder.is_dir() and any(p.name == "best.pt" or p.name.startswith("ckpt-") and p.suffix == ".pt"
                                    for p in folder.iterdir())):
        raise UserError(f"run {run.name} has no checkpoint to resume from (it stopped before writing one); "
                        f"start it again with 'gpt2-cockpit train'")


def prepare_restart(run: RunDir, overrides: list[str]) -> None:
    """Before restarting a stopped/crashed run: check it has a checkpoint, and apply --set
    overrides to its config.toml."""
    check_resumable(run)
    if overrides:
        run.write_config(cfgmod.with_overrides(run.config(), overrides))


DEFAULT_MASTER_PORT = 29500  # torchrun's


@dataclass
class Nodes:
    """The machines a run trains on: how many, this one's rank among them, and where they meet
    (node 0, the machine that holds the run directory)."""

    count: int = 1
    rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def joins(self) -> bool:
        """This machine joins a run whose directory lives on node 0: nothing is created here."""
        return self.rank > 0

    def check(self) -> None:
        """One sentence for a shape torchrun could not start."""
        if self.count < 1:
            raise UserError(f"--nnodes {self.count}: needs at least 1")
        if not 0 <= self.rank < self.count:
            raise UserError(f"--node-rank {self.rank}: with --nnodes {self.count} it must be from 0 to "
                            f"{self.count - 1}")
        if self.count == 1 and (self.master_addr or self.master_port is not None):
            raise UserError("--master-addr and --master-port are for several machines: add --nnodes N (2 or more)")
        if self.count > 1 and not self.master_addr:
            raise UserError(f"--nnodes {self.count} needs --master-addr: the address of node 0 (the machine "
                            f"started with --node-rank 0) that every machine can reach")
        if self.master_port is not None and not 1 <= self.master_port <= 65535:
            raise UserError(f"--master-port {self.master_port}: expected a TCP port from 1 to 65535")

    def torchrun_args(self) -> list[str]:
        """torchrun's static rendezvous at node 0's address (every node gives the same one)."""
        return [f"--nnodes={self.count}", f"--node_rank={self.rank}", f"--master_addr={self.master_addr}",
                f"--master_port={self.master_port or DEFAULT_MASTER_PORT}"]


def runner_argv(run: RunDir | None, resume: bool, gpus: int | None, nodes: Nodes | None = None,
                headless: bool = False) -> list[str]:
    """The command that starts the run's process, or its torchrun group (several GPUs or
    machines). `run` is None on a machine that joins a run held by node 0."""
    nodes = nodes or Nodes()
    args = ["-m", "gpt2_cockpit.engine.train.runner"] + ([str(run.path)] if run is not None else [])
    args += (["--resume"] if resume else []) + (["--headless"] if headless else [])
    if nodes.count > 1:
        return torchrun_command() + nodes.torchrun_args() + [f"--nproc_per_node={gpus or 1}"] + args
    if gpus and gpus > 1:
        return torchrun_command() + ["--standalone", f"--nproc_per_node={gpus}"] + args
    return [sys.executable] + args


def torchrun_command() -> list[str]:
    if shutil.which("torchrun") is None and not _has_module("torch.distributed.run"):
        raise UserError("--gpus and --nnodes need torchrun (it ships with PyTorch); install torch in this environment")
    return [sys.executable, "-m", "torch.distributed.run"]


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _check_gpus(gpus: int | None) -> None:
    if gpus is not None and gpus < 1:
        raise UserError(f"--gpus {gpus}: needs at least 1")


def previous_gpus(run: RunDir) -> int:
    """The processes the run last trained with (its newest `run` event's world_size): a restart
    that does not say otherwise keeps them, and with them the tokens per step."""
    runs = [e for e in EventReader(run.events_path).poll() if e.get("type") == "run"]
    return int(runs[-1].get("world_size") or 1) if runs else 1


def run_foreground(run: RunDir | None, resume: bool, gpus: int | None, nodes: Nodes | None = None) -> int:
    """--headless: train in this terminal. One process trains in-process; several GPUs or
    machines go through torchrun."""
    nodes = nodes or Nodes()
    _check_gpus(gpus)
    nodes.check()
    if nodes.count > 1 or (gpus and gpus > 1):
        return _run_group(run, runner_argv(run, resume, gpus, nodes, headless=True))
    from ..train.runner import run_process

    return run_process(run.path, resume=resume, headless=True)


def _run_group(run: RunDir | None, argv: list[str]) -> int:
    """A torchrun group in this terminal, in a session of its own, so that Ctrl-C (or SIGTERM, or
    the terminal closing) reaches this process alone: the first asks rank 0 to finish its step,
    checkpoint and stop, as `gpt2-cockpit stop` does, and every rank and torchrun exit 0. The next
    has torchrun end the group (the first does, on a node without the run's control socket),
    the one after kills it."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    interrupts = 0
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                interrupts += 1
            if interrupts == 1 and run is not None and _ask_to_stop(run):
                continue
            if interrupts <= 2:
                interrupts = 2
                proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
            else:
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _ask_to_stop(run: RunDir) -> bool:
    """Ask the run to checkpoint and stop; False when it cannot hear us (not started yet, or
    gone) or the user interrupts again meanwhile."""
    try:
        control(run, {"cmd": "stop", "reason": "Ctrl-C: checkpointed and stopped"})
    except (UserError, OSError, KeyboardInterrupt):
        return False
    return True


def spawn(run: RunDir, resume: bool, gpus: int | None, wait: float = 20.0, nodes: Nodes | None = None) -> int:
    """Start the run in its own session (closing the terminal or SSH never stops it); returns its pid.

    stdin is /dev/null and stdout/stderr go to stdout.log in the run directory, never a pipe
    to us. Waits until the run has written its pid (or has died, which is reported).
    """
    _check_gpus(gpus)
    (nodes or Nodes()).check()
    try:
        run.pid_path.unlink()
    except FileNotFoundError:
        pass
    with open(run.stdout_path, "ab") as log:
        proc = subprocess.Popen(
            runner_argv(run, resume, gpus, nodes),
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


def restart(run: RunDir, gpus: int | None = None) -> int:
    """Restart a stopped, failed or crashed run from its last complete checkpoint in the
    background, on as many GPUs as before unless told (`gpt2-cockpit resume RUN --detach` on one
    machine); returns its pid."""
    if run.alive():
        raise UserError(f"run {run.name} is still running; its process has not exited")
    check_resumable(run)
    return spawn(run, resume=True, gpus=gpus or previous_gpus(run))


def spawn_join(nodes: Nodes, gpus: int | None, wait: float = 3.0) -> Path:
    """Join node 0's run from this machine in the background (its own session); returns the log
    file its output goes to. There is no run directory here: the log lives under the home."""
    _check_gpus(gpus)
    nodes.check()
    folder = home() / "nodes"
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"node-{nodes.rank}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(runner_argv(None, False, gpus, nodes), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    try:
        proc.wait(timeout=wait)  # what fails at once (a bad option, a missing module) is told here
    except subprocess.TimeoutExpired:
        return log_path
    if proc.returncode != 0:
        raise UserError(f"node {nodes.rank} exited at start (code {proc.returncode}): {_tail(log_path)}")
    return log_path


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
