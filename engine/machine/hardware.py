"""GPU facts without torch: a table of known GPUs, FLOPs arithmetic, NVIDIA presence (nvml.py).

Peak figures are dense (no 2:4 sparsity) tensor-core TFLOP/s for bf16/fp16 inputs with fp32
accumulation, which is what PyTorch's autocast matmuls use. GeForce cards run fp32-accumulate
at half their fp16-accumulate rate, so their figures here are half the headline number
(for Ada/Blackwell GeForce: SMs x boost clock x 512 FLOPs/clock/SM; Ampere GeForce likewise).
Data-centre and workstation cards run fp32-accumulate at full rate. V100 and T4 have no bf16:
their figure is fp16. Override with train.peak_tflops or $GPT2_COCKPIT_PEAK_TFLOPS.

Power is the board's default power limit (TGP/TDP) in watts, used for energy estimates when
NVML cannot tell (a GPU planned for with --gpu); memory is the card's VRAM in GiB, the size
vendors print as "GB".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .nvml import device_count


@dataclass(frozen=True)
class KnownGpu:
    key: str  # substring of the lower-cased device name; the first match in GPUS wins
    tflops: float  # dense bf16 (fp16 where there is no bf16) tensor TFLOP/s, fp32 accumulate
    watts: float | None  # default board power limit
    mem_gb: float | None  # VRAM, GiB; the largest variant where there are several (overridden by "40GB" in a name)
    bf16: bool = True  # Ampere (sm_80) and newer


# Order matters: the first substring found in the name wins, so specific names come first.
GPUS: list[KnownGpu] = [
    # Hopper. NVML names: "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL".
    KnownGpu("h200 nvl", 835.0, 600, 141),
    KnownGpu("gh200", 989.4, None, 96),  # superchip: the power limit covers CPU and GPU together
    KnownGpu("h200", 989.4, 700, 141),
    KnownGpu("h100 pcie", 756.0, 350, 80),
    KnownGpu("h100 nvl", 835.0, 400, 94),
    KnownGpu("h100", 989.4, 700, 80),  # SXM
    KnownGpu("h800 pcie", 756.0, 350, 80),
    KnownGpu("h800", 989.4, 700, 80),
    # Ampere / Ada data centre. "NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-40GB", "NVIDIA A100 80GB PCIe".
    KnownGpu("a100-pcie", 312.0, 250, 40),
    KnownGpu("a100 80gb pcie", 312.0, 300, 80),
    KnownGpu("a100", 312.0, 400, 80),  # SXM
    KnownGpu("a800", 312.0, 400, 80),
    KnownGpu("l40s", 362.1, 350, 48),
    KnownGpu("l40", 181.0, 300, 48),
    KnownGpu("l4", 121.0, 72, 24),
    KnownGpu("a10g", 70.0, 300, 24),  # AWS's A10 variant; NVIDIA publishes no figure, this is the one usually quoted
    KnownGpu("a10", 125.0, 150, 24),
    # Workstation (fp32 accumulate at full rate)
    KnownGpu("rtx 6000 ada", 364.2, 300, 48),
    KnownGpu("a6000", 154.8, 300, 48),
    # Older data centre: no bf16, fp16 tensor cores
    KnownGpu("v100", 125.0, 300, 32, bf16=False),
    KnownGpu("t4", 65.0, 70, 16, bf16=False),
    # GeForce Blackwell / Ada / Ampere: fp32-accumulate is half rate
    KnownGpu("rtx 5090", 209.5, 575, 32),
    KnownGpu("rtx 5080", 112.6, 360, 16),
    KnownGpu("rtx 5070 ti", 87.9, 300, 16),
    KnownGpu("rtx 5070", 61.7, 250, 12),
    KnownGpu("rtx 4090", 165.2, 450, 24),
    KnownGpu("rtx 4080 super", 104.4, 320, 16),
    KnownGpu("rtx 4080", 97.5, 320, 16),
    KnownGpu("rtx 4070 ti super", 88.2, 285, 16),
    KnownGpu("rtx 4070 ti", 80.2, 285, 12),
    KnownGpu("rtx 4070 super", 71.0, 220, 12),
    KnownGpu("rtx 4070", 58.3, 200, 12),
    KnownGpu("rtx 4060 ti", 44.1, 165, 16),
    KnownGpu("rtx 4060", 30.2, 115, 8),
    KnownGpu("rtx 3090 ti", 80.0, 450, 24),
    KnownGpu("rtx 3090", 71.0, 350, 24),
    KnownGpu("rtx 3080 ti", 68.2, 350, 12),
    KnownGpu("rtx 3080", 59.5, 320, 10),
    KnownGpu("rtx 3070 ti", 43.5, 290, 8),
    KnownGpu("rtx 3070", 40.6, 220, 8),
    KnownGpu("rtx 3060 ti", 32.4, 200, 8),
    KnownGpu("rtx 3060", 25.5, 170, 12),
]

# The same table in its older shape: (name substring, TFLOP/s).
PEAK_TFLOPS: list[tuple[str, float]] = [(g.key, g.tflops) for g in GPUS]


def _normalise(name: str) -> str:
    """Lower-case, 'NVIDIA GeForce RTX 4070 Ti' and 'rtx4070ti' alike: collapse spaces and
    put one between letters and digits, so users can type names loosely."""
    s = name.lower().replace("_", " ")
    s = re.sub(r"(?<=rtx)(?=\d)|(?<=\d)(?=ti\b)|(?<=\d)(?=super\b)", " ", s)
    return " ".join(s.split())


def known_gpu(device_name: str | None) -> KnownGpu | None:
    """The table entry for a device name (NVML's or a user's), or None.

    Laptop parts share desktop names ("RTX 4090 Laptop GPU") but have fewer SMs, lower clocks
    and lower power: the desktop figure would flatter them, so they count as unknown.
    """
    if not device_name:
        return None
    name = _normalise(device_name)
    if "laptop" in name or "mobile" in name or "max-q" in name:
        return None
    for gpu in GPUS:
        if gpu.key in name:
            return gpu
    return None


_WORDS = {"ti": "Ti", "super": "SUPER", "pcie": "PCIe", "ada": "Ada", "nvl": "NVL"}


def display_name(gpu: KnownGpu) -> str:
    """'rtx 4070 ti' -> 'RTX 4070 Ti', 'a100-pcie' -> 'A100-PCIE'."""
    return " ".join(_WORDS.get(w, w.upper()) for w in gpu.key.split())


def memory_gb_from_name(device_name: str) -> float | None:
    """'A100-SXM4-40GB' -> 40.0: names that carry their memory size beat the table.
    (Not for GH200, whose '480GB' counts the CPU's memory too.)"""
    if "gh200" in device_name.lower():
        return None
    m = re.search(r"(\d+)\s*gb", device_name.lower())
    return float(m.group(1)) if m else None


def peak_tflops(device_name: str | None, override: float = 0.0) -> float | None:
    """Peak TFLOP/s for MFU: the override, $GPT2_COCKPIT_PEAK_TFLOPS, or the table; None if unknown."""
    if override and override > 0:
        return float(override)
    env = os.environ.get("GPT2_COCKPIT_PEAK_TFLOPS")
    if env:
        try:
            return float(env)
        except ValueError:
            pass
    gpu = known_gpu(device_name)
    return gpu.tflops if gpu else None


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token: 6N for the weights (forward 2N, backward 4N) plus
    attention scores and weighted sums, 12·L·T·d (PaLM appendix B; nanoGPT's estimate_mfu).

    N is the parameter count without position embeddings (a lookup, no FLOPs) but with the
    token embedding, counted once: tied to the output layer, its matmul of 2·d·V per token
    forward is real work. The attention term counts the full T×T score matrix (q·k and
    weights·v, 2·T·d each, forward, times 3 for training); causal kernels skip half of it,
    but MFU figures everyone quotes use the full count, so we do too.
    """
    return 6.0 * n_params + 12.0 * n_layer * block_size * n_embd


def has_cuda() -> bool:
    """Is there an NVIDIA GPU the driver can see? (NVML, never torch.)"""
    return device_count() > 0
