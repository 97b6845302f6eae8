"""Small helpers shared by engine tests: start runs in-process and read their events."""

from __future__ import annotations

from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.events import read_all
from gpt2_cockpit.engine.train import runner


def run_inprocess(corpus, name, extra=(), resume=False, **train):
    """Create (or restart) run `name` with a tiny model and train it in this process."""
    from conftest import tiny_overrides

    if resume:
        from gpt2_cockpit.engine.runs.rundir import resolve

        run = resolve(name)
        launch.prepare_restart(run, list(extra))
    else:
        run = launch.create_run("cpu-tiny", tiny_overrides(corpus, **train) + list(extra), name)
    code = runner.run_process(run.path, resume=resume)
    return run, code, read_all(run.events_path)


def of_type(events, type_):
    return [e for e in events if e["type"] == type_]


def step_losses(events):
    return {e["iter"]: e["loss"] for e in of_type(events, "step")}
