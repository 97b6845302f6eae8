"""Runs that train on the CPU share its cores with each other and leave the cores other programs
keep busy, from before their first eval, and a paused run takes no share."""

import os
import subprocess
import sys

import pytest
import torch

from gpt2_cockpit.engine.train import cpushare
from gpt2_cockpit.engine.train.cpushare import CpuShare, ProcStat

TICKS = 100  # the kernel's clock ticks per second (USER_HZ)


class FakeBox:
    """/proc as the kernel would show it, for a box whose processes keep a known load (in cores),
    with a clock that moves only when told (a sleep moves it too, the loads going on)."""

    def __init__(self, cores: int):
        self.n = cores
        self.now = 1000.0
        self.busy = self.total = 0.0
        self.load: dict[object, float] = {}  # pid (or a name for a program that is no run) -> cores
        self.ticks: dict[int, float] = {}

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.total += self.n * seconds * TICKS
        self.busy += min(self.n, sum(self.load.values())) * seconds * TICKS
        for who, cores in self.load.items():
            if isinstance(who, int):
                self.ticks[who] = self.ticks.get(who, 0.0) + cores * seconds * TICKS

    # what CpuShare asks
    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def cpus(self) -> set[int]:
        return set(range(self.n))

    def cpu_ticks(self, cpus):
        return int(self.busy), int(self.total)

    def process_ticks(self, pid):
        return int(self.ticks.get(pid, 0))


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def other_run():
    """A live process that stands for another run (its pid in the registry)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    proc.kill()
    proc.wait()


def share_on(box: FakeBox, folder, said: list[str], default: int | None = None) -> CpuShare:
    share = CpuShare(say=said.append, folder=folder, proc=box, clock=box.clock, sleep=box.sleep)
    share.default = default or box.n  # torch's own thread count on such a box
    return share


def test_a_core_another_program_keeps_busy_is_left_to_it_from_the_first_look(tmp_path, threads):
    box, said = FakeBox(2), []
    box.load["hog"] = 1.0  # e.g. python -c 'while True: pass', no run of ours
    share = share_on(box, tmp_path, said)
    assert (tmp_path / str(os.getpid())).read_text() == "idle"  # a run from its start, not training yet
    box.advance(0.1)  # (the run loads its data and model meanwhile)
    share.apply()  # the first look (made before the first eval) waits out FIRST_LOOK_SECONDS
    assert box.now == 1000.0 + cpushare.FIRST_LOOK_SECONDS
    assert share.threads == 1 and torch.get_num_threads() == 1
    assert said == ["CPU: 1 of 2 cores (1 run training on the CPU of this machine; "
                    "other processes keep 1 of 2 cores busy)"]
    assert (tmp_path / str(os.getpid())).read_text() == "training"

    # the run trains on its core; the program goes on: nothing changes, nothing more is said
    box.load[os.getpid()] = 1.0
    box.advance(cpushare.RECHECK_SECONDS)
    share.apply()
    assert share.threads == 1 and len(said) == 1 and share.share.busy == 1
    # the program ends: at the next look the run takes both cores again
    del box.load["hog"]
    box.advance(cpushare.RECHECK_SECONDS / 2)
    share.apply()  # (not looked at again before RECHECK_SECONDS)
    assert share.threads == 1
    box.advance(cpushare.RECHECK_SECONDS / 2)
    share.apply()
    assert share.threads == 2 and torch.get_num_threads() == 2
    assert said[-1] == "CPU: 2 of 2 cores (1 run training on the CPU of this machine)"
    share.close()
    assert not (tmp_path / str(os.getpid())).exists()


def test_only_other_processes_count_as_busy_not_this_run_nor_the_other_runs(tmp_path, threads, other_run):
    box, said = FakeBox(8), []
    (tmp_path / str(other_run.pid)).touch()  # another run, alive (an empty entry: an older version's)
    (tmp_path / "999999999").write_text("training")  # a run that died without cleaning up
    me = os.getpid()
    box.load.update({me: 4.0, other_run.pid: 3.6, "hog": 0.3})  # the runs' own time is theirs, not busy
    share = share_on(box, tmp_path, said)
    share.apply()
    assert share.threads == 4 and share.share.busy == 0
    assert said == ["CPU: 4 of 8 cores (2 runs training on the CPU of this machine)"]
    assert not (tmp_path / "999999999").exists()
    box.load.update({me: 3.0, other_run.pid: 2.0, "hog": 2.5})  # other processes: 2.5 cores, counted as 3
    box.advance(cpushare.RECHECK_SECONDS)
    share.apply()
    assert share.share.busy == 3 and share.threads == 2
    assert said[-1] == ("CPU: 2 of 8 cores (2 runs training on the CPU of this machine; "
                        "other processes keep 3 of 8 cores busy)")
    share.close()


def test_never_more_threads_than_torch_would_take(tmp_path, threads):
    box, said = FakeBox(4), []
    share = share_on(box, tmp_path, said, default=2)  # e.g. OMP_NUM_THREADS=2, or 2 physical cores
    share.apply()
    assert share.threads is None and said == []  # untouched: setting it costs ~10% a step
    box.load["hog"] = 1.0
    box.advance(cpushare.RECHECK_SECONDS)
    share.apply()
    assert share.threads is None and said == []  # 3 cores left: torch's 2 threads still fit
    box.load["hog"] = 3.0
    box.advance(cpushare.RECHECK_SECONDS)
    share.apply()
    assert share.threads == 1 and said[-1].startswith("CPU: 1 of 4 cores")
    share.close()


def test_a_paused_run_takes_no_share_and_takes_it_back_when_it_trains(tmp_path, threads, other_run):
    box, said = FakeBox(2), []
    (tmp_path / str(other_run.pid)).write_text("training")
    share = share_on(box, tmp_path, said)
    share.apply()
    assert share.threads == 1 and said[-1].startswith("CPU: 1 of 2 cores (2 runs")
    share.idle()  # paused: the other run counts it out at its next look
    assert (tmp_path / str(os.getpid())).read_text() == "idle"
    assert share.runs() == {other_run.pid: True, os.getpid(): False}
    box.load["hog"] = 9.0  # meanwhile: e.g. the commands that paused it, sampled from it, resumed it
    box.advance(cpushare.RECHECK_SECONDS)
    del box.load["hog"]
    share.apply()  # resumed: counted in again at once, on the share it had
    assert (tmp_path / str(os.getpid())).read_text() == "training"
    assert share.threads == 1 and len(said) == 1
    (tmp_path / str(other_run.pid)).write_text("idle")  # now the other one is paused
    box.load[os.getpid()] = 1.0
    box.advance(cpushare.RECHECK_SECONDS)
    share.apply()  # measured from the resume on: the busy pause is not held against it
    assert share.share.runs == 1 and share.share.busy == 0 and share.threads == 2
    share.close()
    assert not (tmp_path / str(os.getpid())).exists()


def test_a_run_that_is_not_training_counts_as_any_other_process(tmp_path, threads, other_run):
    """Another run that starts (or is paused) takes no share, but its CPU time is load like any
    other; once it trains, its time is its own (followed since it started)."""
    box, said = FakeBox(4), []
    entry = tmp_path / str(other_run.pid)
    entry.write_text("idle")  # it imports torch and reads its data
    me = os.getpid()
    box.load.update({other_run.pid: 1.0})
    share = share_on(box, tmp_path, said)
    share.apply()
    assert (share.share.runs, share.share.busy, share.threads) == (1, 1, 3)
    assert said[-1] == ("CPU: 3 of 4 cores (1 run training on the CPU of this machine; "
                        "other processes keep 1 of 4 cores busy)")
    entry.write_text("training")  # its first eval: it takes its share, and so does this run
    box.load.update({me: 2.0, other_run.pid: 2.0})
    box.advance(cpushare.RECHECK_SECONDS)
    share.apply()
    assert (share.share.runs, share.share.busy, share.threads) == (2, 0, 2)
    assert said[-1] == "CPU: 2 of 4 cores (2 runs training on the CPU of this machine)"
    share.close()


def test_the_cpu_share_is_applied_before_the_first_eval(corpus, monkeypatch):
    """The Stepper looks as it is made: the loss before any training runs on the run's share."""
    from conftest import tiny_overrides

    from gpt2_cockpit.engine import presets
    from gpt2_cockpit.engine.train.runner import build_workload
    from gpt2_cockpit.engine.train.step import Stepper

    class Spy:
        looks = 0

        def apply(self):
            Spy.looks += 1

    cfg = presets.load("cpu-tiny", tiny_overrides(corpus))
    workload = build_workload(cfg)
    try:
        Stepper(cfg, workload, "cpu", cpu_share=Spy())
    finally:
        workload.close()
    assert Spy.looks == 1


def test_proc_stat_reads_the_cores_of_this_process_and_a_process_time(tmp_path):
    (tmp_path / "stat").write_text(
        "cpu  300 0 100 500 10 0 0 0 0 0\n"
        "cpu0 100 0 50 200 5 0 0 0 0 0\n"
        "cpu1 200 0 50 300 5 0 0 0 0 0\n"
        "intr 12345\n")
    (tmp_path / "42").mkdir()
    # comm may hold spaces and parentheses; utime, stime, cutime and cstime are fields 14 to 17
    (tmp_path / "42" / "stat").write_text("42 (a (b) c) R 1 1 1 0 -1 0 0 0 0 0 50 30 15 5 20 0 1 0 100\n")
    proc = ProcStat(root=str(tmp_path))
    assert proc.cpu_ticks({1}) == (250, 555)
    assert proc.cpu_ticks({0, 1}) == (400, 910)
    assert proc.process_ticks(42) == 100
    assert proc.process_ticks(43) is None
    # the real one, on Linux: this process's own time, and its cores' ticks
    if os.path.exists("/proc/stat"):
        real = ProcStat()
        assert real.process_ticks(os.getpid()) is not None
        busy, total = real.cpu_ticks(real.cpus())
        assert 0 <= busy <= total


def test_the_loop_counts_a_paused_run_out_until_it_trains_again():
    from types import SimpleNamespace

    from gpt2_cockpit.engine.train.dist import Dist
    from gpt2_cockpit.engine.train.loop import Progress, handle_commands
    from gpt2_cockpit.engine.train.owner import NullRunOwner

    calls = []

    class Share:
        def idle(self):
            calls.append("idle")

    class Owner(NullRunOwner):
        """Nothing at the first look while paused, then `resume`."""

        def __init__(self):
            super().__init__()
            self.inbox = [[], [{"id": "1", "cmd": "resume"}]]

        def requests(self):
            return self.inbox.pop(0) if self.inbox else []

    p = Progress(state="paused")
    handle_commands(SimpleNamespace(dist=Dist(), cpu_share=Share()), Owner(), p)
    assert p.state == "running" and calls == ["idle"]  # (the next step's apply() counts it in again)


def test_a_thread_count_the_user_set_is_taken_and_kept(tmp_path, threads, monkeypatch):
    """OMP_NUM_THREADS set: the run takes that many threads whatever the box does (a count that
    never changes keeps its losses bit-for-bit the same), still counted by the other runs; its
    thread count is put back on close (a run inside another program, such as these tests)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpushare.pinned() == 3
    for value in ("", "0", "two", "-1"):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert cpushare.pinned() is None
    torch.set_num_threads(2)
    box, said = FakeBox(4), []
    share = CpuShare(say=said.append, folder=tmp_path, proc=box, clock=box.clock, sleep=box.sleep, pinned=3)
    share.apply()
    assert torch.get_num_threads() == 3 and (tmp_path / str(os.getpid())).read_text() == "training"
    box.load["hog"] = 4.0  # every core kept busy: an adapting run would drop to one thread
    box.advance(cpushare.RECHECK_SECONDS)
    share.apply()
    assert torch.get_num_threads() == 3 and said == [] and box.now == 1000.0 + cpushare.RECHECK_SECONDS
    share.idle()
    assert (tmp_path / str(os.getpid())).read_text() == "idle"
    share.close()
    assert torch.get_num_threads() == 2 and not (tmp_path / str(os.getpid())).exists()
