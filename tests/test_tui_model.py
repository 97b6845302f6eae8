"""The cockpit's run model and series maths, without an app: ingest, ETA, smoothing, downsampling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpt2_cockpit.engine.fmt import NA, fmt_count, fmt_duration, fmt_mem, fmt_mfu
from gpt2_cockpit.tui.feed import EventsArrived
from gpt2_cockpit.tui.model import RunModel, downsample, ema, sparkline
from gpt2_cockpit.tui.plot import log_ticks, nice_ticks


def step(it, loss=2.0, tokens=None, ms=50.0, **kw):
    return {"type": "step", "time": time.time(), "iter": it, "loss": loss, "lr": 1e-3,
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
