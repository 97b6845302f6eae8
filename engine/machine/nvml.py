"""NVML, the NVIDIA driver's own library (pynvml, from nvidia-ml-py): the one place that asks it
what GPUs there are. No torch. The doctor, the planner (through hardware.py) and the run's GPU
sampler (gpustats.py) all start here.

    report = probe()        # driver version, CUDA version, every GPU; never raises
    report.gpus[0].name     # "NVIDIA GeForce RTX 4070 Ti"

Like nvitop, a figure the device will not report (a vGPU that hides its processes, a card
without a power limit) is None, shown as N/A; an NVML error never escapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def import_nvml():
    """The pynvml module (nvidia-ml-py), or None when it is not installed."""
    try:
        import pynvml

        return pynvml
    except ImportError:
        return None


def call_or_none(fn, *args):
    """fn(*args), or None when it raises (NVMLError_NotSupported, GpuIsLost, a missing symbol...)."""
    try:
        return fn(*args)
    except Exception:
        return None


def as_str(value) -> str:
    """NVML strings are bytes in older bindings, str in newer ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass
class NvmlGpu:
    """One GPU as the driver sees it. Any figure the device will not report is None."""

    index: int
    name: str
    mem_total: int | None = None  # bytes
    mem_free: int | None = None  # bytes
    power_limit_w: float | None = None  # enforced power limit
    compute_capability: tuple[int, int] | None = None
    # (pid, bytes used) of compute and graphics processes (a desktop's X server holds VRAM too);
    # None when the driver will not list them (some vGPUs, some containers)
    processes: list[tuple[Any, Any]] | None = None


@dataclass
class NvmlReport:
    """What NVML said. `error` is why it answered only in part, or not at all."""

    nvml: Any = None  # the pynvml module; None when nvidia-ml-py is not installed
    error: Exception | str | None = None
    driver: str | None = None  # "550.54.15"
    cuda_driver: int | None = None  # the newest CUDA the driver runs: 12040 for 12.4
    gpus: list[NvmlGpu] = field(default_factory=list)


def probe(nvml=None) -> NvmlReport:
    """The driver and every NVIDIA GPU it can see, in one NVML session. nvml: a module to use
    instead of pynvml (tests pass a fake). GPUs listed before a failing call are kept.

    NVML's order is PCI bus order, which is also CUDA's when CUDA_DEVICE_ORDER=PCI_BUS_ID;
    CUDA_VISIBLE_DEVICES is not applied here.
    """
    report = NvmlReport(nvml=nvml or import_nvml())
    nvml = report.nvml
    if nvml is None:
        report.error = "pynvml (nvidia-ml-py) is not installed"
        return report
    try:
        nvml.nvmlInit()
    except Exception as e:  # no driver, driver not loaded, no permission
        report.error = e
        return report
    try:
        report.driver = as_str(nvml.nvmlSystemGetDriverVersion())
        report.cuda_driver = call_or_none(nvml.nvmlSystemGetCudaDriverVersion)
        for i in range(nvml.nvmlDeviceGetCount()):
            report.gpus.append(_gpu(nvml, i))
    except Exception as e:
        report.error = e
    finally:
        call_or_none(nvml.nvmlShutdown)
    return report


def _gpu(nvml, i: int) -> NvmlGpu:
    h = nvml.nvmlDeviceGetHandleByIndex(i)
    mem = call_or_none(nvml.nvmlDeviceGetMemoryInfo, h)
    limit_mw = call_or_none(nvml.nvmlDeviceGetEnforcedPowerManagementLimit, h)
    cc = call_or_none(getattr(nvml, "nvmlDeviceGetCudaComputeCapability", lambda h: None), h)
    compute = call_or_none(nvml.nvmlDeviceGetComputeRunningProcesses, h)
    graphics = call_or_none(getattr(nvml, "nvmlDeviceGetGraphicsRunningProcesses", lambda h: None), h)
    processes = None if compute is None else [(getattr(q, "pid", None), getattr(q, "usedGpuMemory", None))
                                              for q in list(compute) + list(graphics or [])]
    return NvmlGpu(
        index=i,
        name=as_str(call_or_none(nvml.nvmlDeviceGetName, h) or f"GPU {i}"),
        mem_total=getattr(mem, "total", None),
        mem_free=getattr(mem, "free", None),
        power_limit_w=limit_mw / 1000.0 if limit_mw else None,
        compute_capability=tuple(cc) if cc else None,
        processes=processes,
    )


def device_count() -> int:
    """How many NVIDIA GPUs the driver can see; 0 without a driver or pynvml."""
    nvml = import_nvml()
    if nvml is None:
        return 0
    try:
        nvml.nvmlInit()
    except Exception:
        return 0
    try:
        return call_or_none(nvml.nvmlDeviceGetCount) or 0
    finally:
        call_or_none(nvml.nvmlShutdown)
