"""Runs as their own processes: headless signals, detach, remote control, crash recovery, DDP on CPU."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, cli_env, tiny_overrides
from helpers import finds_its_disk_full, of_type, run_inprocess, step_losses, wait_until
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.runs import control as ctl
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.events import read_all
from gpt2_cockpit.engine.runs.rundir import resolve, summarize

pytestmark = pytest.mark.slow

wait_for = wait_until  # the name tests/test_ddp_*.py import from here


def cli(home, *args, timeout=120):
    return subprocess.run(CLI + list(args), env=cli_env(home), capture_output=True, text=True, timeout=timeout)


def sets(items):
    return [a for item in items for a in ("--set", item)]


def events_of(home, name):
    return read_all(home / "runs" / name / "events.jsonl")


def last_state(home, name):
    states = of_type(events_of(home, name), "state")
    return states[-1]["state"] if states else None


def long_run(corpus, **train):
    # a run that would go on for a long while: it is stopped by the test
    return tiny_overrides(corpus, **{"max_iters": 100_000, "lr_decay_iters": 100_000, "checkpoint_interval": 25,
                                      "eval_interval": 500, **train})


def test_headless_sigterm_checkpoints_stops_and_resumes(cockpit_home, corpus):
    proc = subprocess.Popen(CLI + ["train", "--headless", "--name", "h"] + sets(long_run(corpus)),
                            env=cli_env(cockpit_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: any(e["type"] == "step" and e["iter"] >= 5 for e in events_of(cockpit_home, "h")), what="steps")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "iter" in out and "loss" in out  # the progress lines
    events = events_of(cockpit_home, "h")
    assert of_type(events, "state")[-1]["state"] == "stopped"
    stopped_at = of_type(events, "checkpoint")[-1]["iter"]
    assert stopped_at == max(step_losses(events)) >= 5  # the stop checkpointed the last step, not an older one
    assert (resolve("h").checkpoints / f"ckpt-{stopped_at:08d}.pt").exists()
    r = cli(cockpit_home, "resume", "h", "--headless", "--set", f"train.max_iters={stopped_at + 3}")
    assert r.returncode == 0, r.stderr
    events = events_of(cockpit_home, "h")
    assert of_type(events, "run")[-1]["resumed_from"] == stopped_at
    assert of_type(events, "state")[-1]["state"] == "done"
    assert max(step_losses(events)) == stopped_at + 3


def test_detached_run_is_remote_controlled_without_changing_its_trajectory(cockpit_home, corpus):
    t0 = time.time()
    r = cli(cockpit_home, "train", "--detach", "--name", "d", *sets(long_run(corpus)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "d" and time.time() - t0 < 15
    run = resolve("d")
    assert run.path.stat().st_mode & 0o777 == 0o700
    assert run.socket_path.stat().st_mode & 0o777 == 0o600
    wait_until(lambda: len(step_losses(events_of(cockpit_home, "d"))) >= 3, what="a few steps")

    assert cli(cockpit_home, "pause", "d").returncode == 0
    assert last_state(cockpit_home, "d") == "paused"
    paused_iter = max(step_losses(events_of(cockpit_home, "d")) or [0])
    # a sleep on purpose: really paused means no new step, and "no step" has no event to wait for
    # (a step of this tiny model takes milliseconds: half a second would show several)
    time.sleep(0.5)
    assert max(step_losses(events_of(cockpit_home, "d")) or [0]) == paused_iter

    s = cli(cockpit_home, "sample", "d", "The ", "--max-new-tokens", "30", "--top-k", "5")
    assert s.returncode == 0 and s.stdout.startswith("The ") and len(s.stdout.strip()) > 10
    c = cli(cockpit_home, "checkpoint", "d")
    assert c.returncode == 0 and f"iter {paused_iter}" in c.stdout
    assert (run.checkpoints / f"ckpt-{paused_iter:08d}.pt").exists()
    assert cli(cockpit_home, "resume", "d").returncode == 0
    wait_until(lambda: max(step_losses(events_of(cockpit_home, "d"))) >= paused_iter + 5, what="steps after resume")
    assert last_state(cockpit_home, "d") == "running"
    st = cli(cockpit_home, "set", "d", "train.learning_rate=1e-4")
    lr0 = presets.load("cpu-tiny", long_run(corpus)).train.learning_rate  # what it trained with until now
    assert st.returncode == 0 and st.stdout == f"d: train.learning_rate {lr0} -> 0.0001\n", st.stdout + st.stderr
    assert "learning_rate = 0.0001" in run.config_path.read_text()
    bad = cli(cockpit_home, "set", "d", "train.n_layer=3")
    assert bad.returncode != 0 and "unknown key" in bad.stderr
    bad = cli(cockpit_home, "set", "d", "model.n_layer=3")
    assert bad.returncode != 0 and "cannot change during a run" in bad.stderr
    listing = cli(cockpit_home, "runs").stdout
    assert "d " in listing and "running" in listing
    stop = cli(cockpit_home, "stop", "d")
    assert stop.returncode == 0
    wait_until(lambda: last_state(cockpit_home, "d") == "stopped", what="stopped")
    wait_until(lambda: not run.alive(), what="process exit")

    events = events_of(cockpit_home, "d")
    (set_event,) = of_type(events, "set")
    assert set_event["key"] == "train.learning_rate" and set_event["new"] == 1e-4
    (sample,) = of_type(events, "sample")
    assert sample["iter"] == paused_iter
    # the same run left alone: identical losses up to the `set`
    set_iter = max(e["iter"] for e in events if e["type"] == "step" and e["time"] <= set_event["time"])
    _, _, ref = run_inprocess(corpus, "ref", max_iters=set_iter, lr_decay_iters=100_000, checkpoint_interval=0,
                              eval_interval=0)
    got, want = step_losses(events), step_losses(ref)
    assert set_iter > paused_iter
    assert all(got[i] == want[i] for i in range(1, set_iter + 1))
    dead = cli(cockpit_home, "pause", "d")
    assert dead.returncode == 2 and "is not running" in dead.stderr and "Traceback" not in dead.stderr
    # a run that is not live samples from its newest checkpoint
    s = cli(cockpit_home, "sample", "d", "The", "--max-new-tokens", "10")
    assert s.returncode == 0 and s.stdout.startswith("The")


def test_kill_9_shows_crashed_and_resume_continues(cockpit_home, corpus):
    r = cli(cockpit_home, "train", "--detach", "--name", "k", *sets(long_run(corpus, checkpoint_interval=5)))
    assert r.returncode == 0, r.stderr
    run = resolve("k")
    wait_until(lambda: of_type(events_of(cockpit_home, "k"), "checkpoint"), what="a checkpoint")
    os.kill(run.pid(), signal.SIGKILL)
    wait_until(lambda: not run.alive(), what="death")
    assert summarize(run).state == "crashed"
    assert "crashed" in cli(cockpit_home, "runs").stdout
    bad = cli(cockpit_home, "sample", "nope")
    assert bad.returncode == 2 and "unknown run 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    # the newest checkpoint on disk: a kill between a checkpoint's rename and its event leaves a
    # file the log does not name yet, and resume rightly takes it
    last_ckpt = max(int(p.stem.split("-")[1]) for p in run.checkpoints.glob("ckpt-*.pt"))
    assert last_ckpt >= of_type(events_of(cockpit_home, "k"), "checkpoint")[-1]["iter"]
    r = cli(cockpit_home, "resume", "k", "--detach")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(of_type(events_of(cockpit_home, "k"), "run")) == 2, what="restart")
    assert of_type(events_of(cockpit_home, "k"), "run")[-1]["resumed_from"] == last_ckpt
    assert cli(cockpit_home, "stop", "k").returncode == 0
    wait_until(lambda: not run.alive(), what="exit")


def test_two_process_gloo_run_trains_pauses_samples_stops(cockpit_home, corpus):
    r = cli(cockpit_home, "train", "--detach", "--gpus", "2", "--name", "g",
            *sets(long_run(corpus) + ["train.device=cpu"]))
    assert r.returncode == 0, r.stderr
    run = resolve("g")
    wait_until(lambda: len(step_losses(events_of(cockpit_home, "g"))) >= 3, timeout=90, what="DDP steps")
    (ev,) = of_type(events_of(cockpit_home, "g"), "run")
    assert ev["world_size"] == 2
    step = of_type(events_of(cockpit_home, "g"), "step")[-1]
    assert step["tokens"] == step["iter"] * 4 * 2 * 16 * 2  # micro x accum x block x world
    assert cli(cockpit_home, "pause", "g").returncode == 0
    s = cli(cockpit_home, "sample", "g", "The", "--max-new-tokens", "20")
    assert s.returncode == 0 and s.stdout.startswith("The")
    assert cli(cockpit_home, "stop", "g").returncode == 0
    wait_until(lambda: last_state(cockpit_home, "g") == "stopped", timeout=60, what="stopped")
    wait_until(lambda: not run.alive(), what="exit")
    assert of_type(events_of(cockpit_home, "g"), "checkpoint")


def test_the_largest_sample_never_holds_the_run_hostage(cockpit_home, corpus):
    r = cli(cockpit_home, "train", "--detach", "--name", "hostage", *sets(long_run(corpus)))
    assert r.returncode == 0, r.stderr
    run = resolve("hostage")
    wait_until(lambda: len(step_losses(events_of(cockpit_home, "hostage"))) >= 3, what="a few steps")
    too_many = cli(cockpit_home, "sample", "hostage", "hi", "--max-new-tokens", "100000000")
    assert too_many.returncode == 2 and "from 1 to 20,000" in too_many.stderr
    with pytest.raises(UserError, match="the prompt is 200000 characters"):
        launch.sample_text(run, "x" * 200_000)
    huge = ctl.request(run.socket_path, {"cmd": "sample", "prompt": "x" * 200_000, "request_id": "h"})
    assert huge == {"ok": False, "error": "the prompt is 200000 characters; at most 100,000 are taken"}

    sample = subprocess.Popen(CLI + ["sample", "hostage", "The ", "--max-new-tokens", "20000"], env=cli_env(cockpit_home),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = wait_until(lambda: max(step_losses(events_of(cockpit_home, "hostage"))), what="the sample's start")
        wait_until(lambda: max(step_losses(events_of(cockpit_home, "hostage"))) >= started + 5, what="training goes on")
        t0 = time.monotonic()
        pause = cli(cockpit_home, "pause", "hostage")
        assert pause.returncode == 0 and time.monotonic() - t0 < 5, pause.stderr
        assert last_state(cockpit_home, "hostage") == "paused"
        assert not of_type(events_of(cockpit_home, "hostage"), "sample")  # still sampling, and paused
        os.kill(run.pid(), signal.SIGTERM)
        wait_until(lambda: not run.alive(), timeout=30, what="exit after SIGTERM")
        _, err = sample.communicate(timeout=30)
    finally:
        sample.kill()
    events = events_of(cockpit_home, "hostage")
    assert of_type(events, "state")[-1]["state"] == "stopped"
    assert of_type(events, "checkpoint")[-1]["iter"] == max(step_losses(events))
    assert sample.returncode == 2 and "the run stopped before this sample was finished" in err


def test_a_full_disk_pauses_the_run_and_resume_goes_on_once_there_is_room(cockpit_home, corpus, tmp_path):
    flag = tmp_path / "disk-is-full"
    env = dict(cli_env(cockpit_home), GPT2_COCKPIT_FAKE_FULL_DISK=str(flag))
    r = subprocess.run(CLI + ["train", "--detach", "--name", "full", *sets(long_run(corpus, checkpoint_interval=5))],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    run = resolve("full")
    wait_until(lambda: of_type(events_of(cockpit_home, "full"), "checkpoint"), what="a first checkpoint")
    flag.touch()  # from now on every write of the run fails as on a full disk
    wait_until(lambda: finds_its_disk_full(run), what="the run to find its disk full and pause")
    frozen = len(events_of(cockpit_home, "full"))
    time.sleep(2)  # a sleep on purpose: while the disk is full nothing may be written, and nothing has no event
    assert len(events_of(cockpit_home, "full")) == frozen and run.alive()  # nothing written, still there
    refused = cli(cockpit_home, "resume", "full")
    assert refused.returncode == 2 and "no space left" in refused.stderr and "free some space first" in refused.stderr
    assert not [p for p in run.checkpoints.iterdir() if ".tmp" in p.name]  # no partial checkpoint

    flag.unlink()  # space is freed: the events held back are written within a heartbeat or two
    wait_until(lambda: last_state(cockpit_home, "full") == "paused", timeout=30, what="the paused state in the log")
    events = events_of(cockpit_home, "full")
    (error,) = of_type(events, "error")
    assert "no space left to write" in error["message"] and "free on that disk" in error["message"]
    assert "last complete checkpoint is kept" in error["message"]
    last = of_type(events, "checkpoint")[-1]
    assert (run.checkpoints / Path(last["path"]).name).exists()
    assert cli(cockpit_home, "resume", "full").returncode == 0
    wait_until(lambda: max(step_losses(events_of(cockpit_home, "full"))) >= last["iter"] + 10, what="training again")
    assert cli(cockpit_home, "stop", "full").returncode == 0
    wait_until(lambda: not run.alive(), what="exit")
    assert of_type(events_of(cockpit_home, "full"), "state")[-1]["state"] == "stopped"
    lines = run.events_path.read_text().splitlines()
    assert len(lines) == len(events_of(cockpit_home, "full"))  # every line whole: nothing half-written
