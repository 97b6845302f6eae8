"""GPU sampling through a fake NVML: every N/A path, on a machine with no GPU.

FakeNvml is shared with test_doctor.py: a pynvml stand-in that raises pynvml.NVMLError where
a real device would (a sensor it lacks, a GPU that fell off the bus, no driver at all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pynvml
import pytest

from gpt2_cockpit.engine.machine import gpustats, hardware, nvml
from gpt2_cockpit.engine.machine.gpustats import GpuSampler, NullGpuSampler, describe

MIB = 1024 ** 2


def rtx_4070_ti(**kw) -> dict:
    """A 12 GB RTX 4070 Ti halfway through a training step."""
    gpu = dict(name="NVIDIA GeForce RTX 4070 Ti", mem_total=12282 * MIB, mem_used=10240 * MIB, util=97, temp=71,
               power_mw=270_500, limit_mw=285_000, cc=(8, 9), procs=[])
    gpu.update(kw)
    return gpu


class FakeNvml:
    """Enough of pynvml for the sampler, the GPU inventory and the doctor.

    A GPU is a dict; a key set to None makes its getter raise NVMLError_NotSupported, as a real
    device without that sensor does. `init_error` (an NVML_ERROR_* code) makes nvmlInit fail;
    `lost` makes every per-device call raise GpuIsLost.
    """

    NVML_TEMPERATURE_GPU = 0
    NVMLError = pynvml.NVMLError
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION

    def __init__(self, gpus=(), driver="550.54.15", cuda=12040, init_error=None, process_names=None):
        self.gpus = [dict(g) for g in gpus]
        self.driver, self.cuda, self.init_error = driver, cuda, init_error
        self.process_names = process_names or {}
        self.lost = False
        self.inits = 0  # nvmlInit minus nvmlShutdown: must end at 0

    def nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return i

    def _get(self, h, key):
        if self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        value = self.gpus[h].get(key)
        if value is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def nvmlDeviceGetName(self, h):
        return self._get(h, "name")

    def nvmlDeviceGetMemoryInfo(self, h):
        total, used = self._get(h, "mem_total"), self._get(h, "mem_used")
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self._get(h, "util"), memory=40)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._get(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._get(h, "power_mw")

    def nvmlDeviceGetEnforcedPowerManagementLimit(self, h):
        return self._get(h, "limit_mw")

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self._get(h, "cc")

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self._get(h, "procs")]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []

    def nvmlSystemGetProcessName(self, pid):
        if pid not in self.process_names:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return self.process_names[pid]


def test_samples_every_figure_of_a_healthy_gpu():
    nvml = FakeNvml([rtx_4070_ti()])
    sampler = GpuSampler.create(nvml)
    assert sampler and sampler.count == 1
    (g,) = sampler.sample()
    assert set(g) == set(gpustats.FIELDS)
    assert g == {"index": 0, "name": "NVIDIA GeForce RTX 4070 Ti", "util": 97, "mem_used": 10240 * MIB,
                 "mem_total": 12282 * MIB, "temp": 71, "power": 270.5}  # mW -> W
    json.dumps(g)  # goes straight into a `gpu` event
    sampler.close()
    assert nvml.inits == 0
    assert sampler.sample() == []  # closed: nothing, no raise


def test_missing_sensors_are_none_not_errors():
    nvml = FakeNvml([rtx_4070_ti(temp=None, power_mw=None, util=None)])
    (g,) = GpuSampler.create(nvml).sample()
    assert (g["temp"], g["power"], g["util"]) == (None, None, None)
    assert g["mem_used"] == 10240 * MIB
    assert "N/A" in describe(g) and "10.0/12.0 GiB" in describe(g)


def test_a_gpu_lost_mid_run_reports_na():
    nvml = FakeNvml([rtx_4070_ti()])
    sampler = GpuSampler.create(nvml)
    nvml.lost = True
    (g,) = sampler.sample()
    assert g["index"] == 0 and g["name"] == "NVIDIA GeForce RTX 4070 Ti"  # known from create()
    assert [g[k] for k in ("util", "mem_used", "mem_total", "temp", "power")] == [None] * 5


def test_sentinel_values_read_as_na():
    (g,) = GpuSampler.create(FakeNvml([rtx_4070_ti(temp=0xFFFFFFFF, util=-1)])).sample()
    assert g["temp"] is None and g["util"] is None


def test_no_driver_gives_a_null_sampler():
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    sampler = GpuSampler.create(nvml)
    assert isinstance(sampler, NullGpuSampler) and not sampler
    assert sampler.sample() == [] and sampler.count == 0
    sampler.close()


def test_no_gpus_gives_a_null_sampler_and_releases_nvml():
    nvml = FakeNvml([])
    assert isinstance(GpuSampler.create(nvml), NullGpuSampler)
    assert nvml.inits == 0


def test_without_pynvml_nothing_raises(monkeypatch):
    monkeypatch.setattr(gpustats, "import_nvml", lambda: None)
    assert GpuSampler.create().sample() == []


def test_this_machine_without_nvidia_samples_nothing():
    # the real pynvml on a box with no NVIDIA driver: nvmlInit fails, sample() is []
    if hardware.has_cuda():
        pytest.skip("this machine has an NVIDIA GPU")
    assert GpuSampler.create().sample() == []


def test_indices_pick_gpus():
    nvml = FakeNvml([rtx_4070_ti(), rtx_4070_ti(name="NVIDIA GeForce RTX 3090"), rtx_4070_ti()])
    out = GpuSampler.create(nvml, indices=[1, 7]).sample()  # 7 does not exist: ignored
    assert [(g["index"], g["name"]) for g in out] == [(1, "NVIDIA GeForce RTX 3090")]


def test_bytes_names_from_old_bindings():
    (g,) = GpuSampler.create(FakeNvml([rtx_4070_ti(name=b"Tesla T4")])).sample()
    assert g["name"] == "Tesla T4"


def test_describe_formats_a_sample():
    line = describe({"index": 0, "name": "NVIDIA GeForce RTX 4070 Ti", "util": 97, "mem_used": 10 * 1024 ** 3,
                     "mem_total": 12 * 1024 ** 3, "temp": 71, "power": 270.4})
    assert line == "GPU0 RTX 4070 Ti  97%  10.0/12.0 GiB  71C  270W"
    assert describe({"index": 1, "name": "x", "util": None, "mem_used": None, "mem_total": None,
                     "temp": None, "power": None}).count("N/A") == 5


def test_nvml_inventory_for_the_planner():
    gpus = nvml.probe(FakeNvml([rtx_4070_ti(), rtx_4070_ti(limit_mw=None, cc=None)])).gpus
    assert [(g.index, g.name) for g in gpus] == [(0, "NVIDIA GeForce RTX 4070 Ti"), (1, "NVIDIA GeForce RTX 4070 Ti")]
    assert gpus[0].power_limit_w == 285.0 and gpus[0].compute_capability == (8, 9)
    assert gpus[0].mem_total == 12282 * MIB and gpus[0].mem_free == 2042 * MIB
    assert gpus[1].power_limit_w is None and gpus[1].compute_capability is None
    assert nvml.probe(FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)).gpus == []


def test_gpustats_and_hardware_never_import_torch():
    code = ("import sys; import gpt2_cockpit.engine.machine.gpustats as g, gpt2_cockpit.engine.machine.hardware as h, "
            "gpt2_cockpit.engine.machine.nvml as n; g.GpuSampler.create().sample(); n.probe(); h.has_cuda(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
