"""What many cockpits attached to one run cost it: the run's ms/iter with 0 and with 10 viewers.

    python tests/benchmarks/viewers.py [--viewers 10] [--rounds 8] [--phase 20] [--settle 3]
        [--mode freeze|restart] [--size 120x40] [--log-interval N] [--baseline TREE]
        [--python PYTHON] [--module MODULE] [--keep]

Starts one `cpu-tiny` run (`train --detach`, in a fresh GPT2_COCKPIT_HOME, evals, checkpoints and
periodic samples off so only training runs) and `--viewers` real cockpits attached to it
(`attach RUN`, each in its own window of a private tmux server with a fixed terminal size, so
Textual really renders), then alternates phases within that run: no viewer, viewers, no viewer,
..., ending with a phase without so every viewer phase has one on each side (a busy box's drift
averages out). Each phase waits `--settle` seconds, then measures `--phase` seconds:

- the run's wall-clock ms/iter, from the `time` and `iter` of the `step` events in that window
  (what the run achieved: its whole loop), and the median of their `ms` field (the optimizer
  step alone);
- the CPU time (utime + stime, from /proc) of the run, of the viewers (each one's share of a
  core), of the tmux server (the terminal emulation; over SSH sshd would do that work) and of
  everything else on the machine ("other": busy time in /proc/stat less those, this script
  included; other work on a shared box shows here), and how often each viewer's threads were
  switched in (its wakeups, each a possible preemption of a training thread).

--mode freeze (the default) starts the viewers once and, between viewer phases, suspends them
as Ctrl+Z does (SIGTSTP; a stopped process takes no CPU: a phase "without" is as if they were
not there) and continues them (SIGCONT), so phases can be short and many. --mode restart starts the viewers
for each viewer phase and leaves them (`q`) after it; give it a --settle of 15 s or more (ten
cockpits starting up take a while on two cores).

It prints one row per phase, then for each cockpit the throughput cost: its mean ms/iter against
the mean of the phases without, and each viewer phase against the mean of its two neighbours
(mean ± spread). The goal: ten cockpits cost the run under 2%. On a box whose cores the run keeps
busy (a CPU run), every viewer's CPU is taken from the run, so the viewers' own CPU is the figure
to watch; it is measured directly, not by difference.

--baseline TREE compares two cockpits within the same run: TREE is another checkout's source
(its cli/, engine/, tui/ and presets/, e.g. from `git worktree add /tmp/before HEAD`), and the
viewer phases alternate between this tree's cockpits and TREE's (0, this, 0, baseline, 0, ...,
`--rounds` viewer phases each); the run is this tree's in both. --python/--module run another
install for everything (the run too).

Needs tmux and Linux (/proc). Every process it starts (the run, the tmux servers and their
viewers) is stopped at the end, also on Ctrl-C; --keep keeps the run's folder for a look at its
events.

Measured on the 2-core CPU box this project is developed on (cpu-tiny at ~50 ms/iter, both cores
busy training; viewers at 120x40): see tui/pace.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN = "viewers-bench"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    viewers: int
    label: str = ""  # whose cockpits: "this" tree's or the "baseline"
    start: float = 0.0  # the measured window (time.time(), the events' clock)
    end: float = 0.0
    rendering: int = 0  # viewers whose window showed the run screen (and, frozen mode, kept running)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in the window: run, viewers, tmux, other
    switches: float = 0.0  # the viewers' context switches in the window, all together
    wall_ms: float = float("nan")
    step_ms: float = float("nan")
    steps: int = 0

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 1e-9)

    def usable(self, max_other: float) -> bool:
        """Enough steps, and no more than `max_other` (of one core) taken by other work."""
        return self.steps >= 3 and self.cpu.get("other", 0.0) / self.seconds <= max_other


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def busy_seconds() -> float:
    """CPU seconds the machine spent busy (all CPUs, not idle, iowait or steal) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / TICKS


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all of a process's threads."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _state(pid: int) -> str | None:
    """A process's state letter (R, S, T, ...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren, ... (from /proc)."""
    parent_of: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent_of[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent_of.items() if pp == p]
        found += kids
        todo += kids
    return found


# --------------------------------------------------------------------------- the viewers


class Viewers:
    """N cockpits, each `attach RUN` in its own window of a private tmux server."""

    def __init__(self, label: str, n: int, argv: list[str], env: dict[str, str], size: tuple[int, int]) -> None:
        self.label, self.n, self.argv, self.env, self.size = label, n, argv, env, size
        self.socket = f"cockpit-viewers-{os.getpid()}-{label}"
        self.server_pid: int | None = None
        self.socket_path = ""
        self.frozen = False

    def tmux(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], env=self.env,
                             capture_output=True, text=True, check=check)
        return out.stdout

    def start(self) -> None:
        w, h = self.size
        # "; true" keeps the pane's shell as the cockpit's parent: tmux continues a pane process
        # that stops (SIGSTOP), so freeze() stops the cockpit under it instead
        command = " ".join(self.argv) + "; true"
        self.tmux("new-session", "-d", "-s", "viewers", "-x", str(w), "-y", str(h), "-n", "v0", command)
        self.tmux("set-option", "-g", "default-size", f"{w}x{h}")
        for i in range(1, self.n):
            self.tmux("new-window", "-d", "-t", "viewers", "-n", f"v{i}", command)
        pid, self.socket_path = self.tmux("display-message", "-p", "#{pid} #{socket_path}").split(maxsplit=1)
        self.server_pid = int(pid)
        self.socket_path = self.socket_path.strip()
        self.frozen = False

    def pids(self) -> list[int]:
        """The viewers' processes (the panes' processes and anything they started)."""
        return descendants(self.server_pid) if self.server_pid is not None else []

    def cockpit_pids(self) -> list[int]:
        """The cockpits themselves: what runs under the panes' shells."""
        shells = [pid for pid in self.pids() if _parent(pid) == self.server_pid]
        return [p for sh in shells for p in descendants(sh)]

    def rendering(self) -> int:
        """How many windows show the run screen (its status pane and loss plot)."""
        count = 0
        for i in range(self.n):
            screen = self.tmux("capture-pane", "-p", "-t", f"viewers:v{i}", check=False)
            count += "status" in screen and "loss" in screen
        return count

    def freeze(self, frozen: bool) -> None:
        """Suspend or continue every cockpit (under its shell: see start). Suspending is Ctrl+Z's
        SIGTSTP: Textual leaves application mode (its input thread ends) and stops itself, and on
        SIGCONT starts it again, as after `fg` (a bare SIGSTOP/SIGCONT would make it start one
        more input thread each time). Waits until every cockpit is stopped, or running again."""
        pids = self.cockpit_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTSTP if frozen else signal.SIGCONT)
            except ProcessLookupError:
                pass
        deadline, retry = time.time() + 30, time.time() + 3
        while time.time() < deadline:
            stopped = [p for p in pids if _state(p) == "T"]
            if len(stopped) == (len([p for p in pids if _state(p) is not None]) if frozen else 0):
                break
            if not frozen and time.time() > retry:  # still stopped: continue it once more (a SIGCONT
                for pid in stopped:  # to a running Textual app would start it a second time)
                    os.kill(pid, signal.SIGCONT)
                retry = time.time() + 3
            time.sleep(0.1)
        else:
            print(f"warning: {self.label} cockpits did not {'stop' if frozen else 'continue'} within 30 s",
                  flush=True)
        self.frozen = frozen

    def running(self) -> int:
        """How many cockpits are not stopped."""
        return sum(_state(p) not in ("T", None) for p in self.cockpit_pids())

    def stop(self) -> None:
        if self.server_pid is None:
            return
        if self.frozen:
            self.freeze(False)
        for i in range(self.n):  # leave as a user would (q); the run goes on
            self.tmux("send-keys", "-t", f"viewers:v{i}", "q", check=False)
        deadline = time.time() + 10
        while self.pids() and time.time() < deadline:
            time.sleep(0.2)
        self.tmux("kill-server", check=False)
        if self.socket_path:
            Path(self.socket_path).unlink(missing_ok=True)
        self.server_pid = None


# --------------------------------------------------------------------------- the run


def steps_between(events_path: Path, start: float, end: float) -> tuple[float, float, int]:
    """Wall ms/iter and median step ms of the `step` events logged in [start, end]."""
    steps = []
    for line in events_path.read_text().splitlines():
        if '"type":"step"' not in line:
            continue
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if start <= e["time"] <= end:
            steps.append(e)
    if len(steps) < 3:
        return float("nan"), float("nan"), len(steps)
    wall = (steps[-1]["time"] - steps[0]["time"]) * 1000 / (steps[-1]["iter"] - steps[0]["iter"])
    return wall, statistics.median(e["ms"] for e in steps[1:]), len(steps)


def wait_for_steps(events_path: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if events_path.exists() and '"type":"step"' in events_path.read_text():
            return
        time.sleep(1)
    raise SystemExit(f"no step in {events_path} after {timeout:.0f} s")


def measure(phase: Phase, active: Viewers | None, every: list[Viewers], run_pid: int, seconds: float) -> None:
    pids = active.pids() if active else []
    others = [p for v in every for p in v.pids() if p not in pids]  # stopped, or not started

    def sample() -> dict[str, float]:
        return {"run": cpu_seconds(run_pid),
                "viewers": sum(cpu_seconds(p) for p in pids),
                "idle viewers": sum(cpu_seconds(p) for p in others),
                "tmux": sum(cpu_seconds(v.server_pid) for v in every if v.server_pid),
                "busy": busy_seconds(),
                "switches": sum(context_switches(p) for p in pids)}

    before = sample()
    phase.start = time.time()
    time.sleep(seconds)
    phase.end = time.time()
    after = sample()
    d = {k: after[k] - before[k] for k in after}
    phase.switches = d.pop("switches")
    d["other"] = d.pop("busy") - d["run"] - d["viewers"] - d["idle viewers"] - d["tmux"]
    phase.cpu = d


def shim(tree: Path, into: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes `gpt2_cockpit` the package in `tree`."""
    pkg = into / "gpt2_cockpit"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for part in ("cli", "engine", "tui", "presets"):
        if not (tree / part).is_dir():
            raise SystemExit(f"--baseline {tree}: no {part}/ there (give a checkout's root)")
        (pkg / part).symlink_to((tree / part).resolve())
    return into


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--viewers", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8, help="viewer phases per cockpit (each between two without)")
    p.add_argument("--phase", type=float, default=20, help="seconds measured per phase")
    p.add_argument("--settle", type=float, default=3, help="seconds before measuring a phase")
    p.add_argument("--startup", type=float, default=25, help="seconds for the viewers to start (freeze mode)")
    p.add_argument("--mode", choices=("freeze", "restart"), default="freeze")
    p.add_argument("--size", default="120x40", help="the viewers' terminal size, COLSxROWS")
    p.add_argument("--log-interval", type=int, default=None, help="train.log_interval (default: the preset's)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout's root: its cockpits alternate with this one's in the viewer phases")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--module", default="gpt2_cockpit.cli")
    p.add_argument("--max-other", type=float, default=10.0,
                   help="%% of one core other work may take in a phase that counts (a shared box's noise)")
    p.add_argument("--keep", action="store_true", help="keep the temporary GPT2_COCKPIT_HOME")
    args = p.parse_args()
    if not shutil.which("tmux"):
        raise SystemExit("needs tmux (each viewer runs in a tmux window)")
    size = tuple(int(v) for v in args.size.lower().split("x"))

    home = Path(tempfile.mkdtemp(prefix="cockpit-viewers-"))
    env = dict(os.environ, GPT2_COCKPIT_HOME=str(home))
    env.pop("TMUX", None)
    cli = [args.python, "-m", args.module]
    sets = ["train.max_iters=100000000", "train.eval_interval=0", "train.checkpoint_interval=0",
            "train.sample_interval=0"]
    if args.log_interval:
        sets.append(f"train.log_interval={args.log_interval}")
    cmd = cli + ["train", "cpu-tiny", "--detach", "--name", RUN]
    for s in sets:
        cmd += ["--set", s]
    events = home / "runs" / RUN / "events.jsonl"
    cockpits = {"this": Viewers("this", args.viewers, cli + ["attach", RUN], env, size)}
    if args.baseline:
        path = os.pathsep.join(filter(None, [str(shim(args.baseline, home / "baseline")), env.get("PYTHONPATH")]))
        cockpits["baseline"] = Viewers("baseline", args.viewers, cli + ["attach", RUN], dict(env, PYTHONPATH=path),
                                       size)
    labels = list(cockpits)
    n_phases = 2 * args.rounds * len(labels) + 1
    phases = [Phase(args.viewers, labels[(i // 2) % len(labels)]) if i % 2 else Phase(0) for i in range(n_phases)]
    every = list(cockpits.values())
    run_pid = 0
    try:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wait_for_steps(events, timeout=300)
        run_pid = int((home / "runs" / RUN / "pid").read_text().split()[0])
        print(f"run {RUN} (pid {run_pid}) in {home}; {len(phases)} phases of {args.phase:.0f} s after "
              f"{args.settle:.0f} s settling; {args.viewers} viewers per cockpit at {size[0]}x{size[1]}, "
              f"{args.mode} mode", flush=True)
        if args.mode == "freeze":
            for v in every:
                v.start()
            time.sleep(args.startup)
            shown = {v.label: v.rendering() for v in every}
            for v in every:
                v.freeze(True)
        for n, ph in enumerate(phases, 1):
            active = cockpits.get(ph.label) if ph.viewers else None
            if args.mode == "freeze":
                for v in every:
                    if v.frozen != (v is not active):
                        v.freeze(v is not active)
            else:
                for v in every:
                    if v is not active:
                        v.stop()
                if active is not None:
                    active.start()
            time.sleep(args.settle)
            if active is not None:
                ph.rendering = active.rendering() if args.mode == "restart" else min(shown[active.label],
                                                                                    active.running())
            measure(ph, active, every, run_pid, args.phase)
            if active is not None and args.mode == "freeze":
                ph.rendering = min(ph.rendering, active.running())
            ph.wall_ms, ph.step_ms, ph.steps = steps_between(events, ph.start, ph.end)
            report_phase(n, ph)
    finally:
        for v in every:
            v.stop()
        if run_pid:
            subprocess.run(cli + ["stop", RUN], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=180, check=False)
            deadline = time.time() + 60
            while Path(f"/proc/{run_pid}").exists() and time.time() < deadline:
                time.sleep(0.5)
            if Path(f"/proc/{run_pid}").exists():
                os.kill(run_pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    summarize(phases, args.viewers, args.max_other / 100)
    return 0


HEADER = (f"{'phase':>5} {'viewers':>12} {'shown':>5} {'ms/iter':>8} {'step ms':>8} {'steps':>5} "
          f"{'run cpu':>8} {'viewer cpu':>10} {'wakeups/s':>9} {'tmux cpu':>8} {'stopped':>8} {'other cpu':>9}")


def report_phase(n: int, ph: Phase) -> None:
    if n == 1:
        print(HEADER)
    secs = ph.seconds
    each = f"{100 * ph.cpu['viewers'] / secs / ph.viewers:9.2f}%" if ph.viewers else f"{'-':>10}"
    wakeups = f"{ph.switches / secs / ph.viewers:9.1f}" if ph.viewers else f"{'-':>9}"
    shown = str(ph.rendering) if ph.viewers else "-"
    who = f"{ph.viewers} {ph.label}" if ph.viewers and ph.label != "this" else str(ph.viewers)
    print(f"{n:>5} {who:>12} {shown:>5} {ph.wall_ms:8.2f} {ph.step_ms:8.2f} {ph.steps:>5} "
          f"{100 * ph.cpu['run'] / secs:7.1f}% {each} {wakeups} {100 * ph.cpu['tmux'] / secs:7.2f}% "
          f"{100 * ph.cpu['idle viewers'] / secs:7.2f}% {100 * ph.cpu['other'] / secs:8.1f}%", flush=True)


def summarize(phases: list[Phase], n_viewers: int, max_other: float) -> None:
    """The cost of each cockpit's viewers (this tree's, the baseline's) against no viewer, over
    the phases other work on the box left alone."""
    done = [p for p in phases if p.usable(max_other)]
    base = [p.wall_ms for p in done if not p.viewers]
    if not base:
        print("not enough phases measured")
        return
    if len(done) < len(phases):
        skipped = [str(phases.index(p) + 1) for p in phases if p not in done]
        print(f"\nleft out: phase {', '.join(skipped)} (under 3 steps, or other work took over "
              f"{100 * max_other:.0f}% of a core)")
    cores = os.cpu_count() or 1
    mean0 = statistics.mean(base)
    print("\n(viewer cpu: each viewer's share of one core; tmux, stopped (the viewers not in the phase) and "
          "other cpu: of one core, all together)")
    print(f"{'0 viewers':<22} {mean0:8.2f} ms/iter (mean of {len(base)} phases)")
    labels = list(dict.fromkeys(p.label for p in done if p.viewers))
    for label in labels:
        mine = [p for p in done if p.viewers and p.label == label]
        name = f"{n_viewers} viewers" + (f" ({label})" if len(labels) > 1 else "")
        loaded = statistics.mean(p.wall_ms for p in mine)
        paired = []
        for p in mine:
            k = phases.index(p)
            a, b = phases[k - 1], phases[k + 1] if k + 1 < len(phases) else phases[k - 1]
            if a in done and b in done:
                paired.append(100 * (p.wall_ms / ((a.wall_ms + b.wall_ms) / 2) - 1))
        share = statistics.mean(p.cpu["viewers"] / p.seconds / p.viewers for p in mine)
        tmux = statistics.mean(p.cpu["tmux"] / p.seconds for p in mine)
        wakeups = statistics.mean(p.switches / p.seconds / p.viewers for p in mine)
        print(f"{name:<22} {loaded:8.2f} ms/iter (mean of {len(mine)} phases): cost {100 * (loaded / mean0 - 1):+.1f}% "
              f"throughput (goal: under 2%)")
        if paired:
            spread = f" ± {statistics.stdev(paired) / len(paired) ** 0.5:.1f} (standard error)" if len(paired) > 1 else ""
            print(f"{'':<22} each phase against its neighbours: mean {statistics.mean(paired):+.1f}%{spread}, "
                  f"median {statistics.median(paired):+.1f}% ({', '.join(f'{c:+.1f}' for c in paired)})")
        print(f"{'':<22} each viewer {100 * share:.2f}% of a core, {wakeups:.0f} wakeups/s; all {n_viewers}: "
              f"{100 * n_viewers * share / cores:.2f}% of this box's {cores} cores (+{100 * tmux / cores:.2f}% tmux)")


if __name__ == "__main__":
    sys.exit(main())
