"""The cockpit's run model and series maths, without an app: ingest, ETA, smoothing, downsampling."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gpt2_cockpit.engine.fmt import NA, fmt_count, fmt_duration, fmt_mem, fmt_mfu
from gpt2_cockpit.engine.runs.events import EventWriter, read_all
from gpt2_cockpit.engine.runs.metrics import ema
from gpt2_cockpit.tui.feed import GPU_LINES_KEPT, EventsArrived, LogReader, StepLines, replay
from gpt2_cockpit.tui.model import GPU_HISTORY, RunModel, downsample, sparkline
from gpt2_cockpit.tui.plot import log_ticks, nice_ticks
from gpt2_cockpit.tui.series import StepSeries


def step(it, loss=2.0, tokens=None, ms=50.0, **kw):
    return {"type": "step", "time": kw.pop("time", time.time()), "iter": it, "loss": loss, "lr": 1e-3,
            "tokens": tokens if tokens is not None else it * 100, "tokens_per_sec": 2000.0, "ms": ms,
            "mfu": None, "micro_batch": 8, "grad_accum": 2, **kw}


def test_ema_smooths_with_bias_correction_and_zero_is_raw():
    values = [4.0, 2.0, 2.0, 2.0]
    assert ema(values, 0.0) == values
    smoothed = ema(values, 0.9)
    assert smoothed[0] == pytest.approx(4.0)  # no pull towards zero at the start
    assert 2.0 < smoothed[-1] < 4.0 and smoothed == sorted(smoothed, reverse=True)


def test_downsample_bounds_points_keeps_ends_and_spikes():
    n = 20000
    xs = list(range(n))
    ys = [1.0] * n
    ys[12345] = 50.0  # a loss spike must survive the thinning
    ox, oy = downsample(xs, ys, 200)
    assert len(ox) <= 200
    assert ox[0] == 0 and ox[-1] == n - 1
    assert 50.0 in oy and ox == sorted(ox)
    assert downsample(xs[:10], ys[:10], 200) == (xs[:10], ys[:10])


def test_ingest_builds_history_status_and_log():
    m = RunModel("r", max_iters=1000)
    ch = m.ingest([
        {"type": "run", "time": 1.0, "name": "r", "preset": "cpu-tiny", "engine": "pretrain", "config": {},
         "device": "cpu", "world_size": 1, "resumed_from": None},
        {"type": "state", "time": 1.0, "state": "running", "reason": ""},
        step(10), step(20, loss=1.5),
        {"type": "eval", "time": 2.0, "iter": 20, "train_loss": 1.5, "val_loss": 1.7},
        {"type": "oom", "time": 2.0, "iter": 20, "micro_batch_before": 8, "micro_batch_after": 4, "grad_accum_after": 4},
        {"type": "checkpoint", "time": time.time(), "iter": 20, "path": "/x/run/checkpoints/ckpt.pt", "best": True},
        {"type": "anomaly", "time": 2.0, "iter": 21, "kind": "nonfinite_loss", "action": "skipped_step"},
        {"type": "set", "time": 2.0, "key": "train.max_iters", "old": 1000, "new": 3000},
        {"type": "error", "time": 2.0, "message": "disk full"},
        {"type": "mystery", "time": 2.0, "what": "ignored"},
    ])
    assert ch.plot and ch.status
    assert m.iters == [10, 20] and m.losses == [2.0, 1.5] and m.evals == [(20, 1.5, 1.7, None)]
    assert (m.micro_batch, m.grad_accum, m.max_iters) == (4, 4, 3000)
    rows = dict(m.status_rows())
    assert rows["state"] == "running" and rows["iter"].startswith("20/3000")
    assert "1.5000 val 1.7000" == rows["loss"] and rows["batch"].startswith("4×4")
    assert "MFU N/A" in rows["speed"] and rows["ckpt"].startswith("@20") and "best" in rows["ckpt"]
    text = "\n".join(e.text for e in ch.log)
    for needed in ("out of memory at iter 20: micro-batch 8 → 4, grad accum → 4", "checkpoints/ckpt.pt",
                   "anomaly at iter 21: nonfinite loss → step skipped", "train.max_iters: 1000 → 3000", "error: disk full",
                   "eval @20"):
        assert needed in text
    assert {e.severity for e in ch.log if e.kind in ("oom", "anomaly")} == {"warn"}


def test_eta_from_measured_step_times():
    m = RunModel("r", max_iters=1000)
    m.ingest([step(100, ms=40.0), step(200, ms=60.0), step(300, ms=50.0)])
    assert m.ms_per_iter() == 50.0
    assert m.eta_seconds() == pytest.approx(700 * 0.05)
    assert "35s" in dict(m.status_rows())["ETA"]
    assert RunModel("empty").eta_seconds() is None


def test_a_restart_from_an_earlier_checkpoint_rewrites_the_tail():
    m = RunModel("r")
    m.ingest([step(i * 10) for i in range(1, 31)])
    m.ingest([{"type": "eval", "time": 1, "iter": 250, "train_loss": 1, "val_loss": 1}])
    m.ingest([{"type": "run", "time": 2, "resumed_from": 200, "device": "cpu"}, step(210)])
    assert m.iters[-2:] == [200, 210] and len(m.iters) == 21 and m.evals == []


def test_tokens_at_interpolates_between_steps():
    m = RunModel("r")
    m.ingest([step(10, tokens=1000), step(20, tokens=2000)])
    assert m.tokens_at(15) == 1500 and m.tokens_at(0) == 0 and m.tokens_at(30) == 3000


def test_samples_and_sample_failures_come_from_events():
    m = RunModel("r")
    ch = m.ingest([{"type": "sample", "time": 1, "iter": 10, "prompt": "a", "text": "ab", "request_id": "req1"},
                   {"type": "sample", "time": 1, "iter": 500, "prompt": "", "text": "x", "request_id": None},
                   {"type": "error", "time": 1, "message": "sampling failed: out of memory", "request_id": "req2"},
                   {"type": "error", "time": 1, "message": "disk full"}])
    assert [s.iter for s in m.samples] == [10, 500] and [s.periodic for s in ch.samples] == [False, True]
    assert ch.sample_errors == [("req2", "sampling failed: out of memory")]
    assert [e.severity for e in ch.log] == ["error", "error"]


def test_only_state_events_say_the_state_changed():
    m = RunModel("r")
    assert not m.ingest([step(10), {"type": "set", "time": 1, "key": "train.learning_rate", "old": 1, "new": 2}]).state
    assert m.ingest([{"type": "state", "time": 1, "state": "paused", "reason": ""}]).state


def test_gpu_readings_keep_a_short_history_and_missing_figures_stay_none():
    m = RunModel("r")
    for u in range(100):
        m.ingest([{"type": "gpu", "time": 1, "index": 0, "name": "A100", "util": u, "mem_used": None,
                   "mem_total": None, "temp": None, "power": None}])
    assert len(m.gpu_util[0]) == 60 and m.gpus[0].util == 99
    assert fmt_mem(None, None) == NA


def test_crashed_when_the_process_died_without_a_final_state():
    m = RunModel("r")
    m.ingest([{"type": "state", "time": 1, "state": "running"}])
    assert m.display_state == "running"  # liveness not known yet: the log is trusted
    m.alive = True
    assert m.display_state == "running" and m.live
    m.alive = False
    assert m.display_state == "crashed" and not m.live
    m.ingest([{"type": "state", "time": 2, "state": "done"}])
    assert m.display_state == "done"


def test_formatting_says_na_for_what_was_not_reported():
    assert fmt_mfu(None) == NA and fmt_mfu(0.421) == "42.1%"
    assert fmt_count(None) == NA and fmt_count(12345) == "12.3k" and fmt_count(5.2e9) == "5.2G"
    assert fmt_duration(None) == NA and fmt_duration(3725) == "1h 02m"
    assert fmt_mem(10.5 * 1024**3, 12 * 1024**3) == "10.5/12.0 GiB"
    assert sparkline([0, 50, 100, None]) == "▁▅█ "


def test_nice_ticks_are_round_and_inside_the_range():
    assert nice_ticks(10, 2570, 6) == [500, 1000, 1500, 2000, 2500]
    assert nice_ticks(0, 1.3e6, 5) == [0, 500000, 1000000]


def test_log_ticks_are_round_values_inside_the_range():
    assert log_ticks(1.2, 4.5, 5) == [2, 3, 4]  # less than a decade: round linear steps
    assert log_ticks(0.05, 30, 9) == pytest.approx([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20])  # 1-2-5
    assert log_ticks(0.05, 30, 8) == pytest.approx([0.1, 1, 10])  # too many: decades
    assert log_ticks(1e-3, 1e3, 4) == pytest.approx([1e-3, 1e-1, 10, 1000])


def test_queued_event_batches_merge_instead_of_being_dropped():
    older = EventsArrived(Path("/r"), [{"type": "step", "iter": 1}], alive=True, replay=True)
    newer = EventsArrived(Path("/r"), [{"type": "step", "iter": 2}], alive=True, replay=False)
    assert older.can_replace(newer)  # Textual then drops `older` and delivers `newer`
    assert [e["iter"] for e in newer.events] == [1, 2] and newer.replay
    other_run = EventsArrived(Path("/other"), [], alive=True, replay=False)
    assert not newer.can_replace(other_run)


def test_a_long_history_draws_from_a_bounded_number_of_points():
    from gpt2_cockpit.tui.widgets.loss_plot import LossPane

    m = RunModel("long", max_iters=200_000)
    m.ingest([step(i * 10, loss=3.0 - i * 1e-4) for i in range(1, 20_001)])
    m.ingest([{"type": "eval", "time": 1, "iter": i * 250, "train_loss": 2.0, "val_loss": 2.1} for i in range(1, 801)])
    pane = LossPane(m)
    started = time.perf_counter()
    fig = pane.build_figure(max_points=2 * 120)
    assert time.perf_counter() - started < 1.0  # cheap enough for a few redraws a second (usually ~50 ms)
    train, val = fig.series
    assert len(train.xs) <= 240 and train.xs[0] == m.steps.iters[0] <= 10 * m.steps.width
    assert train.xs[-1] == 200_000
    assert len(val.xs) <= 240 and val.xs[-1] == 200_000


# --------------------------------------------------------------------------- bounded history, fast reading


def test_smoothing_does_not_drag_the_first_points_toward_zero():
    """Debiased EMA: without the correction the first smoothed point at weight 0.99 would be
    1% of the loss (0.04 for a loss of 4)."""
    from gpt2_cockpit.tui.widgets.loss_plot import LossPane

    for weight in (0.6, 0.9, 0.99):
        assert ema([4.0] * 50, weight) == pytest.approx([4.0] * 50)
        assert ema([4.0] * 50, weight, [1] * 50) == pytest.approx([4.0] * 50)
        assert ema([4.0] * 50, weight, [64] * 50) == pytest.approx([4.0] * 50)  # wide buckets too
    m = RunModel("r")
    m.ingest([step(i * 10, loss=4.0 - i * 0.01) for i in range(1, 200)])
    pane = LossPane(m)
    pane.set_reactive(LossPane.smoothing, 0.99)  # (not mounted: no watchers)
    train = pane.build_figure(max_points=400).series[0]
    assert train.ys[0] == pytest.approx(3.99) and min(train.ys[:20]) > 3.8


def test_ema_over_buckets_matches_ema_over_steps_for_single_step_buckets():
    values = [3.0, 2.5, 2.7, 2.2, 2.4, 2.0]
    assert ema(values, 0.8, [1] * 6) == pytest.approx(ema(values, 0.8))


def test_bounded_series_keeps_spikes_and_bounded_memory():
    s = StepSeries(max_buckets=64)
    for i in range(1, 10_001):
        s.append({"iter": i, "loss": 50.0 if i == 7777 else 2.0, "tokens": i * 10, "lr": 1e-3, "grad_norm": 0.5,
                  "time": 1000.0 + i})
    assert 32 <= len(s) <= 64 and s.steps == 10_000 and s.width == 256
    assert s.iters[-1] == 10_000 and s.iters == sorted(s.iters)
    k = s.index_of(7777)
    assert s.lo[k] == 2.0 and s.hi[k] == 50.0  # the spike survived every merge
    assert max(s.hi) == 50.0 and sum(s.count) == 10_000
    p = s.point(k)
    assert p.loss_mean == pytest.approx((2.0 * (p.steps - 1) + 50.0) / p.steps)
    assert s.tokens_at(5000) == pytest.approx(50_000, rel=0.05)
    s.truncate(5000)  # a restart from the checkpoint at 5000
    assert s.iters[-1] <= 5000 and sum(s.count) == s.steps and max(s.hi) == 2.0
    s.append({"iter": 5001, "loss": 1.0, "tokens": 50_010})
    assert s.iters[-1] == 5001 and s.last[-1] == 1.0


def test_the_raw_plot_of_a_long_run_shows_a_single_step_spike():
    from gpt2_cockpit.tui.widgets.loss_plot import LossPane

    m = RunModel("r")
    m.ingest([step(i, loss=99.0 if i == 123_457 else 2.0) for i in range(1, 200_001)])
    assert len(m.steps) <= 4096
    pane = LossPane(m)
    pane.set_reactive(LossPane.smoothing, 0.0)
    train = pane.build_figure(max_points=160).series[0]
    assert max(train.ys) == 99.0 and len(train.xs) <= 160


def write_log(path, events, spaced: bool = False):
    """The events as the EventWriter writes them; `spaced`: then rewritten as json.dumps writes by
    default (", " and ": " separators), as another tool might."""
    w = EventWriter(path)
    for e in events:
        w.emit(e.pop("type"), **e)
    w.close()
    if spaced:
        lines = path.read_text().splitlines()
        path.write_text("".join(json.dumps(json.loads(line)) + "\n" for line in lines))


def sample_history(n: int = 3000):
    """A run's log as the engine writes it: steps with every field, evals, checkpoints, GPU readings,
    a NaN step, a pause, a restart from an earlier checkpoint, an OOM split and a live `set`."""
    out = [{"type": "state", "state": "preparing"}, {"type": "run", "name": "r", "preset": "cpu-tiny",
            "engine": "pretrain", "config": {"train": {"max_iters": 5000}}, "device": "cuda:0", "world_size": 2,
            "resumed_from": None}, {"type": "state", "state": "running"}]
    for i in range(1, n + 1):
        loss = float("nan") if i == 1500 else 3.0 + 1 / i
        out.append({"type": "step", "iter": i, "loss": loss, "lr": 1e-3, "tokens": i * 512, "tokens_per_sec": 1e5,
                    "ms": 20.0 + i % 7, "mfu": None, "micro_batch": 8, "grad_accum": 2, "grad_norm": 0.4})
        if i % 100 == 0:
            out.append({"type": "eval", "iter": i, "train_loss": 3.0, "val_loss": 3.1 + 1 / i})
        if i % 10 == 0:
            out += [{"type": "gpu", "index": g, "name": "H100", "util": i % 100, "mem_used": 1, "mem_total": 2,
                     "temp": 60, "power": 500} for g in range(2)]
        if i == 700:
            out += [{"type": "state", "state": "paused", "reason": "by user"}, {"type": "state", "state": "running"}]
        if i == 2000:  # the process dies; a restart from the checkpoint at 1800
            out += [{"type": "state", "state": "preparing"},
                    {"type": "run", "name": "r", "preset": "cpu-tiny", "engine": "pretrain", "config": {},
                     "device": "cuda:0", "world_size": 2, "resumed_from": 1800},
                    {"type": "state", "state": "running"}]
        if i == 2500:
            out += [{"type": "oom", "iter": 2500, "micro_batch_before": 8, "micro_batch_after": 4, "grad_accum_after": 4},
                    {"type": "set", "key": "train.learning_rate", "old": 1e-3, "new": 5e-4},
                    {"type": "anomaly", "iter": 2500, "kind": "loss_spike", "action": "none", "value": 9.0,
                     "zscore": 7.5}]
        if i == 2000:
            break  # the steps after the restart start again at 1801
    for i in range(1801, n + 1):
        out.append({"type": "step", "iter": i, "loss": 2.0 + 1 / i, "lr": 5e-4, "tokens": i * 512,
                    "tokens_per_sec": 1e5, "ms": 25.0, "mfu": 0.4, "micro_batch": 4, "grad_accum": 4,
                    "grad_norm": 0.3})
        if i == 2500:
            out += [{"type": "oom", "iter": 2500, "micro_batch_before": 8, "micro_batch_after": 4, "grad_accum_after": 4},
                    {"type": "set", "key": "train.learning_rate", "old": 1e-3, "new": 5e-4},
                    {"type": "anomaly", "iter": 2500, "kind": "loss_spike", "action": "none", "value": 9.0,
                     "zscore": 7.5}]
    return out


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
@pytest.mark.parametrize("chunk_bytes", [64 << 20, 1 << 20, 5000])  # GPU lines: read as they come / looked up at the end
def test_the_fast_reader_folds_a_log_exactly_as_decoding_every_event(tmp_path, chunk_bytes, spaced):
    """Raw step lines folded by the fast path give the same model as every event decoded and
    ingested one by one, whatever the chunking and the JSON spacing, with buckets both one step
    and many wide."""
    log = tmp_path / "events.jsonl"
    write_log(log, sample_history(), spaced)
    for max_buckets in (8192, 256):
        fast, slow = RunModel("r"), RunModel("r")
        fast.steps, slow.steps = StepSeries(max_buckets), StepSeries(max_buckets)
        reader = LogReader(log, gpu_lines=GPU_LINES_KEPT, chunk_bytes=chunk_bytes)
        replay(reader, fast)
        items = LogReader(log, chunk_bytes=chunk_bytes).poll()
        assert any(isinstance(i, StepLines) for i in items)  # the fast path, in either spacing
        assert not any(isinstance(i, dict) and i["type"] in ("step", "gpu") for i in items)
        slow.steps.expect(reader.expected_steps)  # the replay's hint about the log's length, if any
        slow.ingest(read_all(log))
        for name in StepSeries.FIELDS:
            if name == "total":  # a sum in another order
                assert fast.steps.total == pytest.approx(slow.steps.total, rel=1e-12)
            else:
                assert getattr(fast.steps, name) == getattr(slow.steps, name), name
        assert fast.steps.width == slow.steps.width and (fast.steps.width > 1) == (max_buckets == 256)
        # 1..1800 and 1801..3000 again (the restart drops a bucket that straddles 1800 whole)
        assert fast.iter == 3000 and 3000 - fast.steps.width < sum(fast.steps.count) == fast.steps.steps <= 3000
        if max_buckets == 8192:
            assert fast.iters == list(range(1, 3001)) and fast.losses[1499] is None  # the NaN step
        for attr in ("evals", "anomalies", "settings", "micro_batch", "grad_accum", "state", "last_step",
                     "max_iters", "world_size", "clock"):
            assert getattr(fast, attr) == getattr(slow, attr), attr
        assert list(fast.step_ms) == list(slow.step_ms)
        assert fast.gpus == slow.gpus and list(fast.gpu_util[1]) == list(slow.gpu_util[1])


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
def test_the_reader_skips_gpu_lines_but_keeps_the_newest_and_holds_a_partial_line(tmp_path, spaced):
    log = tmp_path / "events.jsonl"
    events = [{"type": "gpu", "index": g, "name": "A100", "util": u, "mem_used": None, "mem_total": None,
               "temp": None, "power": None} for u in range(5000) for g in range(8)]
    events += [{"type": "prepare", "phase": "tokenize", "done": 1, "total": 2, "unit": "MB", "rate": 1, "eta": 1}]
    write_log(log, events, spaced)
    with open(log, "a") as f:
        f.write('{"time": 5, "iter": 7, "type": "step", "loss": 2.5}\n')  # another writer's key order
        f.write("not json\n")
        f.write('{"type":"step","time":6,"iter":8,"lo')  # being written
    reader = LogReader(log, gpu_lines=GPU_LINES_KEPT, chunk_bytes=64 << 10)
    items = reader.poll()
    gpu = [e for e in items if isinstance(e, dict) and e["type"] == "gpu"]
    assert len(gpu) == GPU_LINES_KEPT  # of 40,000
    assert [e["util"] for e in gpu if e["index"] == 3][-1] == 4999  # the newest reading of each GPU
    prepares = [e for e in items if isinstance(e, dict) and e["type"] == "prepare"]
    assert [e["done"] for e in prepares] == [1]  # only the newest prepare line of a chunk is decoded
    steps = [e for e in items if isinstance(e, dict) and e["type"] == "step"]
    assert [s["iter"] for s in steps] == [7]  # decoded the slow way; the partial line waits
    m = RunModel("r")
    m.ingest(items)
    assert m.gpus[7].util == 4999 and len(m.gpu_util[7]) == GPU_HISTORY and m.iters == [7]
    with open(log, "a") as f:
        f.write('ss":2.25,"lr":0.001}\n')
        f.write('{ "type" : "step", "time" : 7, "iter" : 9, "loss" : 2.0 }\n')  # a pretty-printer's
    more = reader.poll()
    assert len(more) == 1 and isinstance(more[0], StepLines) and more[0].losses == [b"2.25", b"2.0"]
    m.ingest(more)
    assert m.iters == [7, 8, 9] and m.losses == [2.5, 2.25, 2.0]


def test_active_time_leaves_out_pauses_as_compare_does():
    m = RunModel("r")
    m.ingest([{"type": "state", "time": 100.0, "state": "running"}, step(10, time=110.0),
              {"type": "state", "time": 120.0, "state": "paused"}, {"type": "state", "time": 500.0, "state": "running"},
              step(20, time=530.0)])
    assert m.steps.elapsed == [10.0, 50.0] and m.elapsed_at_iter(15) == pytest.approx(30.0)


def test_preparation_progress_shows_in_the_status_while_the_run_prepares(tmp_path):
    log = tmp_path / "events.jsonl"
    w = EventWriter(log)
    w.emit("state", state="preparing", reason="loading data and model")
    for done in (100e6, 420e6):
        w.emit("prepare", phase="tokenize", done=done, total=1000e6, unit="bytes", rate=12.3e6, eta=47.0)
    w.close()
    m = RunModel("r")
    replay(LogReader(log), m)
    rows = dict(m.status_rows())
    assert rows["iter"] == "tokenize ████░░░░░░ 42%" and rows["ETA"] == "47s · 12.3 MB/s"
    m.ingest([{"type": "state", "state": "running", "time": time.time()}])
    assert dict(m.status_rows())["iter"].startswith("-/")  # training: the usual rows again


def test_a_finished_preparation_says_how_much_was_prepared():
    from gpt2_cockpit.tui.model import prepare_progress

    done = {"phase": "done", "done": 123_456_789, "total": 123_456_789, "unit": "tokens", "rate": 0.0, "eta": None}
    assert prepare_progress(done) == ("prepared 123M tokens", "starting…")
    unknown = {"phase": "download", "done": 3, "total": None, "unit": "files", "rate": 0.5, "eta": None}
    assert prepare_progress(unknown) == ("download 3 files", "N/A · 0.5 files/s")
