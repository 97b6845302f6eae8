"""The run process and what it trains (imports torch): runner, loop, step, the models and the two
workloads, the optimizers, checkpoints, torchrun, export, HellaSwag scoring, bench and the GPU suite.

The cockpit (tui/) imports nothing from here; cli/ only from the commands that train, sample,
export, evaluate or benchmark.
"""
