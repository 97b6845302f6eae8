"""Shared fixtures: every test gets its own GPT2_COCKPIT_HOME and tiny, offline data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Every run in the tests, in this process or a child, trains on one thread that never changes: a
# run on the CPU otherwise adapts its thread count to what else the box does (cpushare.py), and
# torch's gradients differ in the last bits between thread counts, which the bit-for-bit tests
# (exact resume, a remote-controlled run against one left alone) would see as a failure. One
# thread also suits the tests' tiny models (thread hand-offs cost more than their matmuls). Set
# before torch loads; tests of the adapting share build CpuShare themselves.
os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]

# A small corpus with enough structure to learn from in a few dozen steps.
TINY_TEXT = "".join(
    f"The {a} {b} sat on the {c}. It was {d}.\n"
    for a in ("quick", "lazy", "small", "old") for b in ("cat", "dog", "fox")
    for c in ("mat", "log", "hill") for d in ("warm", "cold")
) * 4


@pytest.fixture(autouse=True)
def cockpit_home(tmp_path, monkeypatch):
    from gpt2_cockpit.engine import faults

    home = tmp_path / "home"
    monkeypatch.setenv("GPT2_COCKPIT_HOME", str(home))
    for var in (*faults.NAMES, "GPT2_COCKPIT_PEAK_TFLOPS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    faults.reset()  # none: a test that sets one calls faults.reset() after
    yield home
    _kill_leftover_runs(home)
    for var in faults.NAMES:  # what the test set: gone, and so from the faults read once
        monkeypatch.delenv(var, raising=False)
    faults.reset()


def _kill_leftover_runs(home: Path) -> None:
    """A failed test must not leave a detached run training in the background."""
    import signal

    for pid_file in (home / "runs").glob("*/pid"):
        try:
            pgid = os.getpgid(int(pid_file.read_text()))  # detached runs lead their own group
            if pgid != os.getpgid(0):
                os.killpg(pgid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(TINY_TEXT)
    return p


def tiny_overrides(corpus: Path, **train) -> list[str]:
    """--set items for a model small enough to train in milliseconds per step."""
    base = {
        "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16,
        "data.source": f'"{corpus}"', "train.micro_batch": 4, "train.grad_accum": 2,
        "train.max_iters": 20, "train.warmup_iters": 2, "train.lr_decay_iters": 20,
        "train.eval_interval": 10, "train.eval_iters": 2, "train.log_interval": 1,
        "train.sample_interval": 0, "train.checkpoint_interval": 10,
    }
    base.update({f"train.{k}": v for k, v in train.items()})
    return [f"{k}={v}" for k, v in base.items()]


def cli_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GPT2_COCKPIT_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


CLI = [sys.executable, "-m", "gpt2_cockpit.cli"]
