"""GPU facts without torch: peak throughput table, FLOPs arithmetic, NVIDIA presence.

Peak figures are dense (no 2:4 sparsity) tensor-core TFLOP/s for bf16/fp16 inputs with fp32
accumulation, which is what PyTorch's autocast matmuls use. GeForce cards run fp32-accumulate
at half their fp16-accumulate rate, so their figures here are half the headline number.
Override with train.peak_tflops or $GPT2_COCKPIT_PEAK_TFLOPS.
"""

from __future__ import annotations

import os

# (substring of the device name, lower-case) -> dense bf16/fp16 TFLOP/s, fp32 accumulate.
# Order matters: the first substring found in the name wins, so specific names come first.
PEAK_TFLOPS: list[tuple[str, float]] = [
    ("h200", 989.4),
    ("gh200", 989.4),
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.4),  # SXM
    ("h800", 989.4),
    ("a100", 312.0),
    ("a800", 312.0),
    ("l40s", 362.1),
    ("l40", 181.0),
    ("l4", 121.0),
    ("a10g", 70.0),
    ("a10", 125.0),
    ("a6000 ada", 364.2),
    ("rtx 6000 ada", 364.2),
    ("a6000", 154.8),
    ("v100", 125.0),
    ("t4", 65.0),
    ("rtx 4090", 165.2),
    ("rtx 4080 super", 104.4),
    ("rtx 4080", 97.5),
    ("rtx 4070 ti super", 88.2),
    ("rtx 4070 ti", 80.2),
    ("rtx 4070 super", 70.8),
    ("rtx 4070", 58.3),
    ("rtx 4060 ti", 44.1),
    ("rtx 4060", 30.2),
    ("rtx 3090 ti", 80.0),
    ("rtx 3090", 71.0),
    ("rtx 3080 ti", 68.2),
    ("rtx 3080", 59.5),
    ("rtx 3070 ti", 43.5),
    ("rtx 3070", 40.6),
    ("rtx 3060 ti", 32.4),
    ("rtx 3060", 25.5),
    ("rtx 5090", 209.5),
    ("rtx 5080", 112.6),
]


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
    if not device_name:
        return None
    name = device_name.lower()
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops
    return None


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token: 6N for the weights (forward 2N, backward 4N) plus
    attention scores and weighted sums, 12·L·T·d (PaLM appendix B; nanoGPT's estimate_mfu)."""
    return 6.0 * n_params + 12.0 * n_layer * block_size * n_embd


def has_cuda() -> bool:
    """Is there an NVIDIA GPU the driver can see? (NVML; no torch import.)"""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False
