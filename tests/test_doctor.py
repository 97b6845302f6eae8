"""`gpt2-cockpit doctor` on every kind of machine, with a fake NVML and a fake torch.cuda."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_gpustats import FakeNvml, rtx_4070_ti  # noqa: E402

from gpt2_cockpit.engine.machine import doctor  # noqa: E402
from gpt2_cockpit.engine.machine.doctor import exit_code, format_checks, run_checks  # noqa: E402

GIB = 1024 ** 3
GOOD_VERSIONS = {"torch": "2.5.1+cu124", "transformers": "4.46.3", "datasets": "3.1.0", "tiktoken": "0.8.0",
                 "textual": "0.86.0", "nvidia-ml-py": "12.560.30", "numpy": "2.1.0"}
REQUIRED = {"nvidia_driver", "cuda_versions", "torch_cuda", "gpu", "packages", "disk"}


def fake_torch(available=True, cuda="12.4", version="2.5.1+cu124", cc=(8, 9), name="NVIDIA GeForce RTX 4070 Ti",
               bf16_native=True, flash=True, mem_efficient=True, cudnn=90100, warning=None,
               arch=("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")):
    """A torch module as far as the doctor looks: torch.cuda, torch.version, torch.backends."""

    def is_available():
        if warning:
            warnings.warn(warning)  # how real torch explains a failed CUDA init
        return available

    def is_bf16_supported(including_emulation=True):
        return available and (bf16_native or including_emulation)

    cuda_mod = SimpleNamespace(
        is_available=is_available, device_count=lambda: 1 if available else 0,
        get_device_name=lambda i=0: name, get_device_capability=lambda i=0: cc,
        is_bf16_supported=is_bf16_supported, mem_get_info=lambda i=0: (11 * 1024 ** 3, 12 * 1024 ** 3),
        get_arch_list=lambda: list(arch) if cuda else [],
    )
    backends = SimpleNamespace(
        cudnn=SimpleNamespace(version=lambda: cudnn if cuda else None),
        cuda=SimpleNamespace(flash_sdp_enabled=lambda: flash, mem_efficient_sdp_enabled=lambda: mem_efficient,
                             is_flash_attention_available=lambda: bool(cuda)),
    )
    return SimpleNamespace(__version__=version, version=SimpleNamespace(cuda=cuda), cuda=cuda_mod, backends=backends)


def cpu_torch():
    return fake_torch(available=False, cuda=None, version="2.5.1+cpu")


def free_disk(monkeypatch, gib: float) -> None:
    """This machine's disk, as the doctor sees it, has `gib` GiB free."""
    monkeypatch.setattr(doctor, "_free_bytes", lambda where: int(gib * GIB))


@pytest.fixture
def roomy_disk(monkeypatch):
    """200 GiB free: the disk check passes whatever this machine's disk holds."""
    free_disk(monkeypatch, 200)


def checks(nvml, torch_mod, tmp_path, versions=GOOD_VERSIONS, **kw):
    return {c.id: c for c in run_checks(nvml, torch_mod, runs_path=tmp_path / "runs", versions=versions, **kw)}


def assert_honest(cs):
    """Every check that is not a pass says what to do about it."""
    for c in cs.values():
        assert c.status in ("pass", "warn", "fail")
        assert c.detail
        if c.status != "pass":
            assert c.remedy, f"{c.id} has no remedy"


def test_box_without_nvidia_fails_plainly(tmp_path):
    cs = checks(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), cpu_torch(), tmp_path)
    assert_honest(cs)
    failed = {i for i, c in cs.items() if c.status == "fail"}
    assert failed == {"nvidia_driver", "cuda_versions", "torch_cuda", "gpu"}
    assert all(cs[i].required for i in failed)
    assert "no NVIDIA GPU" in cs["nvidia_driver"].detail and "535" in cs["nvidia_driver"].remedy
    assert "CPU-only build" in cs["cuda_versions"].detail
    assert "download.pytorch.org/whl/cu" in cs["cuda_versions"].remedy
    for i in ("bf16", "sdpa", "cudnn", "gpu_processes"):
        assert cs[i].status == "warn" and "not checked" in cs[i].detail
    assert exit_code(list(cs.values())) == 1
    text = format_checks(list(cs.values()))
    assert "[FAIL] NVIDIA driver" in text and "\n  -> " in text
    assert "cpu-tiny" in text  # says what this machine can do instead
    assert max(len(line) for line in text.splitlines() if "/" not in line) <= 80  # paths are not broken


def test_pynvml_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr("gpt2_cockpit.engine.machine.nvml.import_nvml", lambda: None)
    cs = checks(None, cpu_torch(), tmp_path)
    assert cs["nvidia_driver"].status == "fail" and "nvidia-ml-py" in cs["nvidia_driver"].remedy


def test_driver_not_loaded(tmp_path):
    cs = checks(FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED), cpu_torch(), tmp_path)
    assert cs["nvidia_driver"].status == "fail" and "not loaded" in cs["nvidia_driver"].detail


def test_good_4070_ti_box_passes(tmp_path, monkeypatch, roomy_disk):
    monkeypatch.setattr(doctor, "_hf_cached", lambda repos, files: (True, "gpt2 in the cache"))
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    import hashlib

    for url in doctor.TIKTOKEN_GPT2_URLS:
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_text("x")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    cs = checks(FakeNvml([rtx_4070_ti()]), fake_torch(), tmp_path)
    bad = {i: (c.status, c.detail) for i, c in cs.items() if c.status != "pass"}
    assert bad == {}
    assert "driver 550.54.15, 1 GPU" == cs["nvidia_driver"].detail
    assert "CUDA 12.4" in cs["cuda_versions"].detail and "fit" in cs["cuda_versions"].detail
    assert "RTX 4070 Ti, sm_89, 12.0 GiB, 2.0 free" in cs["gpu"].detail
    assert cs["cudnn"].detail == "9.1.0"
    assert cs["gpu_processes"].detail == "none"
    assert cs["disk"].detail == f"200.0 GiB free at {tmp_path} (for {tmp_path / 'runs'})"
    assert exit_code(list(cs.values())) == 0


def test_old_driver_525_fails_with_remedy(tmp_path):
    cs = checks(FakeNvml([rtx_4070_ti()], driver="525.147.05", cuda=12000),
                fake_torch(cuda="12.1", version="2.5.1+cu121"), tmp_path)
    assert cs["nvidia_driver"].status == "fail"
    assert "525.147.05" in cs["nvidia_driver"].detail and ">= 535" in cs["nvidia_driver"].remedy
    # a CUDA 12.1 build on a CUDA 12.0 driver: minor-version compatibility, a warning
    assert cs["cuda_versions"].status == "warn" and "minor-version" in cs["cuda_versions"].detail
    assert exit_code(list(cs.values())) == 1


def test_cuda_build_newer_than_driver_major_fails(tmp_path):
    cs = checks(FakeNvml([rtx_4070_ti()], driver="535.183.01", cuda=12020),
                fake_torch(cuda="13.0", version="2.9.0+cu130", available=False,
                           warning="CUDA initialization: The NVIDIA driver on your system is too old"), tmp_path)
    c = cs["cuda_versions"]
    assert c.status == "fail" and "12.2" in c.detail and "13.0" in c.detail
    assert "whl/cu121" in c.remedy  # the newest build a CUDA 12.2 driver runs
    assert cs["torch_cuda"].status == "fail" and "too old" in cs["torch_cuda"].detail
    assert exit_code(list(cs.values())) == 1


def test_cuda_build_newer_minor_is_a_warning(tmp_path):
    cs = checks(FakeNvml([rtx_4070_ti()], driver="535.183.01", cuda=12020),
                fake_torch(cuda="12.4"), tmp_path)
    assert cs["cuda_versions"].status == "warn" and cs["cuda_versions"].remedy
    assert cs["nvidia_driver"].status == "pass"


def test_cpu_torch_on_a_gpu_box_points_at_the_right_wheel(tmp_path):
    cs = checks(FakeNvml([rtx_4070_ti()], cuda=12060), cpu_torch(), tmp_path)
    assert cs["cuda_versions"].status == "fail" and "whl/cu126" in cs["cuda_versions"].remedy
    assert cs["torch_cuda"].status == "fail" and "CPU-only" in cs["torch_cuda"].detail
    assert cs["gpu"].status == "pass"  # NVML still sees the card


def test_gpu_newer_than_the_torch_build(tmp_path):
    nvml = FakeNvml([rtx_4070_ti(name="NVIDIA GeForce RTX 5090", cc=(12, 0))], driver="570.86.10", cuda=12080)
    cs = checks(nvml, fake_torch(cc=(12, 0), name="NVIDIA GeForce RTX 5090"), tmp_path)
    assert cs["torch_cuda"].status == "fail" and "sm_120" in cs["torch_cuda"].detail
    assert "cu128" in cs["torch_cuda"].remedy


def test_sm86_runs_sm80_binaries(tmp_path):
    cs = checks(FakeNvml([rtx_4070_ti(name="NVIDIA GeForce RTX 3090", cc=(8, 6))]),
                fake_torch(cc=(8, 6), arch=("sm_80", "sm_90")), tmp_path)
    assert cs["torch_cuda"].status == "pass"


def test_turing_t4_warns_on_bf16_and_flash(tmp_path):
    nvml = FakeNvml([rtx_4070_ti(name="Tesla T4", cc=(7, 5), mem_total=15360 * 1024 ** 2)])
    cs = checks(nvml, fake_torch(cc=(7, 5), name="Tesla T4", bf16_native=False), tmp_path)
    assert cs["bf16"].status == "warn" and "fp16" in cs["bf16"].remedy  # emulated bf16 does not count
    assert cs["sdpa"].status == "warn" and "memory-efficient" in cs["sdpa"].detail
    assert not cs["bf16"].required and not cs["sdpa"].required
    assert cs["gpu"].status == "pass"


def test_sdpa_all_fused_kernels_disabled(tmp_path):
    cs = checks(FakeNvml([rtx_4070_ti()]), fake_torch(flash=False, mem_efficient=False), tmp_path)
    assert cs["sdpa"].status == "warn" and "math" in cs["sdpa"].detail


def test_other_processes_on_the_gpu_warn(tmp_path):
    nvml = FakeNvml([rtx_4070_ti(procs=[(4242, 3 * 1024 ** 3), (os.getpid(), 1024 ** 3)])],
                    process_names={4242: "/usr/bin/python3"})
    c = checks(nvml, fake_torch(), tmp_path)["gpu_processes"]
    assert c.status == "warn" and "pid 4242 python3 3.0 GiB" in c.detail
    assert str(os.getpid()) not in c.detail  # our own process is not "other"


def test_process_list_not_supported(tmp_path):
    c = checks(FakeNvml([rtx_4070_ti(procs=None)]), fake_torch(), tmp_path)["gpu_processes"]
    assert c.status == "warn" and "will not list" in c.detail


def test_nvml_missing_but_cuda_works(tmp_path, roomy_disk):
    # containers without libnvidia-ml.so: torch trains, the doctor must not say it cannot
    cs = checks(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), fake_torch(), tmp_path)
    assert cs["nvidia_driver"].status == "warn"
    assert cs["cuda_versions"].status == "warn"
    assert cs["gpu"].status == "pass" and "RTX 4070 Ti" in cs["gpu"].detail  # from torch
    assert cs["disk"].status == "pass"
    assert exit_code(list(cs.values())) == 0  # warnings only: training works


def test_cuda_visible_devices_hiding_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    c = checks(FakeNvml([rtx_4070_ti()]), fake_torch(available=False), tmp_path)["torch_cuda"]
    assert c.status == "fail" and "CUDA_VISIBLE_DEVICES" in c.detail and "unset" in c.remedy


def test_a_crashing_check_becomes_a_fail_not_a_traceback(tmp_path):
    torch_mod = fake_torch()

    def boom():
        raise RuntimeError("CUDA error: unspecified launch failure\nmore lines")

    torch_mod.cuda.device_count = boom
    cs = checks(FakeNvml([rtx_4070_ti()]), torch_mod, tmp_path)
    c = cs["torch_cuda"]
    assert c.status == "fail" and c.detail == "the check itself failed: RuntimeError: CUDA error: unspecified launch failure"
    assert len(cs) == len(doctor.CHECKS)  # the rest still ran


def test_a_crashing_nvml_is_contained(tmp_path):
    nvml = FakeNvml([rtx_4070_ti()])
    nvml.nvmlDeviceGetCount = lambda: (_ for _ in ()).throw(pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN))
    cs = checks(nvml, cpu_torch(), tmp_path)
    assert cs["nvidia_driver"].status == "fail" and "Unknown" in cs["nvidia_driver"].detail
    assert cs["gpu"].status == "fail"


def test_torch_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    versions = dict(GOOD_VERSIONS, torch=None)
    cs = checks(FakeNvml([rtx_4070_ti()]), None, tmp_path, versions=versions)
    assert cs["torch_cuda"].status == "fail" and cs["cuda_versions"].status == "fail"
    assert cs["packages"].status == "fail" and "torch missing" in cs["packages"].detail


def test_old_packages_warn(tmp_path):
    versions = dict(GOOD_VERSIONS, transformers="4.30.2", tiktoken=None)
    c = checks(FakeNvml([rtx_4070_ti()]), fake_torch(), tmp_path, versions=versions)["packages"]
    assert c.status == "warn" and "'transformers>=4.46'" in c.remedy and "'tiktoken'" in c.remedy


def test_disk_space_thresholds(tmp_path, monkeypatch):
    for free_gib, status in ((0.5, "fail"), (8, "warn"), (200, "pass")):
        free_disk(monkeypatch, free_gib)
        c = checks(FakeNvml([rtx_4070_ti()]), fake_torch(), tmp_path)["disk"]
        assert c.status == status and c.required
        assert str(tmp_path) in c.detail  # the nearest existing parent of runs/


def test_python_version():
    p = doctor._Probe(python=(3, 10, 4))
    assert doctor.check_python(p).status == "fail"
    assert doctor.check_python(doctor._Probe(python=(3, 12, 1))).status == "pass"


def test_tokenizer_not_cached_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(doctor, "_hf_cached", lambda repos, files: (False, str(tmp_path / "hf")))
    monkeypatch.setattr(doctor, "_reachable", lambda url, timeout=2.0: pytest.fail("went online"))
    cs = checks(FakeNvml([rtx_4070_ti()]), fake_torch(), tmp_path)
    assert cs["gpt2_tokenizer"].status == "warn" and "HF_HUB_OFFLINE" in cs["gpt2_tokenizer"].remedy
    assert cs["gpt2_weights"].status == "warn" and not cs["gpt2_weights"].required


def test_online_probe_is_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(doctor, "_hf_cached", lambda repos, files: (False, "cache"))
    asked = []
    monkeypatch.setattr(doctor, "_reachable", lambda url, timeout=2.0: asked.append((url, timeout)) or False)
    cs = checks(FakeNvml([rtx_4070_ti()]), fake_torch(), tmp_path, online=True)
    assert asked and all(t <= 2.0 for _, t in asked)
    assert "NOT reachable" in cs["gpt2_weights"].detail


def test_json_shape():
    cs = run_checks(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), cpu_torch(), versions=GOOD_VERSIONS)
    rows = json.loads(json.dumps([c.to_dict() for c in cs]))
    assert {"id", "name", "status", "detail", "remedy"} <= set(rows[0])
    assert {r["id"] for r in rows if r["required"]} == REQUIRED


# ---------------------------------------------------------------- the real command, on this machine


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gpt2_cockpit.cli", "doctor", *args],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


def test_doctor_command_on_this_machine():
    from gpt2_cockpit.engine.machine.hardware import has_cuda

    if has_cuda():
        pytest.skip("this machine has an NVIDIA GPU")
    proc = _cli()
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "[FAIL] NVIDIA driver" in proc.stdout and "  -> " in proc.stdout

    proc = _cli("--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rows = {r["id"]: r for r in json.loads(proc.stdout)}
    assert rows["nvidia_driver"]["status"] == "fail" and rows["nvidia_driver"]["remedy"]
