"""Fault injection (engine/faults.py): read once, and no hook at all unless a variable asks for one."""

import errno
import os

import pytest

from gpt2_cockpit.engine import faults, presets
from gpt2_cockpit.engine.fsutil import atomic_write_text
from gpt2_cockpit.engine.train.pretrain import PretrainWorkload
from gpt2_cockpit.engine.train.step import Stepper
from conftest import tiny_overrides


def test_the_fixture_leaves_no_fault_set():
    assert not any(name in os.environ for name in faults.NAMES)
    assert faults.active() == faults.Faults(None, None, None, None, None, 0.0)
    assert not faults.active().any


def test_no_variable_no_hook(corpus):
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus))
    stepper = Stepper(cfg, PretrainWorkload(cfg), "cpu")
    assert stepper.oom_hook is None and stepper.loss_fault is None
    assert not stepper.raw_model._forward_pre_hooks


def test_read_once_until_reset(monkeypatch, tmp_path):
    monkeypatch.setenv(faults.OOM_TOKENS, "32")
    assert faults.active().oom_tokens is None  # cached: the environment is not read again
    flag = tmp_path / "full"
    for name, value in ((faults.FULL_DISK, str(flag)), (faults.OOM_RANK, "1"), (faults.NAN_AT_ITER, "5"),
                        (faults.SPIKE_AT_ITER, "7"), (faults.PREPARE_SECONDS, "0.25")):
        monkeypatch.setenv(name, value)
    assert faults.reset() == faults.active() == faults.Faults(flag, 32, 1, 5, 7, 0.25)


def test_set_variables_install_their_hooks(monkeypatch, corpus):
    monkeypatch.setenv(faults.OOM_TOKENS, "10000")
    monkeypatch.setenv(faults.NAN_AT_ITER, "2")
    faults.reset()
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus))
    stepper = Stepper(cfg, PretrainWorkload(cfg), "cpu")
    assert stepper.oom_hook is not None and stepper.loss_fault is not None
    assert stepper.step(0, 1e-3).applied
    assert stepper.step(1, 1e-3).nonfinite  # iteration 2, counted from 1


def test_oom_on_another_rank_installs_nothing(monkeypatch, corpus):
    monkeypatch.setenv(faults.OOM_TOKENS, "8")
    monkeypatch.setenv(faults.OOM_RANK, "1")
    faults.reset()
    cfg = presets.load("cpu-tiny", tiny_overrides(corpus))
    assert Stepper(cfg, PretrainWorkload(cfg), "cpu").oom_hook is None  # rank 0


def test_fake_full_disk_while_its_file_exists(monkeypatch, tmp_path):
    flag = tmp_path / "full"
    monkeypatch.setenv(faults.FULL_DISK, str(flag))
    faults.reset()
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")  # no file yet: the disk has room
    flag.touch()
    with pytest.raises(OSError) as e:
        atomic_write_text(target, "two")
    assert e.value.errno == errno.ENOSPC and target.read_text() == "one"
    flag.unlink()
    atomic_write_text(target, "three")
    assert target.read_text() == "three"
