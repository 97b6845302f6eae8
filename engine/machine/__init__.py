"""Facts about this machine and what a run will cost on it (torch-free at import): NVML and GPU
readings, hardware tables (peak TFLOP/s, FLOPs per token), doctor's checks, the planner, and
the memory tracker that checks the planner's VRAM on fake tensors.
"""
