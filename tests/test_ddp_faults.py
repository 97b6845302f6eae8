"""Bad days of a torchrun group on CPU (gloo): one rank runs out of memory, one rank dies."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, cli_env, tiny_overrides
from helpers import of_type, run_inprocess, step_losses
from test_process import cli, events_of, long_run, sets, wait_for
from gpt2_cockpit.engine.runs.rundir import pid_alive, resolve
from gpt2_cockpit.engine.train import checkpoint as ckpt

pytestmark = pytest.mark.slow

CPU_GROUP = ["--gpus", "2", "--set", "train.device=cpu"]


def rank_pids(rank0_pid: int) -> dict[int, int]:
    """torchrun's workers beside rank 0 (its siblings), by their RANK."""
    parent = _ppid(rank0_pid)
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ppid(int(entry.name)) == parent:
            try:
                env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
            except OSError:
                continue
            if "RANK" in env:
                out[int(env["RANK"])] = int(entry.name)
    return out


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_one_ranks_oom_recovers_on_both_ranks_with_the_losses_of_one_process(cockpit_home, corpus):
    # the reference: one process at the smaller split, with the group's global batch (2 x 4 x 2 rows)
    _, code, ref = run_inprocess(corpus, "ref", micro_batch=2, grad_accum=8, max_iters=6)
    assert code == 0
    env = dict(cli_env(cockpit_home), GPT2_COCKPIT_FAKE_OOM_TOKENS="32", GPT2_COCKPIT_FAKE_OOM_RANK="1")
    args = ["train", "--headless", "--name", "oom", *CPU_GROUP, *sets(tiny_overrides(corpus, max_iters=6))]
    r = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    events = events_of(cockpit_home, "oom")
    assert of_type(events, "run")[0]["world_size"] == 2
    assert of_type(events, "state")[-1]["state"] == "done"
    # rank 1 alone ran out (64 tokens > 32): both ranks re-split the same way and redid step 1
    (oom,) = of_type(events, "oom")
    assert oom == {**oom, "iter": 1, "micro_batch_before": 4, "micro_batch_after": 2, "grad_accum_after": 4}
    steps = of_type(events, "step")
    assert [s["iter"] for s in steps] == list(range(1, 7))  # no step lost or done twice
    assert all((s["micro_batch"], s["grad_accum"]) == (2, 4) for s in steps)
    got, want = step_losses(events), step_losses(ref)
    for i in want:
        assert got[i] == pytest.approx(want[i], abs=1e-5), i
    cfg = resolve("oom").config()
    assert (cfg.train.micro_batch, cfg.train.grad_accum) == (2, 4)  # a resume keeps the split


def test_kill_9_of_rank_1_fails_the_run_naming_the_rank_and_resume_goes_on(cockpit_home, corpus):
    r = cli(cockpit_home, "train", "--detach", "--name", "k", *CPU_GROUP,
            *sets(long_run(corpus, checkpoint_interval=5)))
    assert r.returncode == 0, r.stderr
    run = resolve("k")
    wait_for(lambda: of_type(events_of(cockpit_home, "k"), "checkpoint"), timeout=120, what="a checkpoint")
    rank0 = run.pid()
    ranks = rank_pids(rank0)
    assert ranks.get(0) == rank0 and 1 in ranks, ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not pid_alive(rank0), timeout=60, what="rank 0 to stop")
    assert time.monotonic() - killed < 60

    events = events_of(cockpit_home, "k")
    (error,) = of_type(events, "error")
    last = of_type(events, "checkpoint")[-1]["iter"]
    message = error["message"]
    assert message.startswith(f"rank 1 (pid {ranks[1]}) exited unexpectedly at iter "), message
    assert f"'gpt2-cockpit resume k' continues from the checkpoint at iter {last}" in message
    assert of_type(events, "state")[-1] == {**of_type(events, "state")[-1], "state": "failed", "reason": message}
    assert "failed" in cli(cockpit_home, "runs").stdout
    assert ckpt.load_file(ckpt.path_for(run.checkpoints, last))["iter"] == last  # complete and readable
    assert not [p for p in run.checkpoints.iterdir() if ".tmp" in p.name]

    # resume: on two ranks again (as before), from the checkpoint the message names, to the end
    r = cli(cockpit_home, "resume", "k", "--headless", "--set", f"train.max_iters={last + 5}", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    events = events_of(cockpit_home, "k")
    restart = of_type(events, "run")[-1]
    assert restart["resumed_from"] == last and restart["world_size"] == 2
    assert of_type(events, "state")[-1]["state"] == "done"
    assert max(step_losses(events)) == last + 5


def test_a_rank_that_hangs_stops_the_others_in_bounded_time(cockpit_home, corpus):
    env = dict(cli_env(cockpit_home), GPT2_COCKPIT_DIST_TIMEOUT="15")  # a collective waits 15 s at most
    r = subprocess.run(CLI + ["train", "--detach", "--name", "h", *CPU_GROUP, *sets(long_run(corpus))],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    run = resolve("h")
    wait_for(lambda: of_type(events_of(cockpit_home, "h"), "checkpoint"), timeout=120, what="a checkpoint")
    rank0 = run.pid()
    rank1 = rank_pids(rank0)[1]
    os.kill(rank1, signal.SIGSTOP)  # alive, and answering nothing
    try:
        stopped = time.monotonic()
        wait_for(lambda: not pid_alive(rank0), timeout=60, what="rank 0 to stop")
        assert time.monotonic() - stopped < 15 + 20
    finally:
        os.kill(rank1, signal.SIGKILL)
    events = events_of(cockpit_home, "h")
    (error,) = of_type(events, "error")
    assert error["message"].startswith(f"rank 1 (pid {rank1}) did not answer for 15 s at iter "), error["message"]
    assert "'gpt2-cockpit resume h' continues from the checkpoint at iter" in error["message"]
    assert of_type(events, "state")[-1]["state"] == "failed"
