"""The client half of the control protocol: a reply only says accepted or refused; what a
command did is read from the run's event log (launch.command, launch.sample_text, and the CLI
that prints from them). The run here is a stand-in: this process's pid, a real ControlServer,
and a thread that handles commands as the training loop does (apply, log, then reply)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from conftest import CLI, cli_env
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.control import Command, ControlServer
from gpt2_cockpit.engine.runs.events import EventWriter, read_all
from gpt2_cockpit.engine.runs.rundir import create


class StandInRun:
    def __init__(self, name: str = "r", sample: str = "text"):
        self.run = create(presets.load("cpu-tiny"), name)
        self.run.pid_path.write_text(f"{os.getpid()}\n")
        self.run.heartbeat_path.touch()
        self.events = EventWriter(self.run.events_path)
        self.events.emit("state", state="running", reason="")
        self.sample = sample  # "text", "error", "stop" or "never": how a sample request ends
        self.received: list[dict] = []
        self.server = ControlServer(self.run.socket_path)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for command in self.server.poll():
                self.received.append(command.to_wire())
                self.handle(command)
            time.sleep(0.01)

    def handle(self, c: Command) -> None:
        emit = self.events.emit
        if c.cmd in ("pause", "resume"):
            emit("state", state="paused" if c.cmd == "pause" else "running", reason=f"{c.cmd} asked")
            c.accept()
        elif c.cmd == "checkpoint":
            emit("checkpoint", iter=7, path="checkpoints/ckpt_000007.pt", best=False)
            c.accept()
        elif c.cmd == "set" and c.args["key"] == "train.learning_rate":
            emit("set", key="train.learning_rate", old=3e-4, new=c.args["value"])
            c.accept()
        elif c.cmd == "set":
            c.refuse(f"{c.args['key']} must stay above the current iter 7")
        elif c.cmd == "cancel":
            c.accept()
        elif c.cmd == "sample" and self.sample == "never":
            c.accept()  # a long sample: nothing is logged for it yet
        elif c.cmd == "sample":
            c.accept()
            rid = c.args["request_id"]
            emit("sample", iter=7, prompt="", text="somebody else's", request_id="other")
            emit("step", iter=8, loss=2.0)
            if self.sample == "error":
                emit("error", message="generation failed: out of memory", request_id=rid)
            elif self.sample == "stop":
                emit("state", state="stopped", reason="SIGTERM")
            else:
                emit("sample", iter=8, prompt=c.args["prompt"], text=c.args["prompt"] + " sat on the mat",
                     request_id=rid)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.server.close()
        self.events.close()


@pytest.fixture
def standin():
    made = []

    def make(**kw) -> StandInRun:
        made.append(StandInRun(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_command_returns_the_events_it_caused(standin):
    s = standin()
    events = launch.command(s.run, {"cmd": "pause"})
    assert [(e["type"], e.get("state")) for e in events] == [("state", "paused")]  # not the earlier "running"
    assert s.received == [{"cmd": "pause"}]


def test_a_refusal_is_one_sentence(standin):
    s = standin()
    with pytest.raises(UserError, match="train.max_iters must stay above the current iter 7"):
        launch.command(s.run, {"cmd": "set", "key": "train.max_iters", "value": 5})


def test_sample_text_follows_the_log_to_its_own_sample(standin):
    s = standin()
    assert launch.sample_text(s.run, "The cat", max_new_tokens=8) == "The cat sat on the mat"
    (request,) = s.received
    assert request["cmd"] == "sample" and len(request["request_id"]) == 12
    assert (request["max_new_tokens"], request["temperature"], request["top_k"]) == (8, 0.8, 200)
    samples = [e for e in read_all(s.run.events_path) if e["type"] == "sample"]
    assert {e["request_id"] for e in samples} == {"other", request["request_id"]}


def test_sample_failure_and_a_run_that_stops_are_user_errors(standin):
    with pytest.raises(UserError, match="generation failed: out of memory"):
        launch.sample_text(standin(name="e", sample="error").run, "x")
    with pytest.raises(UserError, match="stopped before the sample was ready"):
        launch.sample_text(standin(name="s", sample="stop").run, "x")


def test_sample_settings_are_checked_before_anything_is_sent(standin):
    s = standin()
    with pytest.raises(UserError, match="temperature"):
        launch.sample_text(s.run, "x", temperature=0.0)
    assert s.received == []


def test_ctrl_c_while_waiting_for_a_sample_cancels_it_on_the_run(standin, monkeypatch):
    s = standin(sample="never")
    polls = []

    def interrupted(reader):
        polls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(launch.EventReader, "poll", interrupted)
    with pytest.raises(KeyboardInterrupt):
        launch.sample_text(s.run, "The", 5)
    assert polls and [r["cmd"] for r in s.received] == ["sample", "cancel"]
    assert s.received[1]["request_id"] == s.received[0]["request_id"]


def test_the_cli_prints_what_the_events_say(standin, cockpit_home):
    s = standin()

    def cli(*args):
        proc = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60,
                              env=cli_env(cockpit_home))
        assert "Traceback" not in proc.stderr
        return proc.returncode, proc.stdout.strip(), proc.stderr.strip()

    assert cli("pause", "r") == (0, "r: paused", "")
    assert cli("resume", "r") == (0, "r: running", "")
    assert cli("checkpoint", "r") == (0, "r: checkpoint at iter 7 -> checkpoints/ckpt_000007.pt", "")
    assert cli("set", "r", "train.learning_rate=1e-4") == (0, "r: train.learning_rate 0.0003 -> 0.0001", "")
    assert cli("sample", "r", "A dog") == (0, "A dog sat on the mat", "")
    code, out, err = cli("set", "r", "train.max_iters=5")
    assert code != 0 and out == "" and err == "gpt2-cockpit: run r: train.max_iters must stay above the current iter 7"
