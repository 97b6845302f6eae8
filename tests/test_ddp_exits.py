"""Every rank of a finished or stopped torchrun group exits 0: ten 2-rank CPU runs in a row, and Ctrl-C."""

import signal
import subprocess

import pytest

from conftest import CLI, cli_env, tiny_overrides
from helpers import of_type, step_losses
from test_process import events_of, long_run, sets, wait_for

pytestmark = pytest.mark.slow

RUNS = 10


def test_ten_two_rank_runs_in_a_row_all_exit_0_done(cockpit_home, corpus):
    failures = []
    for i in range(RUNS):
        args = ["train", "--headless", "--name", f"r{i}", "--gpus", "2", "--set", "train.device=cpu",
                *sets(tiny_overrides(corpus, max_iters=4, eval_interval=2, checkpoint_interval=2))]
        r = subprocess.run(CLI + args, env=cli_env(cockpit_home), capture_output=True, text=True, timeout=300)
        state = of_type(events_of(cockpit_home, f"r{i}"), "state")[-1]["state"]
        if r.returncode != 0 or state != "done":
            failures.append(f"run {i}: exit {r.returncode}, state {state}: {(r.stdout + r.stderr)[-2000:]}")
    assert not failures, "\n".join(failures)


def test_ctrl_c_stops_a_headless_group_with_a_checkpoint_and_exit_0(cockpit_home, corpus):
    args = ["train", "--headless", "--name", "c", "--gpus", "2", "--set", "train.device=cpu", *sets(long_run(corpus))]
    proc = subprocess.Popen(CLI + args, env=cli_env(cockpit_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_for(lambda: len(step_losses(events_of(cockpit_home, "c"))) >= 5, timeout=120, what="steps")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the command (the group has a session of its own)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    events = events_of(cockpit_home, "c")
    assert of_type(events, "state")[-1] == {**of_type(events, "state")[-1], "state": "stopped",
                                            "reason": "Ctrl-C: checkpointed and stopped"}
    assert of_type(events, "checkpoint")[-1]["iter"] == max(step_losses(events))
