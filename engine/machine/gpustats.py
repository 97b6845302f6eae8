"""Live GPU figures through NVML, for the run's periodic `gpu` events and the cockpit. No torch.

    sampler = GpuSampler.create()      # a NullGpuSampler when there is no NVIDIA driver
    for gpu in sampler.sample():       # one dict per GPU; [] on a box without one
        writer.emit("gpu", **gpu)

Like nvitop, a figure the device cannot report (a GPU without a temperature sensor, a vGPU
that hides its power draw, a GPU that fell off the bus) is None, shown as N/A; sampling
never raises.
"""

from __future__ import annotations

from typing import Any

from .nvml import as_str, call_or_none, import_nvml

FIELDS = ("index", "name", "util", "mem_used", "mem_total", "temp", "power")


class NullGpuSampler:
    """No NVIDIA GPU (or no pynvml): same signatures, nothing to report."""

    count = 0

    def sample(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass

    def __bool__(self) -> bool:  # `if sampler:` reads as "is there a GPU to watch?"
        return False


class GpuSampler:
    """Samples utilisation, memory, temperature and power of every GPU (or the ones asked for).

    Holds NVML initialised from create() until close(); a sample is ~6 NVML calls per GPU,
    well under a millisecond each, so sampling every few seconds costs nothing measurable.
    """

    def __init__(self, nvml, indices: list[int]):
        self.nvml = nvml
        self.indices = indices
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        self.names = [as_str(call_or_none(nvml.nvmlDeviceGetName, h) or f"GPU {i}")
                      for i, h in zip(indices, self.handles)]
        self.count = len(self.handles)
        self._closed = False

    @classmethod
    def create(cls, nvml=None, indices: list[int] | None = None) -> "GpuSampler | NullGpuSampler":
        """A sampler over the GPUs NVML sees (or `indices` of them); a NullGpuSampler when
        pynvml is missing, nvmlInit fails (no driver) or there is no GPU."""
        nvml = nvml or import_nvml()
        if nvml is None:
            return NullGpuSampler()
        try:
            nvml.nvmlInit()
        except Exception:
            return NullGpuSampler()
        try:
            count = nvml.nvmlDeviceGetCount()
            wanted = [i for i in (range(count) if indices is None else indices) if 0 <= i < count]
            if not wanted:
                call_or_none(nvml.nvmlShutdown)
                return NullGpuSampler()
            return cls(nvml, wanted)
        except Exception:
            call_or_none(nvml.nvmlShutdown)
            return NullGpuSampler()

    def sample(self) -> list[dict[str, Any]]:
        """One dict per GPU: index, name, util (%), mem_used/mem_total (bytes), temp (C),
        power (W); None for what the device will not say."""
        if self._closed:
            return []
        nvml = self.nvml
        out = []
        for index, name, h in zip(self.indices, self.names, self.handles):
            util = call_or_none(nvml.nvmlDeviceGetUtilizationRates, h)
            mem = call_or_none(nvml.nvmlDeviceGetMemoryInfo, h)
            temp = call_or_none(nvml.nvmlDeviceGetTemperature, h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
            power_mw = call_or_none(nvml.nvmlDeviceGetPowerUsage, h)
            out.append({
                "index": index,
                "name": name,
                "util": _number(getattr(util, "gpu", None)),
                "mem_used": _number(getattr(mem, "used", None)),
                "mem_total": _number(getattr(mem, "total", None)),
                "temp": _number(temp),
                "power": round(power_mw / 1000.0, 1) if _number(power_mw) is not None else None,
            })
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            call_or_none(self.nvml.nvmlShutdown)

    def __bool__(self) -> bool:
        return True


def _number(v):
    # NVML reports "not available" through errors, but some drivers hand back sentinel
    # values instead (0xFFFFFFFF for an unreadable counter); treat those as N/A too
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
        return None
    return v


def describe(gpu: dict[str, Any]) -> str:
    """One line for a `gpu` sample, N/A for missing figures:
    'GPU0 RTX 4070 Ti  97%  10.2/12.0 GiB  71C  270W'."""
    def na(v, fmt):
        return "N/A" if v is None else fmt.format(v)

    def gib(v):
        return None if v is None else v / 1024 ** 3

    mem = f"{na(gib(gpu.get('mem_used')), '{:.1f}')}/{na(gib(gpu.get('mem_total')), '{:.1f}')} GiB"
    name = str(gpu.get("name") or "").replace("NVIDIA ", "").replace("GeForce ", "")
    return (f"GPU{gpu.get('index', '?')} {name}  {na(gpu.get('util'), '{:.0f}%')}  {mem}  "
            f"{na(gpu.get('temp'), '{:.0f}C')}  {na(gpu.get('power'), '{:.0f}W')}")
