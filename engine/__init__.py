"""Headless core of gpt2-cockpit: the training engine and everything about runs, data and the machine.

Its parts, one folder each (ARCHITECTURE.md maps every module):
  train/    the run process (torch): runner, loop, step, models, workloads, checkpoints, torchrun,
            export, HellaSwag scoring, the benchmark and the GPU suite
  data/     corpora to tokens: sources, tokenizers, the shard cache, its preparation, the stream of
            shards a run reads, the finetune engine's packing (torch-free)
  runs/     the client side of a run (torch-free): run folders, the event log, the control socket,
            starting runs, metrics from the log
  machine/  facts about this machine and what a run will cost on it: NVML, GPU readings, hardware
            tables, doctor, the planner, the memory tracker
and, at the top, what every part shares: config, presets, errors, paths, fmt, fsutil, sampling.

Nothing in this package imports textual. The modules the cockpit imports (everything outside
train/) never import torch at module level either, so the viewer process stays light.
"""
