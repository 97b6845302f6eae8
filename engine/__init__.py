"""The headless core of gpt2-cockpit: the training engine, and everything about runs, data and the machine.

Its parts, one folder each (ARCHITECTURE.md maps every module):
  train/    the run process (torch): runner, loop, Stepper, optimizer, our GPT and the two workloads
            (pretrain; finetune, with LoRA), the run's owner, checkpoints, torchrun and the CPU share,
            export, HellaSwag scoring, the benchmark and the GPU suite
  data/     corpora to tokens (torch-free): sources, tokenizers, the shard cache, its preparation, the
            stream of shards a run reads, the finetune engine's packing
  runs/     the client side of a run (torch-free): run folders, the event log, the control socket,
            starting runs, metrics from the log
  machine/  facts about this machine and what a run costs on it: NVML, GPU readings, hardware
            tables, doctor, the planner, the memory tracker
and, at the top, what every part shares: config, presets, errors, paths, fmt, fsutil, sampling, and
faults (the failures the tests and the GPU suite inject through GPT2_COCKPIT_FAKE_*).

Nothing in this package imports textual, and nothing prints but train/runner.py, the run process's
main. The modules the cockpit imports (everything outside train/) never import torch at module
level either, so the viewer process stays light.
"""
