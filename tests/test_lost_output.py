"""A run's output is a courtesy: losing it (a pipe's reader gone, a closed terminal) never fails
the run, and commands whose reader goes away end quietly, as `git log | head` does."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import CLI, cli_env, tiny_overrides

from gpt2_cockpit.engine.runs.events import read_all
from gpt2_cockpit.engine.runs.rundir import resolve

from helpers import of_type


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _dies_on_sigint_in_group(pgid: int):
    def setup():
        os.setpgid(0, pgid)  # the same foreground job as the run, as a shell makes a pipeline
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, whatever CI ignores
    return setup


@pytest.mark.slow
def test_ctrl_c_on_a_headless_run_piped_into_tee_checkpoints_and_resumes(corpus, cockpit_home, tmp_path):
    """`gpt2-cockpit train --headless | tee log`, then Ctrl-C: the terminal sends SIGINT to the
    whole pipeline, tee dies first, and the run's "stopping" line meets a closed pipe."""
    log = tmp_path / "tee.log"
    sets = tiny_overrides(corpus, max_iters=100_000, checkpoint_interval=100_000, eval_interval=100_000)
    argv = [*CLI, "train", "cpu-tiny", "--headless", "--name", "piped"]
    for item in sets:
        argv += ["--set", item]
    run_proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=cli_env(cockpit_home), process_group=0)
    tee = None
    try:
        tee = subprocess.Popen(["tee", str(log)], stdin=run_proc.stdout, stdout=subprocess.DEVNULL,
                               preexec_fn=_dies_on_sigint_in_group(run_proc.pid))
        run_proc.stdout.close()  # tee alone reads the pipe now
        _wait_for(lambda: log.exists() and log.read_text().count("iter ") >= 3, 120, "training steps")
        os.killpg(run_proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        assert tee.wait(timeout=10) == -signal.SIGINT  # the reader is gone before the run speaks
        assert run_proc.wait(timeout=120) == 0
    finally:
        for p in (run_proc, tee):
            if p is not None and p.poll() is None:
                p.kill()
    run = resolve("piped")
    events = read_all(run.events_path)
    states = [e["state"] for e in of_type(events, "state")]
    assert states[-1] == "stopped" and "failed" not in states
    saved = of_type(events, "checkpoint")
    assert saved and os.path.exists(saved[-1]["path"])
    stopped_at = saved[-1]["iter"]

    resumed = subprocess.run([*CLI, "resume", "piped", "--headless", "--set", f"train.max_iters={stopped_at + 3}"],
                             env=cli_env(cockpit_home), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    events = read_all(run.events_path)
    assert of_type(events, "run")[-1]["resumed_from"] == stopped_at
    assert of_type(events, "state")[-1]["state"] == "done"


def _with_reader_gone(argv: list[str], home) -> subprocess.CompletedProcess:
    """Run a command whose stdout reader has already gone (`... | head -1` after head exits)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(home))
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, "", err.decode())


def test_listing_commands_end_quietly_when_their_reader_goes(cockpit_home):
    from fakerun import loss_at, make_run

    from gpt2_cockpit.engine.runs.events import EventWriter

    run = make_run("listed")
    writer = EventWriter(run.events_path)
    writer.emit("state", state="running", reason=None)
    for it in range(0, 3000, 10):  # more rows than a pipe holds
        writer.emit("step", iter=it, loss=loss_at(it), lr=1e-3, tokens=it * 768, tokens_per_sec=1e4, ms=30.0,
                    mfu=None, micro_batch=12, grad_accum=1, grad_norm=1.0)
    writer.emit("state", state="stopped", reason="test")
    for argv in ([*CLI, "runs"], [*CLI, "metrics", "listed"], [*CLI, "metrics", "listed", "--csv"]):
        done = _with_reader_gone(argv, cockpit_home)
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, (argv, done.stderr)
        assert "BrokenPipe" not in done.stderr


def test_a_failing_stream_goes_quiet_instead_of_raising(tmp_path):
    """The run process's stdout: once a write fails, the descriptor points at /dev/null."""
    from gpt2_cockpit.engine.fsutil import _SurvivingStream

    read_end, write_end = os.pipe()
    stream = _SurvivingStream(os.fdopen(write_end, "w", buffering=1))
    stream.write("first line\n")
    os.close(read_end)  # the reader goes away
    stream.write("SIGINT: finishing this step\n")  # would raise BrokenPipeError
    stream.flush()
    assert stream.lost
    assert os.readlink(f"/proc/self/fd/{write_end}") == os.devnull
    stream.write("and more\n")
