"""The event log and the control channel, without any training."""

import errno
import json
import os
import threading

import pytest

from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.runs import control as ctl
from gpt2_cockpit.engine.runs.events import EventReader, EventWriter, read_all
from gpt2_cockpit.engine.runs.rundir import RunDir, summarize


def test_reader_replays_then_follows_and_tolerates_partial_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    w.emit("run", name="x")
    w.emit("step", iter=1, loss=float("nan"))
    r = EventReader(path)
    first = r.poll()
    assert [e["type"] for e in first] == ["run", "step"] and first[1]["loss"] is None
    with open(path, "ab") as f:
        f.write(b'{"type": "step", "time": 1, "iter": 2')  # a writer caught mid-line
    assert r.poll() == []
    with open(path, "ab") as f:
        f.write(b', "loss": 2.5, "future_field": {"a": 1}}\nnot json\n{"type":"new_kind","time":2}\n')
    again = r.poll()
    assert [e["type"] for e in again] == ["step", "new_kind"] and again[0]["loss"] == 2.5
    assert r.poll() == []
    w.close()


def test_lines_are_whole_and_standard_json(tmp_path):
    path = tmp_path / "events.jsonl"
    w = EventWriter(path)
    threads = [threading.Thread(target=lambda i=i: [w.emit("gpu", index=i, util=j) for j in range(200)])
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    for line in lines:
        json.loads(line)  # every line parses: appends never interleave
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_control_round_trip_and_errors(tmp_path):
    sock = tmp_path / ("deep" * 20) / "control.sock"  # longer than sockaddr_un allows
    sock.parent.mkdir(parents=True)
    server = ctl.ControlServer(sock)
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    unknown = ctl.request(sock, {"cmd": "launch_missiles"})
    assert unknown["ok"] is False and "unknown command" in unknown["error"]
    assert ctl.request(sock, {"cmd": "status"})["ok"] is False  # no status snapshot: the event log says it all

    def loop():
        for _ in range(200):
            for c in server.poll():
                c.accept() if c.cmd == "pause" else c.refuse("no such thing")
                c.refuse("a second answer is ignored")
                if c.cmd == "stop":
                    return
            threading.Event().wait(0.01)

    t = threading.Thread(target=loop)
    t.start()
    assert ctl.request(sock, {"cmd": "pause"}) == {"ok": True}  # accepted, and nothing more
    assert ctl.request(sock, {"cmd": "stop"}) == {"ok": False, "error": "no such thing"}
    t.join()
    server.close()
    with pytest.raises(UserError, match="not running"):
        ctl.request(sock, {"cmd": "pause"})


def test_summary_reads_state_iter_loss_and_detects_crash(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    from gpt2_cockpit.engine import config as cfgmod, presets

    cfgmod.save(presets.load("cpu-tiny"), run.config_path)
    w = EventWriter(run.events_path)
    w.emit("run", name="r", preset="cpu-tiny", engine="pretrain")
    w.emit("state", state="running", reason="")
    w.emit("step", iter=40, loss=2.5)
    run.pid_path.write_text("999999\n")  # no such process
    s = summarize(run)
    assert (s.iter, s.loss, s.preset, s.max_iters) == (40, 2.5, "cpu-tiny", 2000)
    assert s.state == "crashed" and not s.alive
    run.pid_path.write_text(f"{os.getpid()}\n")
    run.heartbeat_path.touch()
    assert summarize(run).state == "running"
    w.emit("state", state="done", reason="")
    run.pid_path.write_text("999999\n")
    assert summarize(run).state == "done"


def test_an_oversized_request_is_refused_in_one_sentence(tmp_path):
    import socket

    server = ctl.ControlServer(tmp_path / "control.sock")
    try:
        with pytest.raises(UserError, match="the request is larger than 1024 KiB"):
            ctl.request(tmp_path / "control.sock", {"cmd": "sample", "prompt": "x" * ctl.MAX_REQUEST})
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a client that sends it anyway
        raw.connect(str(tmp_path / "control.sock"))
        raw.sendall(b'{"cmd": "sample", "prompt": "' + b"x" * ctl.MAX_REQUEST)
        assert json.loads(raw.makefile().readline()) == {"ok": False, "error": "the request is larger than 1024 KiB"}
        raw.close()
        assert server.poll() == []  # it never reached the loop
    finally:
        server.close()


def test_a_line_the_disk_had_no_room_for_is_cut_off_and_written_later(tmp_path, monkeypatch):
    full = []
    w = EventWriter(tmp_path / "events.jsonl", on_disk_full=full.append)
    w.emit("step", iter=1)
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    w.emit("step", iter=2)
    w.emit("step", iter=3)
    assert len(full) == 2 and len(w.pending) == 2
    assert [json.loads(line)["iter"] for line in (tmp_path / "events.jsonl").read_text().splitlines()] == [1]
    monkeypatch.setattr(os, "write", real_write)
    assert w.flush()
    assert [e["iter"] for e in read_all(tmp_path / "events.jsonl")] == [1, 2, 3]
    w.close()


def test_an_answer_given_just_before_the_run_exits_still_reaches_the_client(tmp_path):
    # the run answers `stop`, then exits at once; a long GIL switch interval makes its main
    # thread race the reply's thread to the exit, as a busy box does
    import subprocess
    import sys

    sock = tmp_path / "control.sock"
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.setswitchinterval(2.0)
from gpt2_cockpit.engine.runs.control import ControlServer
server = ControlServer({str(sock)!r})
print("ready", flush=True)
while True:
    cmds = server.poll()
    if cmds:
        cmds[0].accept()
        server.close()
        break
    time.sleep(0.01)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert ctl.request(sock, {"cmd": "stop"}, timeout=20) == {"ok": True}
    finally:
        child.wait(timeout=30)
