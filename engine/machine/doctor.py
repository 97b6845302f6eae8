"""The checks behind `gpt2-cockpit doctor`: is this machine set up to train on its GPU, and if
not, what to do. The command line (cli/) prints them; the cockpit shows them.

Each check answers pass / warn / fail with a detail and, when not a pass, a one-line remedy.
Checks marked `required` are the ones GPU training cannot do without; `doctor` exits 1 when
one of them fails. NVML (nvml.probe) and torch are asked inside run_checks and can be swapped
for fakes, so every path is tested on a machine with no GPU.
Nothing here touches the network unless asked (`--online`, 2-second timeouts).

A check never crashes the doctor: an exception inside one becomes that check's fail (or warn)
with the exception's one-line message.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from .nvml import NvmlGpu, as_str, call_or_none
from .nvml import probe as nvml_probe

MIN_DRIVER = 535  # CUDA 12.2; what current PyTorch wheels and FlashAttention-2 builds expect
GIB = 1024 ** 3

# Package minimums, as in pyproject.toml. torch is needed to train at all.
PACKAGES = [("torch", "2.4"), ("transformers", "4.46"), ("datasets", "2.20"), ("tiktoken", "0.7"),
            ("textual", "0.80"), ("nvidia-ml-py", "12.535"), ("numpy", "1.24")]

# PyTorch wheel indexes by the CUDA version they are built for (driver CUDA version as NVML
# encodes it: 1000 * major + 10 * minor). The remedy suggests the newest the driver can run.
TORCH_INDEXES = [(11080, "cu118"), (12010, "cu121"), (12040, "cu124"), (12060, "cu126"), (12080, "cu128"),
                 (12090, "cu129"), (13000, "cu130")]
NO_GPU_HINT = "without an NVIDIA GPU, train on the CPU: gpt2-cockpit train cpu-tiny"

# tiktoken's GPT-2 files; its cache names each by the SHA-1 of its URL
TIKTOKEN_GPT2_URLS = ["https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                      "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"]


@dataclass
class Check:
    id: str
    name: str
    status: str  # "pass" | "warn" | "fail"
    detail: str
    remedy: str = ""  # one line, when status is not "pass"
    required: bool = False  # GPU training cannot do without it

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "detail": self.detail,
                "remedy": self.remedy or None, "required": self.required}


@dataclass
class _Probe:
    """What the checks share: one NVML session and one torch import, done once."""

    nvml: Any = None  # the pynvml module (or a fake); None when it is not installed
    nvml_error: Exception | str | None = None  # why NVML is not usable
    driver: str | None = None
    cuda_driver: int | None = None  # 12040 for CUDA 12.4
    gpus: list[NvmlGpu] = field(default_factory=list)  # from NVML
    torch: Any = None
    torch_error: str | None = None
    cuda_available: bool = False
    cuda_warning: str | None = None  # what torch said when CUDA would not initialise
    online: bool = False
    runs_path: Path | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    python: tuple[int, ...] = ()


def _one_line(e: BaseException | str) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = e.__class__.__name__ if isinstance(e, BaseException) else ""
    return f"{name}: {text}" if name and text and name not in text else (text or name)


def _cuda_str(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _index_for(cuda_driver: int | None) -> str:
    tag = "cu128"
    if cuda_driver:
        fitting = [t for v, t in TORCH_INDEXES if v <= cuda_driver]
        tag = fitting[-1] if fitting else "cu118"
    return f"pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/{tag}"


# --------------------------------------------------------------------------- probing


def _probe_torch(p: _Probe, torch_mod) -> None:
    if torch_mod is None:
        try:
            import torch as torch_mod  # noqa: PLC0415 - heavy, and only the doctor needs it here
        except Exception as e:  # ImportError, or a broken install raising OSError on a .so
            p.torch_error = _one_line(e)
            return
    p.torch = torch_mod
    # is_available() explains itself only through a warning ("driver too old", ...): keep it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            p.cuda_available = bool(torch_mod.cuda.is_available())
        except Exception as e:
            p.cuda_warning = _one_line(e)
    if caught and not p.cuda_available:
        p.cuda_warning = _one_line(str(caught[0].message))


def _versions() -> dict[str, str | None]:
    out = {}
    for name, _ in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- the checks


def check_driver(p: _Probe) -> Check:
    c = Check("nvidia_driver", "NVIDIA driver", "fail", "", required=True)
    err = p.nvml_error
    if p.driver is None and p.cuda_available:
        # torch reaches the GPU, so a driver is there; only NVML (libnvidia-ml.so) is missing,
        # as in some containers and under WSL: training works, the version is unknown
        c.status = "warn"
        c.detail = f"present (torch sees CUDA), version unknown: {_one_line(err)}"
        c.remedy = "pip install nvidia-ml-py and make libnvidia-ml.so visible, for GPU stats and this check"
        return c
    if p.nvml is None:
        c.detail = f"cannot ask the driver: {err}"
        c.remedy = "pip install nvidia-ml-py"
        return c
    if err is not None and p.driver is None:
        code = getattr(err, "value", None)
        if code == getattr(p.nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12):
            c.detail = "not found (no NVML library): no NVIDIA GPU here, or no driver"
            c.remedy = f"on a machine with an NVIDIA GPU, install driver >= {MIN_DRIVER} (sudo ubuntu-drivers install)"
        elif code == getattr(p.nvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9):
            c.detail = "the NVIDIA driver is installed but not loaded"
            c.remedy = "reboot after installing the driver, or sudo modprobe nvidia; then check nvidia-smi"
        elif code == getattr(p.nvml, "NVML_ERROR_NO_PERMISSION", 4):
            c.detail = "no permission to talk to the NVIDIA driver (/dev/nvidia*)"
            c.remedy = "add your user to the group owning /dev/nvidia* (often 'video'), or run in a GPU-enabled container"
        else:
            c.detail = f"NVML would not start: {_one_line(err)}"
            c.remedy = "run nvidia-smi to see what the driver says; reinstall the driver if it fails too"
        return c
    major = int(p.driver.split(".")[0]) if p.driver and p.driver.split(".")[0].isdigit() else None
    n = len(p.gpus)
    if major is None:
        c.status, c.detail = "warn", f"driver version {p.driver!r} not understood"
        c.remedy = "check nvidia-smi"
    elif major < MIN_DRIVER:
        c.detail = f"driver {p.driver} is older than {MIN_DRIVER}"
        c.remedy = f"install NVIDIA driver >= {MIN_DRIVER} (Ubuntu: sudo apt install nvidia-driver-550), then reboot"
    elif n == 0:
        c.detail = f"driver {p.driver} loaded, but it sees no GPU" + (f" (NVML: {_one_line(err)})" if err else "")
        c.remedy = "check that nvidia-smi lists the GPU (seated, powered, not passed to a VM)"
    else:
        c.status, c.detail = "pass", f"driver {p.driver}, {n} GPU{'s' if n > 1 else ''}"
        if err is not None:  # some later NVML call failed
            c.status, c.remedy = "warn", "run nvidia-smi: the driver answered only in part"
            c.detail += f" (NVML: {_one_line(err)})"
    return c


def check_cuda_versions(p: _Probe) -> Check:
    c = Check("cuda_versions", "CUDA versions", "fail", "", required=True)
    if p.torch is None:
        c.detail = f"torch is not installed ({p.torch_error})"
        c.remedy = _index_for(p.cuda_driver)
        return c
    built = getattr(p.torch.version, "cuda", None)
    drv = p.cuda_driver
    drv_text = f"driver supports CUDA {_cuda_str(drv)}" if drv else "no CUDA driver"
    if not built:
        c.detail = f"torch {p.torch.__version__} is a CPU-only build; {drv_text}"
        c.remedy = ("after the driver: " if not drv else "") + _index_for(drv)
        return c
    major, minor = (int(x) for x in built.split(".")[:2])
    want = major * 1000 + minor * 10
    if not drv:
        if p.cuda_available:  # NVML missing but CUDA works (some containers, WSL)
            c.status, c.detail = "warn", f"torch built for CUDA {built}; the driver's CUDA version is unknown (no NVML)"
            c.remedy = "pip install nvidia-ml-py (and make libnvidia-ml.so visible) to check it"
        else:
            c.detail = f"torch built for CUDA {built}, but there is no NVIDIA driver to run it"
            c.remedy = f"install NVIDIA driver >= {MIN_DRIVER}"
        return c
    if drv >= want:
        c.status, c.detail = "pass", f"{drv_text}, torch built for CUDA {built}: they fit"
    elif drv // 1000 == major:
        # CUDA minor-version compatibility: a 12.x runtime runs on any 12.y driver, minus PTX JIT
        c.status, c.detail = "warn", (f"{drv_text}, torch built for CUDA {built}: runs through minor-version "
                                      f"compatibility, but kernels JIT-compiled from PTX may fail")
        c.remedy = f"update the NVIDIA driver to one for CUDA {built}+, or: {_index_for(drv)}"
    else:
        c.detail = f"{drv_text}, but torch is built for CUDA {built}: too new for this driver"
        c.remedy = f"update the NVIDIA driver, or install a torch build it can run: {_index_for(drv)}"
    return c


def check_torch_cuda(p: _Probe) -> Check:
    c = Check("torch_cuda", "torch CUDA", "fail", "", required=True)
    if p.torch is None:
        c.detail, c.remedy = "torch is not installed", _index_for(p.cuda_driver)
        return c
    cuda = p.torch.cuda
    if not p.cuda_available:
        why = p.cuda_warning or ""
        if not getattr(p.torch.version, "cuda", None):
            why = "torch is a CPU-only build"
        elif _hides_gpus(os.environ.get("CUDA_VISIBLE_DEVICES")):
            why = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
        elif p.nvml_error is not None or not p.gpus:
            why = why or "no NVIDIA driver or GPU"
        c.detail = f"False: {why}" if why else "False"
        c.remedy = ("unset CUDA_VISIBLE_DEVICES" if "CUDA_VISIBLE_DEVICES" in why else
                    "fix the driver and CUDA checks above")
        return c
    n = cuda.device_count()
    c.status, c.detail = "pass", f"True: {n} device{'s' if n != 1 else ''}, cuda:0 is {cuda.get_device_name(0)}"
    # a GPU newer than the build (an RTX 50xx under a CUDA 12.4 wheel) fails with "no kernel image"
    arch = call_or_none(cuda.get_arch_list) or []
    cc = call_or_none(cuda.get_device_capability, 0)
    if arch and cc:
        sm = cc[0] * 10 + cc[1]
        sms = {int(a.split("_")[1]) for a in arch if a.startswith("sm_") and a.split("_")[1].isdigit()}
        ptx = {int(a.split("_")[1]) for a in arch if a.startswith("compute_") and a.split("_")[1].isdigit()}
        same_major = any(s // 10 == cc[0] and s <= sm for s in sms)  # sm_86 runs sm_80 binaries
        if not (sm in sms or same_major or any(x <= sm for x in ptx)):
            c.status = "fail"
            c.detail = f"True, but this torch has no kernels for sm_{sm} (it has {', '.join(sorted(arch))})"
            c.remedy = f"install a torch build for your GPU's architecture: {_index_for(p.cuda_driver)}"
    return c


def _hides_gpus(cvd: str | None) -> bool:
    """CUDA_VISIBLE_DEVICES="" or "-1" leaves CUDA no device at all."""
    return cvd is not None and (not cvd.strip() or cvd.strip().startswith("-1"))


def check_gpu(p: _Probe) -> Check:
    c = Check("gpu", "GPU", "fail", "", required=True)
    gpus = list(p.gpus)
    if not gpus and p.cuda_available:  # NVML missing but torch sees GPUs: ask torch
        cuda = p.torch.cuda
        for i in range(cuda.device_count()):
            free, total = call_or_none(cuda.mem_get_info, i) or (None, None)
            cc = call_or_none(cuda.get_device_capability, i)
            gpus.append(NvmlGpu(i, cuda.get_device_name(i), mem_total=total, mem_free=free,
                                compute_capability=tuple(cc) if cc else None))
    if not gpus:
        c.detail = "no NVIDIA GPU found"
        c.remedy = "see the driver check above" if p.nvml_error is not None else "check nvidia-smi lists the GPU"
        return c
    parts, old = [], []
    for g in gpus:
        cc = g.compute_capability
        mem = (f"{g.mem_total / GIB:.1f} GiB" if g.mem_total else "memory N/A")
        free = f", {g.mem_free / GIB:.1f} free" if g.mem_free is not None else ""
        parts.append(f"{g.index}: {g.name.replace('NVIDIA ', '')}, "
                     f"{'sm_%d%d' % tuple(cc) if cc else 'sm N/A'}, {mem}{free}")
        if cc and tuple(cc) < (7, 0):
            old.append(g.index)
    c.status, c.detail = "pass", "; ".join(parts)
    if old:
        c.status = "warn"
        c.remedy = "GPUs older than Volta (sm_70) have no tensor cores: expect slow training, fp32 or fp16 only"
    return c


def check_gpu_processes(p: _Probe) -> Check:
    c = Check("gpu_processes", "GPU processes", "pass", "")
    if not p.gpus:
        return _not_checked(c, "NVML sees no GPU")
    me = os.getpid()
    found, unknown = [], []
    for g in p.gpus:
        if g.processes is None:
            unknown.append(str(g.index))
            continue
        for pid, used in g.processes:
            if pid == me:
                continue
            name = _process_name(p.nvml, pid)
            mem = f" {used / GIB:.1f} GiB" if isinstance(used, int) and used > 0 else ""
            found.append(f"GPU{g.index} pid {pid} {name}{mem}".rstrip())
    if found:
        c.status = "warn"
        c.detail = "; ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        c.remedy = "they hold VRAM and compute: stop them, or expect a smaller micro-batch and slower steps"
    elif unknown:
        c.status, c.detail = "warn", f"the driver will not list processes on GPU {', '.join(unknown)}"
        c.remedy = "check nvidia-smi by hand"
    else:
        c.detail = "none"
    return c


def _process_name(nvml, pid) -> str:
    name = call_or_none(getattr(nvml, "nvmlSystemGetProcessName", lambda pid: None), pid)
    if not name:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, TypeError):
            name = ""
    return Path(as_str(name)).name if name else ""


def _capability(p: _Probe) -> tuple[int, int] | None:
    cc = call_or_none(p.torch.cuda.get_device_capability, 0)
    if cc:
        return tuple(cc)
    return p.gpus[0].compute_capability if p.gpus else None


def _not_checked(c: Check, why: str) -> Check:
    """A check that depends on one that failed: a warning that says why, pointing above."""
    c.status, c.detail, c.remedy = "warn", f"not checked: {why}", "see the failed checks above"
    return c


def check_bf16(p: _Probe) -> Check:
    c = Check("bf16", "bf16", "pass", "")
    if not p.cuda_available:
        return _not_checked(c, "torch has no CUDA GPU")
    cuda = p.torch.cuda
    try:  # torch >= 2.3 answers True for bf16 emulated in software unless told not to
        native = cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        native = cuda.is_bf16_supported()
    cc = _capability(p)
    if native and (cc is None or cc >= (8, 0)):
        c.detail = "native bf16: autocast trains in bf16, no gradient scaler"
    else:
        c.status = "warn"
        c.detail = f"no native bf16 on sm_{cc[0]}{cc[1]}" if cc else "no native bf16"
        c.remedy = "nothing to do: training uses fp16 with a gradient scaler (Ampere, sm_80+, has bf16)"
    return c


def check_sdpa(p: _Probe) -> Check:
    c = Check("sdpa", "SDPA kernels", "pass", "")
    if not p.cuda_available:
        return _not_checked(c, "torch has no CUDA GPU")
    b = p.torch.backends.cuda
    cc = _capability(p) or (0, 0)
    built = call_or_none(getattr(b, "is_flash_attention_available", lambda: True))
    flash = bool(call_or_none(b.flash_sdp_enabled)) and built is not False and cc >= (8, 0)
    mem_eff = bool(call_or_none(b.mem_efficient_sdp_enabled)) and cc >= (5, 0)
    if flash:
        c.detail = "flash attention" + (" and memory-efficient kernels" if mem_eff else "") + " available"
    elif mem_eff:
        c.status = "warn"
        c.detail = (f"memory-efficient kernel only (flash attention needs sm_80+, this is sm_{cc[0]}{cc[1]})"
                    if cc < (8, 0) else "memory-efficient kernel only: flash attention is disabled or not built")
        c.remedy = ("fine: no T x T matrix is stored, steps are somewhat slower" if cc < (8, 0) else
                    "re-enable it (torch.backends.cuda.enable_flash_sdp(True)) or install an official torch wheel")
    else:
        c.status = "warn"
        c.detail = "only the math kernel: attention stores a T x T matrix per head"
        c.remedy = "enable the fused kernels (torch.backends.cuda.enable_mem_efficient_sdp(True)) or lower model.block_size"
    return c


def check_cudnn(p: _Probe) -> Check:
    c = Check("cudnn", "cuDNN", "pass", "")
    if p.torch is None or not getattr(p.torch.version, "cuda", None):
        return _not_checked(c, "no CUDA build of torch")
    v = call_or_none(p.torch.backends.cudnn.version)
    if not v:
        c.status, c.detail = "warn", "torch finds no cuDNN (GPT training does not need it, convolutions would)"
        c.remedy = "pip install nvidia-cudnn-cu12, or reinstall torch from its official index"
        return c
    # cuDNN 9 encodes 9.1.0 as 90100; cuDNN 8 encoded 8.9.2 as 8902
    major, rest = (v // 10000, v % 10000) if v >= 10000 else (v // 1000, v % 1000)
    c.detail = f"{major}.{rest // 100}.{rest % 100}"
    return c


def check_python(p: _Probe) -> Check:
    v = p.python
    c = Check("python", "Python", "pass", f"{'.'.join(map(str, v[:3]))} ({sys.executable})")
    if tuple(v[:2]) < (3, 11):
        c.status, c.remedy = "fail", "gpt2-cockpit needs Python 3.11 or newer"
        c.required = True
    return c


def _vtuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def check_packages(p: _Probe) -> Check:
    c = Check("packages", "packages", "pass", "", required=True)
    missing, old, shown = [], [], []
    for name, minimum in PACKAGES:
        v = p.versions.get(name)
        if v is None:
            missing.append(name)
            continue
        shown.append(f"{name} {v}")
        if _vtuple(v) < _vtuple(minimum):
            old.append(f"{name}>={minimum}")
    c.detail = ", ".join(shown + [f"{m} missing" for m in missing])
    if "torch" in missing:
        c.status, c.remedy = "fail", _index_for(p.cuda_driver)
    elif missing or old:
        c.status = "warn"
        c.remedy = "pip install " + " ".join(f"'{x}'" for x in old + missing)
    return c


def _hf_cached(repo_ids: list[str], filenames: list[str]) -> tuple[bool, str]:
    """Are these files in the Hugging Face cache (any of the repo ids)? No network."""
    from huggingface_hub import constants, try_to_load_from_cache

    for repo in repo_ids:
        if all(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames):
            return True, f"{repo} in {constants.HF_HUB_CACHE}"
    return False, constants.HF_HUB_CACHE


def _tiktoken_cache_dir() -> str:
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    import tempfile

    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _reachable(url: str, timeout: float = 2.0) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return True
    except Exception:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_tokenizer(p: _Probe) -> Check:
    import hashlib

    c = Check("gpt2_tokenizer", "GPT-2 tokenizer", "pass", "")
    folder = _tiktoken_cache_dir()
    tk = bool(folder) and all(os.path.exists(os.path.join(folder, hashlib.sha1(u.encode()).hexdigest()))
                              for u in TIKTOKEN_GPT2_URLS)
    hf, _ = _hf_cached(["gpt2", "openai-community/gpt2"], ["vocab.json", "merges.txt"])
    have = [x for x, ok in (("tiktoken (pretrain)", tk), ("Hugging Face (finetune)", hf)) if ok]
    lack = [x for x, ok in (("tiktoken (pretrain)", tk), ("Hugging Face (finetune)", hf)) if not ok]
    if not lack:
        c.detail = f"cached: tiktoken in {folder}; Hugging Face gpt2"
        return c
    c.status = "warn"
    c.detail = f"not cached: {', '.join(lack)}" + (f"; cached: {', '.join(have)}" if have else "")
    if p.online:
        up = _reachable(TIKTOKEN_GPT2_URLS[1]) if not tk else True
        c.detail += "; download site reachable" if up else "; download site NOT reachable"
    c.remedy = ("HF_HUB_OFFLINE=1 is set: copy the caches from a machine with network" if _offline()
                else "downloaded on first use (about 2 MB); offline, copy the tiktoken cache and set TIKTOKEN_CACHE_DIR")
    return c


def check_weights(p: _Probe) -> Check:
    c = Check("gpt2_weights", "GPT-2 weights", "pass", "")
    ok, where = False, ""
    for weights in ("model.safetensors", "pytorch_model.bin"):
        ok, where = _hf_cached(["gpt2", "openai-community/gpt2"], ["config.json", weights])
        if ok:
            break
    if ok:
        c.detail = f"cached: {where}"
        return c
    c.status = "warn"
    c.detail = f"gpt2 is not in the Hugging Face cache ({where})"
    if p.online and not _offline():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        reachable = _reachable(f"{endpoint}/openai-community/gpt2/resolve/main/config.json")
        c.detail += f"; {endpoint} is {'reachable' if reachable else 'NOT reachable'}"
    c.remedy = ("HF_HUB_OFFLINE=1 is set: copy the cache from a machine with network" if _offline()
                else "gpt2-finetune downloads ~550 MB on first use; pretraining does not need it")
    return c


def _free_bytes(where: Path) -> int:
    """Free bytes on the disk holding `where` (the tests swap this for a disk of their choosing)."""
    return shutil.disk_usage(where).free


def check_disk(p: _Probe) -> Check:
    c = Check("disk", "disk", "pass", "", required=True)
    target = p.runs_path
    if target is None:
        from ..paths import runs_dir

        target = runs_dir()
    where = Path(target)
    while not where.exists() and where != where.parent:  # the nearest existing parent
        where = where.parent
    free = _free_bytes(where)
    c.detail = f"{free / GIB:.1f} GiB free at {where}" + ("" if where == Path(target) else f" (for {target})")
    if free < 1 * GIB:
        c.status, c.remedy = "fail", "free some space: checkpoints and token files need at least a few GiB"
    elif free < 20 * GIB:
        c.status = "warn"
        c.remedy = ("FineWeb-Edu's 10B-token sample takes ~20 GiB of tokens plus its download; "
                    "point $GPT2_COCKPIT_HOME at a bigger disk")
    return c


CHECKS: list[tuple[str, str, bool, Callable[[_Probe], Check]]] = [
    ("nvidia_driver", "NVIDIA driver", True, check_driver),
    ("cuda_versions", "CUDA versions", True, check_cuda_versions),
    ("torch_cuda", "torch CUDA", True, check_torch_cuda),
    ("gpu", "GPU", True, check_gpu),
    ("gpu_processes", "GPU processes", False, check_gpu_processes),
    ("bf16", "bf16", False, check_bf16),
    ("sdpa", "SDPA kernels", False, check_sdpa),
    ("cudnn", "cuDNN", False, check_cudnn),
    ("python", "Python", False, check_python),
    ("packages", "packages", True, check_packages),
    ("gpt2_tokenizer", "GPT-2 tokenizer", False, check_tokenizer),
    ("gpt2_weights", "GPT-2 weights", False, check_weights),
    ("disk", "disk", True, check_disk),
]


def run_checks(nvml=None, torch_mod=None, *, online: bool = False, runs_path: Path | None = None,
               versions: dict[str, str | None] | None = None, python: tuple[int, ...] | None = None) -> list[Check]:
    """Every check, in order. nvml / torch_mod: modules to use instead of pynvml / torch (tests
    pass fakes); versions: package versions instead of importlib.metadata's."""
    report = nvml_probe(nvml)  # never raises: what NVML would not say is in report.error
    p = _Probe(nvml=report.nvml, nvml_error=report.error, driver=report.driver, cuda_driver=report.cuda_driver,
               gpus=report.gpus, online=online, runs_path=runs_path)
    try:
        _probe_torch(p, torch_mod)
    except Exception as e:
        p.torch_error = _one_line(e)
    p.versions = versions if versions is not None else _versions()
    p.python = tuple(python or sys.version_info[:3])
    out = []
    for id, name, required, fn in CHECKS:
        try:
            out.append(fn(p))
        except Exception as e:
            out.append(Check(id, name, "fail" if required else "warn", f"the check itself failed: {_one_line(e)}",
                             "please report this with the output of nvidia-smi", required))
    return out


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.required and c.status == "fail" for c in checks) else 0


# --------------------------------------------------------------------------- output


TAGS = {"pass": "[pass]", "warn": "[warn]", "fail": "[FAIL]"}
COLORS = {"pass": "\033[32m", "warn": "\033[33m", "fail": "\033[1;31m"}


def format_checks(checks: list[Check], width: int = 80, color: bool = False) -> str:
    import textwrap

    name_w = max(len(c.name) for c in checks) if checks else 0
    name_w = min(name_w, 16)
    lines = []
    for c in checks:
        tag = TAGS.get(c.status, f"[{c.status}]")
        if color:
            tag = f"{COLORS.get(c.status, '')}{tag}\033[0m"
        head = f"{tag} {c.name:<{name_w}}  "
        indent = " " * (7 + name_w + 2)
        body = textwrap.wrap(c.detail or "-", width=max(30, width - len(indent)), break_long_words=False,
                             break_on_hyphens=False)
        lines.append(head + body[0])
        lines += [indent + b for b in body[1:]]
        if c.remedy and c.status != "pass":
            lines += textwrap.wrap(c.remedy, width=width, initial_indent="  -> ", subsequent_indent="     ",
                                   break_long_words=False, break_on_hyphens=False)
    failed = [c for c in checks if c.required and c.status == "fail"]
    warned = [c for c in checks if c.status != "pass" and c not in failed]
    lines.append("")
    summary = []
    if failed:
        summary.append(f"Not ready for GPU training: {len(failed)} required check{'s' if len(failed) > 1 else ''} "
                     f"failed ({', '.join(c.name for c in failed)}).")
        if any(c.id == "gpu" for c in failed):
            summary.append(NO_GPU_HINT[0].upper() + NO_GPU_HINT[1:] + ".")
    else:
        summary.append("Ready for GPU training" + (f" ({len(warned)} warning{'s' if len(warned) > 1 else ''})."
                                                 if warned else "."))
    for text in summary:
        lines += textwrap.wrap(text, width=width, break_on_hyphens=False)
    return "\n".join(lines)
