"""Deciding between runs: engine/runs/metrics.py reads a run's figures from its event log, and the
`compare`, `metrics` and `plot` commands print or draw them. The logs here are written by hand,
line by line with chosen timestamps, so wall time and restarts are exact and the tests fast;
one end-to-end test compares two real tiny runs through the command line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import CLI, cli_env
from gpt2_cockpit.cli.main import main
from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets
from gpt2_cockpit.engine.runs import metrics
from gpt2_cockpit.engine.runs.rundir import create, resolve

T0 = 1_700_000_000.0


def ev(type, t, **fields):
    return {"type": type, "time": T0 + t, **fields}


def step(t, it, loss, tokens_per_sec=1000.0, **extra):
    return ev("step", t, iter=it, loss=loss, lr=1e-3, tokens=it * 128, tokens_per_sec=tokens_per_sec,
              ms=12.5, mfu=None, micro_batch=4, grad_accum=2, grad_norm=0.9, **extra)


def make_run(name, events, *overrides):
    """A run directory (cpu-tiny plus overrides) whose log holds exactly `events`; no process, so
    a run whose log ends without a final state reads as crashed."""
    run = create(presets.load("cpu-tiny", list(overrides)), name)
    with open(run.events_path, "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    return run


def start(t, resumed_from=None, lr=1e-3):
    return [ev("state", t, state="preparing", reason=""),
            ev("run", t + 1, name="r", preset="cpu-tiny", engine="pretrain",
               config={"train": {"learning_rate": lr}}, device="cpu", world_size=1, resumed_from=resumed_from),
            ev("state", t + 2, state="running", reason="")]


def finished_run(name, val_at_20=2.5, lr="1e-3", *overrides):
    """Active 102-110 s, paused 110-150 s, active 150-162 s: 20 s of wall time."""
    events = start(100) + [
        ev("eval", 103, iter=0, train_loss=4.1, val_loss=4.0),
        step(104, 10, 3.0, tokens_per_sec=100.0),
        step(106, 20, 2.6, tokens_per_sec=900.0),
        ev("eval", 107, iter=20, train_loss=2.55, val_loss=val_at_20),
        ev("state", 110, state="paused", reason="paused by user"),
        ev("gpu", 130, index=0, util=0),
        ev("state", 150, state="running", reason="resumed by user"),
        step(152, 30, 2.4, tokens_per_sec=200.0),
        step(155, 40, 2.3, tokens_per_sec=300.0),
        ev("state", 156, state="stopping", reason="max_iters reached"),
        ev("eval", 158, iter=40, train_loss=2.3, val_loss=2.7),
        ev("checkpoint", 160, iter=40, path="checkpoints/x.pt", best=False),
        ev("state", 162, state="done", reason="max_iters reached"),
    ]
    return make_run(name, events, "train.max_iters=40", f"train.learning_rate={lr}", *overrides)


# --------------------------------------------------------------------------- engine/runs/metrics.py


def test_stats_best_val_wall_time_and_speed():
    m = metrics.load(finished_run("a"))
    s = m.stats
    assert (s.name, s.preset, s.engine, s.state) == ("a", "cpu-tiny", "pretrain", "done")
    assert (s.iter, s.max_iters, s.tokens, s.last_train_loss) == (40, 40, 40 * 128, 2.3)
    assert (s.best_val_loss, s.best_val_iter) == (2.5, 20)  # not the later, worse 2.7
    assert s.tokens_per_sec == 250.0  # the median of 100, 900, 200, 300: one slow or fast step moves it little
    assert s.wall_seconds == 20.0  # (110 - 102) + (162 - 150): the 40 s pause is not running time
    assert s.config["train"]["learning_rate"] == 1e-3 and s.config["name"] == "cpu-tiny"
    assert [r.iter for r in m.steps] == [10, 20, 30, 40] and m.steps[0].grad_norm == 0.9
    assert [r.elapsed for r in m.steps] == [2.0, 4.0, 10.0, 13.0]  # active seconds, the pause left out
    assert [(r.iter, r.val_loss, r.tokens) for r in m.evals] == [(0, 4.0, 0), (20, 2.5, 2560), (40, 2.7, 5120)]


def test_a_run_that_died_is_crashed_and_its_time_ends_at_its_last_event():
    run = make_run("c", start(0) + [step(5, 10, 3.0), ev("gpu", 9, index=0)])
    s = metrics.load(run).stats
    assert s.state == "crashed"
    assert s.wall_seconds == 3.0  # 2 .. 5: the GPU reading at 9 came from the heartbeat thread
    assert metrics.wall_seconds([]) == 0.0
    # while the process is alive, an open span runs to `now`
    assert metrics.wall_seconds(read(run), now=T0 + 12) == 10.0


def read(run):
    return [json.loads(line) for line in run.events_path.read_text().splitlines()]


def test_a_restart_supersedes_the_tail_it_trains_again():
    first = start(100) + [step(104, 10, 3.0), step(106, 20, 2.8), ev("eval", 107, iter=20, train_loss=2.8, val_loss=2.9),
                          step(108, 30, 2.6), step(110, 40, 2.5), ev("eval", 111, iter=40, train_loss=2.4, val_loss=1.0),
                          ev("gpu", 140, index=0)]  # then the process died
    second = start(500, resumed_from=20) + [step(505, 30, 2.7), step(507, 40, 2.6),
                                            ev("eval", 508, iter=40, train_loss=2.6, val_loss=2.65),
                                            ev("state", 510, state="done", reason="max_iters reached")]
    m = metrics.load(make_run("r", first + second, "train.max_iters=40"))
    assert [(r.iter, r.loss) for r in m.steps] == [(10, 3.0), (20, 2.8), (30, 2.7), (40, 2.6)]
    assert [(r.iter, r.val_loss) for r in m.evals] == [(20, 2.9), (40, 2.65)]
    assert (m.stats.best_val_loss, m.stats.best_val_iter) == (2.65, 40)  # the superseded 1.0 is gone
    assert (m.stats.state, m.stats.iter, m.stats.last_train_loss) == ("done", 40, 2.6)
    # both processes' running time, and not the 360 s between the crash and the restart
    assert m.stats.wall_seconds == (111 - 102) + (510 - 502)  # the first process's last own event: 111
    # restarted and stopped before its first step: the `run` event alone drops the tail
    stopped_early = start(500, resumed_from=20) + [ev("state", 504, state="stopped", reason="SIGTERM")]
    m = metrics.load(make_run("r2", first + stopped_early, "train.max_iters=40"))
    assert [r.iter for r in m.steps] == [10, 20] and [r.iter for r in m.evals] == [20]
    assert (m.stats.iter, m.stats.tokens, m.stats.best_val_loss, m.stats.state) == (20, 2560, 2.9, "stopped")


def test_a_step_that_goes_back_rewrites_the_tail_as_the_cockpit_does():
    h = metrics.history([step(1, 1, 3.0), step(2, 2, 2.9), step(3, 3, 2.8), step(4, 2, 2.95), step(5, 3, 2.85)])
    assert [(r.iter, r.loss) for r in h.steps] == [(1, 3.0), (2, 2.95), (3, 2.85)]


def test_older_logs_without_grad_norm_and_with_nan_loss_read_as_none():
    e = step(1, 1, None)
    del e["grad_norm"]
    (row,) = metrics.history([e]).steps
    assert row.grad_norm is None and row.loss is None and row.tokens == 128


def test_config_diff_names_the_keys_that_differ():
    a = cfgmod.to_raw(presets.load("cpu-tiny"))
    b = cfgmod.to_raw(presets.load("cpu-tiny", ["train.learning_rate=3e-3", "train.micro_batch=8"]))
    assert metrics.config_diff({"a": a, "b": b}) == {
        "train.micro_batch": {"a": a["train"]["micro_batch"], "b": 8},
        "train.learning_rate": {"a": a["train"]["learning_rate"], "b": 3e-3},
    }
    assert metrics.config_diff({"a": a, "a2": dict(a)}) == {}
    # another preset: its name shows, its prose does not; a key one engine lacks differs as None
    c = cfgmod.to_raw(presets.load("gpt2-finetune"))
    diff = metrics.config_diff({"a": a, "c": c})
    assert diff["name"] == {"a": "cpu-tiny", "c": "gpt2-finetune"}
    assert "description" not in diff
    assert diff["model.pretrained"] == {"a": None, "c": "gpt2"}
    assert diff["model.n_layer"] == {"a": a["model"]["n_layer"], "c": None}


# --------------------------------------------------------------------------- the commands


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_table_names_the_best_run_and_the_differing_keys(capsys):
    finished_run("lr-low", 2.5, "1e-3")
    finished_run("lr-high", 2.2, "3e-3")
    code, out, err = cli(capsys, "compare", "lr-low", "lr-high")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "STATE", "ITERS", "TOKENS", "BEST", "VAL", "TRAIN", "LOSS", "TOK/S", "WALL"]
    assert lines[1].split() == ["lr-low", "done", "40/40", "5.12k", "2.5000", "@20", "2.3000", "250", "20s"]
    assert lines[2].split()[:6] == ["lr-high", "done", "40/40", "5.12k", "2.2000", "@20"]
    assert "best val loss: lr-high (2.2000 at iter 20)" in lines
    keys = lines[lines.index("config keys that differ:") + 1:]
    assert keys[0].split() == ["KEY", "lr-low", "lr-high"]
    assert [k.split() for k in keys[1:]] == [["train.learning_rate", "0.001", "0.003"]]


def test_compare_json(capsys):
    finished_run("a", 2.5, "1e-3")
    finished_run("b", 2.6, "1e-3", "train.seed=7")
    code, out, _ = cli(capsys, "compare", "a", "b", "--json")
    data = json.loads(out)
    assert code == 0 and data["best"] == "a"
    assert data["differ"] == {"train.seed": {"a": 1337, "b": 7}}
    assert [r["name"] for r in data["runs"]] == ["a", "b"]
    assert data["runs"][1]["best_val_loss"] == 2.6 and data["runs"][1]["wall_seconds"] == 20.0
    assert data["runs"][0]["tokens_per_sec"] == 250.0 and data["runs"][0]["config"]["train"]["seed"] == 1337


@pytest.mark.parametrize("args, message", [
    (("compare", "a"), "gpt2-cockpit: compare needs at least two runs (see 'gpt2-cockpit runs')\n"),
    (("compare", "a", "a"), "gpt2-cockpit: run a is named twice; give different runs\n"),
    (("compare", "a", "nope"), "gpt2-cockpit: unknown run 'nope' (see 'gpt2-cockpit runs')\n"),
    (("metrics", "nope"), "gpt2-cockpit: unknown run 'nope' (see 'gpt2-cockpit runs')\n"),
])
def test_compare_and_metrics_mistakes_are_one_sentence(capsys, args, message):
    finished_run("a")
    assert cli(capsys, *args) == (2, "", message)


def test_compare_the_same_run_by_name_and_by_path_is_refused(capsys):
    run = finished_run("a")
    code, _, err = cli(capsys, "compare", "a", str(run.path))
    assert code == 2 and "named twice" in err


def test_metrics_csv_is_one_table_with_a_kind_column(capsys):
    finished_run("a")
    code, out, _ = cli(capsys, "metrics", "a", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert [r["kind"] for r in rows] == ["step"] * 4 + ["eval"] * 3
    first = rows[0]
    assert (first["iter"], float(first["loss"]), first["tokens"], first["grad_norm"], first["mfu"]) == ("10", 3.0, "1280", "0.9", "")
    assert float(first["time"]) == T0 + 104 and float(first["elapsed"]) == 2.0
    evals = rows[4:]
    assert [(r["iter"], r["val_loss"], r["loss"]) for r in evals] == [("0", "4.0", ""), ("20", "2.5", ""), ("40", "2.7", "")]
    assert set(rows[0]) >= {"lr", "ms", "tokens_per_sec", "micro_batch", "grad_accum", "train_loss", "val_ppl"}


def test_metrics_json_and_table(capsys):
    finished_run("a")
    code, out, _ = cli(capsys, "metrics", "a", "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"steps", "evals", "hellaswag"} and data["hellaswag"] == []
    assert [s["iter"] for s in data["steps"]] == [10, 20, 30, 40]
    assert data["steps"][-1] == {"iter": 40, "tokens": 5120, "loss": 2.3, "lr": 1e-3, "grad_norm": 0.9, "ms": 12.5,
                                 "tokens_per_sec": 300.0, "mfu": None, "micro_batch": 4, "grad_accum": 2,
                                 "time": T0 + 155, "elapsed": 13.0}
    assert data["evals"][1] == {"iter": 20, "train_loss": 2.55, "val_loss": 2.5, "val_ppl": None, "tokens": 2560,
                                "time": T0 + 107, "elapsed": 5.0}
    code, out, _ = cli(capsys, "metrics", "a")
    assert code == 0 and "4 step rows, 3 evals" in out
    assert ["40", "5.12k", "2.3000", "1.00e-03", "0.900", "12", "ms", "300", "N/A", "4×2", "13s"] in [
        line.split() for line in out.splitlines()]
    assert ["20", "2.5500", "2.5000", "5s"] in [line.split() for line in out.splitlines()]


def test_compare_and_metrics_load_neither_torch_nor_numpy_nor_matplotlib(cockpit_home):
    finished_run("a")
    finished_run("b")
    code = ("import sys, contextlib, io\n"
            "from gpt2_cockpit.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['compare', 'a', 'b']) == 0 and main(['metrics', 'a', '--csv']) == 0\n"
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'textual') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=cli_env(cockpit_home))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "[]\n", "")


# --------------------------------------------------------------------------- plot


def test_plot_writes_png_and_svg_with_every_run(capsys, tmp_path):
    finished_run("lr-low", 2.5, "1e-3")
    finished_run("lr-high", 2.2, "3e-3")
    png, svg = tmp_path / "loss.png", tmp_path / "loss.svg"
    assert cli(capsys, "plot", "lr-low", "lr-high", "--to", str(png))[0] == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 10_000
    code, out, _ = cli(capsys, "plot", "lr-low", "lr-high", "--to", str(svg), "--x", "tokens", "--log")
    assert code == 0 and out == f"wrote {svg} (lr-low, lr-high)\n"
    root = ET.parse(svg).getroot()
    texts = " ".join("".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "lr-low train" in texts and "lr-high val" in texts and "tokens" in texts
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_plot_by_time_leaves_the_pause_out(tmp_path):
    m = metrics.load(finished_run("a"))
    from gpt2_cockpit.cli.compare import _series

    xs, _ = _series(m.steps, "loss", "time", 1.0)
    assert xs == [2.0, 4.0, 10.0, 13.0]


def test_plot_mistakes_are_one_sentence_and_leave_no_file(capsys, tmp_path, monkeypatch):
    finished_run("a")
    code, out, err = cli(capsys, "plot", "a", "--to", str(tmp_path / "loss.pdf"))
    assert (code, out, err) == (2, "", f"gpt2-cockpit: --to {tmp_path / 'loss.pdf'}: the file must end in .png or .svg\n")
    code, _, err = cli(capsys, "plot", "a", "--to", str(tmp_path / "missing" / "loss.png"))
    assert code == 2 and "does not exist" in err
    make_run("empty", [])
    code, _, err = cli(capsys, "plot", "empty", "--to", str(tmp_path / "loss.png"))
    assert (code, err) == (2, "gpt2-cockpit: nothing to plot: empty logged no loss yet\n")
    # the disk fails while writing: no image and no half-written temp file
    import os

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    code, _, err = cli(capsys, "plot", "a", "--to", str(tmp_path / "loss.png"))
    assert (code, err) == (2, f"gpt2-cockpit: cannot write {tmp_path / 'loss.png'}: No space left on device\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_plot_without_matplotlib_says_how_to_install_it(capsys, tmp_path, monkeypatch):
    finished_run("a")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, _, err = cli(capsys, "plot", "a", "--to", str(tmp_path / "loss.png"))
    assert (code, err) == (2, 'gpt2-cockpit: plot needs matplotlib: pip install "gpt2-cockpit[plot]"\n')
    assert not (tmp_path / "loss.png").exists()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_two_real_runs_compared_through_the_command_line(corpus, cockpit_home):
    from helpers import run_inprocess

    for name, lr in (("lr-1e-3", 1e-3), ("lr-3e-3", 3e-3)):
        _, code, _ = run_inprocess(corpus, name, max_iters=10, learning_rate=lr)
        assert code == 0

    def run_cli(*args):
        proc = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120, env=cli_env(cockpit_home))
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return proc.stdout

    data = json.loads(run_cli("compare", "lr-1e-3", "lr-3e-3", "--json"))
    assert data["differ"] == {"train.learning_rate": {"lr-1e-3": 1e-3, "lr-3e-3": 3e-3}}
    tokens_per_step = 4 * 2 * 16  # tiny_overrides: micro-batch 4 × 2 accumulation × context 16
    for r in data["runs"]:
        assert (r["state"], r["iter"], r["max_iters"], r["tokens"]) == ("done", 10, 10, 10 * tokens_per_step)
        assert r["best_val_iter"] == 10 and r["best_val_loss"] < 4.0
        assert r["wall_seconds"] > 0 and r["tokens_per_sec"] > 0
    by_val = min(data["runs"], key=lambda r: r["best_val_loss"])
    assert data["best"] == by_val["name"]
    table = run_cli("compare", "lr-1e-3", "lr-3e-3")
    assert f"best val loss: {by_val['name']} ({by_val['best_val_loss']:.4f} at iter 10)" in table
    assert "train.learning_rate  0.001    0.003" in table
    # the engine's own log reads back the same figures
    assert metrics.load(resolve("lr-1e-3")).stats.tokens == 10 * tokens_per_step


# --------------------------------------------------------------------------- active wall time, one rule
#
# metrics.ActiveClock is the one clock: `compare`, `metrics`, `plot` (wall_seconds, running_spans)
# and the cockpit (RunModel feeds it as it reads, its fast reader included) count by it. Each case
# is checked on both sides.

CLOCK_CASES = {
    # name: (events, active seconds)
    "pause left out": ([ev("state", 0, state="preparing"), ev("state", 2, state="running"), step(4, 10, 3.0),
                        ev("state", 10, state="paused"), ev("state", 50, state="running"), step(55, 20, 2.0),
                        ev("state", 56, state="stopping"), ev("state", 60, state="done")], 8 + 10),
    # the case: the loop died at 16 s, its heartbeat went on logging GPU readings for 30 s
    "died, heartbeat went on": ([ev("state", 0, state="running"), step(8, 10, 3.0), step(16, 20, 2.9)]
                                + [ev("gpu", 16 + k, index=0, util=0) for k in range(1, 31)], 16),
    "no state events": ([step(100, 10, 3.0), step(105, 20, 2.9), step(110, 30, 2.8)], 10),
    "died, restarted": ([ev("run", 0), ev("state", 0, state="preparing"), ev("state", 1, state="running"),
                         step(5, 10, 3.0), ev("eval", 6, iter=10, train_loss=3.0, val_loss=3.1),
                         ev("gpu", 30, index=0),
                         ev("run", 100, resumed_from=10), ev("state", 100, state="preparing"),
                         ev("state", 104, state="running"), step(110, 20, 2.5), ev("state", 111, state="done")],
                        (6 - 1) + (111 - 104)),
    "died while preparing again": ([ev("state", 0, state="running"), step(3, 10, 3.0),
                                    ev("state", 50, state="preparing"), ev("state", 52, state="running"),
                                    step(54, 20, 2.0), ev("state", 55, state="done")], 3 + 3),
}


@pytest.mark.parametrize("case", sorted(CLOCK_CASES))
def test_compare_and_the_cockpit_count_the_same_active_time(case, tmp_path):
    from gpt2_cockpit.engine.runs.events import EventWriter
    from gpt2_cockpit.tui.feed import LogReader
    from gpt2_cockpit.tui.model import RunModel

    events, expected = CLOCK_CASES[case]
    assert metrics.wall_seconds(events) == expected
    spans = metrics.running_spans(events)
    assert sum(b - a for a, b in spans) == pytest.approx(expected)
    slow = RunModel("r")
    slow.ingest(events)
    assert slow.clock.seconds() == pytest.approx(expected)
    log = tmp_path / "events.jsonl"  # the cockpit's fast reader: raw step lines, GPU lines skipped
    w = EventWriter(log)
    for e in events:
        w.emit(e["type"], **{k: v for k, v in e.items() if k not in ("type", "time")})
    w.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for line, e in zip(lines, events):
        line["time"] = e["time"]
    log.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
    fast = RunModel("r")
    fast.ingest(LogReader(log).poll())
    assert fast.clock == slow.clock
    steps = [e for e in events if e["type"] == "step"]
    assert slow.steps.elapsed == pytest.approx([r.elapsed for r in metrics.history(events).steps])
    assert len(slow.steps.elapsed) == len(steps)


def test_the_clock_runs_to_now_while_the_run_is_live():
    clock = metrics.ActiveClock()
    for e in (ev("state", 0, state="running"), step(5, 10, 3.0), ev("gpu", 9, index=0)):
        clock.feed(e)
    assert clock.seconds() == 5 and clock.seconds(now=T0 + 12) == 12 and clock.at(T0 + 7) == 7
    assert clock.all_spans() == [(T0, T0 + 5)] and clock.all_spans(now=T0 + 12) == [(T0, T0 + 12)]
    clock.feed(ev("state", 20, state="paused"))
    assert clock.seconds(now=T0 + 30) == 20 and clock.spans == [(T0, T0 + 20)] and clock.since is None


def test_ema_and_tokens_at_are_the_cockpits_too():
    """One smoothing and one tokens rule for `compare`/`plot` and the cockpit (issue #19)."""
    from gpt2_cockpit.tui.series import StepSeries

    values = [3.0, 2.5, 2.7, 2.2, 2.4, 2.0]
    assert metrics.ema(values, 0.8, [1] * 6) == pytest.approx(metrics.ema(values, 0.8))
    # a bucket of two steps decays as two steps: the same as the two steps' mean fed twice
    assert metrics.ema([3.0, 2.0], 0.8, [1, 2])[-1] == pytest.approx(metrics.ema([3.0, 2.0, 2.0], 0.8)[-1])
    assert metrics.tokens_at([], [], 5) is None
    assert metrics.tokens_at([10, 20], [1000, 2000], 15) == 1500
    assert metrics.tokens_at([10, 20], [1000, 2000], 5) == 500  # from 0 at iteration 0
    assert metrics.tokens_at([10, 20], [1000, 3000], 30) == 5000  # past the end: the last pace
    s = StepSeries()
    for it, tokens in ((10, 1000), (20, 3000)):
        s.append({"iter": it, "loss": 2.0, "tokens": tokens, "time": 1.0 * it})
    assert [s.tokens_at(it) for it in (5, 15, 30)] == [metrics.tokens_at([10, 20], [1000, 3000], it)
                                                       for it in (5, 15, 30)]


def test_compare_reads_a_long_log_without_decoding_its_steps():
    """`compare`'s figures (load(every_step=False)) equal those of every step decoded, while of each
    run of steps between two other events only the first and the last RECENT_STEPS are decoded."""
    events = start(100)
    t = 102.0
    for it in range(1, 3001):
        t += 0.5
        events.append(step(t, it, 3.0 - it / 2000, tokens_per_sec=1000.0 + it % 7))
        if it % 500 == 0:
            events.append(ev("eval", t + 0.1, iter=it, train_loss=2.0, val_loss=2.1 - it / 10_000))
        if it == 1200:
            events += [ev("state", t + 0.2, state="paused", reason=""), ev("set", t + 0.3, key="train.learning_rate",
                       old=1e-3, new=5e-4), ev("state", t + 40, state="running", reason="")]
            t += 40
    events.append(ev("state", t + 1, state="done", reason="max_iters reached"))
    run = make_run("long", events, "train.max_iters=3000")
    every, few = metrics.load(run), metrics.load(run, every_step=False)
    assert few.stats == every.stats and few.evals == every.evals
    assert every.stats.iter == 3000 and every.stats.changes[0].iter == 1200
    assert len(every.steps) == 3000 and len(few.steps) <= 8 * (metrics.RECENT_STEPS + 1)
