"""Several machines: two torchrun groups on 127.0.0.1 train one run; bad node options are one sentence."""

import socket
import subprocess

import pytest

from conftest import CLI, cli_env
from helpers import of_type, step_losses
from test_process import cli, events_of, long_run, sets, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_one_box_train_one_run_and_stop(cockpit_home, corpus, tmp_path):
    port = free_port()
    shape = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port), "--gpus", "1"]
    preset = ["cpu-tiny", *sets(long_run(corpus) + ["train.device=cpu"])]
    # the other machine: a home of its own, where the run directory does not exist
    elsewhere = tmp_path / "node1-home"
    node0 = subprocess.Popen(CLI + ["train", *preset, "--headless", "--name", "two", *shape, "--node-rank", "0"],
                             env=cli_env(cockpit_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node1 = subprocess.Popen(CLI + ["train", *preset, "--headless", *shape, "--node-rank", "1"],
                             env=cli_env(elsewhere), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(step_losses(events_of(cockpit_home, "two"))) >= 3, timeout=120, what="steps of the group")
        (run,) = of_type(events_of(cockpit_home, "two"), "run")
        assert run["world_size"] == 2
        assert cli(cockpit_home, "stop", "two").returncode == 0
        out0, _ = node0.communicate(timeout=60)
        out1, _ = node1.communicate(timeout=60)
    finally:
        for node in (node0, node1):
            node.kill()
    assert node0.returncode == 0, out0[-3000:]
    assert node1.returncode == 0, out1[-3000:]
    assert f"node 1 of 2: joining the run of node 0 at 127.0.0.1:{port}" in out1
    events = events_of(cockpit_home, "two")
    assert of_type(events, "state")[-1]["state"] == "stopped"
    assert of_type(events, "checkpoint")[-1]["iter"] == max(step_losses(events))
    step = of_type(events, "step")[-1]
    assert step["tokens"] == step["iter"] * 4 * 2 * 16 * 2  # micro x accum x block x world
    assert not (elsewhere / "runs").exists()  # node 1 made no run of its own


@pytest.mark.parametrize("options, says", [
    (["--nnodes", "2", "--node-rank", "2", "--master-addr", "10.0.0.1"],
     "--node-rank 2: with --nnodes 2 it must be from 0 to 1"),
    (["--nnodes", "2", "--node-rank", "1"], "--nnodes 2 needs --master-addr"),
    (["--node-rank", "1"], "--node-rank 1: with --nnodes 1 it must be from 0 to 0"),
    (["--master-addr", "10.0.0.1"], "--master-addr and --master-port are for several machines"),
    (["--nnodes", "0"], "--nnodes 0: needs at least 1"),
    (["--nnodes", "2", "--master-addr", "10.0.0.1", "--master-port", "70000"], "--master-port 70000"),
])
def test_bad_node_options_are_one_sentence(cockpit_home, options, says):
    for command in (["train", "cpu-tiny"], ["resume", "some-run"]):
        r = subprocess.run(CLI + command + options, env=cli_env(cockpit_home), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and r.stdout == "", r.stdout
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (cockpit_home / "runs").exists()  # nothing was created
