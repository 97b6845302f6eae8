"""Runs that train on the CPU share its cores instead of fighting over them."""

import os
import subprocess
import sys

import torch

from gpt2_cockpit.engine import cpushare
from gpt2_cockpit.engine.cpushare import CpuShare


def test_each_cpu_run_gets_its_share_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(cpushare, "cores", lambda: 8)
    said = []
    share = CpuShare(say=said.append, folder=tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    before = torch.get_num_threads()
    try:
        share.apply()  # alone: torch's default stays untouched (setting it explicitly costs ~10% a step)
        assert share.threads is None and said == [] and torch.get_num_threads() == before
        share._checked = 0.0
        (tmp_path / str(other.pid)).touch()  # another run, alive
        (tmp_path / "999999999").touch()  # a run that died without cleaning up
        assert share.fair_threads() == (4, 2, 8)
        assert not (tmp_path / "999999999").exists()
        share.apply()
        assert torch.get_num_threads() == 4 and share.threads == 4
        assert said == ["CPU: 4 of 8 cores (2 runs training on the CPU of this machine)"]
        share.apply()  # looked at again only after RECHECK_SECONDS
        assert len(said) == 1
        other.kill()
        other.wait()
        share._checked = 0.0
        share.apply()
        assert torch.get_num_threads() == 8 and said[-1] == "CPU: 8 of 8 cores (1 run training on the CPU of this machine)"
    finally:
        other.kill()
        torch.set_num_threads(before)
        share.close()
    assert not (tmp_path / str(os.getpid())).exists()
