"""What each `gpt2-cockpit` command does: call the engine, print what it returns.

Each function takes the parsed arguments and returns the exit code. The engine computes and
never prints; this is where its results meet the user's terminal. A mistake the user can make
is raised as UserError and told in one sentence by main().
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine import presets, sampling
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.fmt import fmt_age
from gpt2_cockpit.engine.runs import launch
from gpt2_cockpit.engine.runs.rundir import RunDir, list_dirs, resolve, summarize

# --------------------------------------------------------------------------- starting runs


def train(args: argparse.Namespace) -> int:
    nodes = _nodes(args)
    if nodes.joins:
        return _join(args, nodes)
    run = launch.create_run(args.preset, args.overrides, args.name)
    return _start(run, args, resume=False, gpus=args.gpus, nodes=nodes)


def resume(args: argparse.Namespace) -> int:
    nodes = _nodes(args)
    if nodes.joins:  # the run lives on node 0; this machine only lends its GPUs
        return _join(args, nodes)
    run = resolve(args.run)
    if run.alive():
        if args.overrides:
            raise UserError(f"run {run.name} is live; change its settings with 'gpt2-cockpit set {run.name} KEY=VALUE'")
        events = launch.command(run, {"cmd": "resume"})
        print(f"{run.name}: {_state_after(run, events)}")
        return 0
    launch.prepare_restart(run, args.overrides)
    gpus = args.gpus
    if gpus is None:  # as before on one machine (the same tokens per step); one per machine otherwise
        gpus = launch.previous_gpus(run) if nodes.count == 1 else 1
    return _start(run, args, resume=True, gpus=gpus, nodes=nodes)


def _nodes(args: argparse.Namespace) -> launch.Nodes:
    nodes = launch.Nodes(args.nnodes, args.node_rank, args.master_addr, args.master_port)
    nodes.check()
    return nodes


def _start(run: RunDir, args: argparse.Namespace, resume: bool, gpus: int | None, nodes: launch.Nodes) -> int:
    if args.headless:
        return launch.run_foreground(run, resume=resume, gpus=gpus, nodes=nodes)
    launch.spawn(run, resume=resume, gpus=gpus, nodes=nodes)
    if args.detach:
        print(run.name)
        return 0
    return _cockpit("run", run=str(run.path))


def _join(args: argparse.Namespace, nodes: launch.Nodes) -> int:
    """A machine other than node 0: join its run (no cockpit here: the run lives on node 0)."""
    where = f"{nodes.master_addr}:{nodes.master_port or launch.DEFAULT_MASTER_PORT}"
    print(f"node {nodes.rank} of {nodes.count}: joining the run of node 0 at {where}; the config comes from "
          f"node 0, and so do its events and checkpoints (watch it there)", flush=True)
    gpus = args.gpus or 1
    if args.detach:
        log = launch.spawn_join(nodes, gpus)
        print(f"node {nodes.rank} trains in the background; its output goes to {log}")
        return 0
    return launch.run_foreground(None, resume=False, gpus=gpus, nodes=nodes)


# --------------------------------------------------------------------------- the cockpit


def cockpit_home(args: argparse.Namespace) -> int:
    return _cockpit("home")


def attach(args: argparse.Namespace) -> int:
    return _cockpit("run", run=str(resolve(args.run).path))


def _cockpit(mode: str, run: str | None = None) -> int:
    """Open the Textual cockpit (a separate import tree that never loads torch)."""
    if not sys.stdout.isatty() and not os.environ.get("GPT2_COCKPIT_FORCE_TUI"):
        hint = "; the run goes on: follow it with 'gpt2-cockpit runs'" if run else ""
        raise UserError(f"the cockpit needs a terminal (stdout is not a TTY){hint}")
    from gpt2_cockpit.tui.app import main as tui_main

    return tui_main(mode=mode, run=run)


# --------------------------------------------------------------------------- talking to a live run
# The run applies the command, logs what it did, then replies {"ok": true}: what to print is
# read from the events the command caused (launch.command returns them).


def pause(args: argparse.Namespace) -> int:
    return _change_state(args.run, "pause")


def stop(args: argparse.Namespace) -> int:
    return _change_state(args.run, "stop")


def _change_state(run_name: str, cmd: str) -> int:
    run = resolve(run_name)
    events = launch.command(run, {"cmd": cmd})
    print(f"{run.name}: {_state_after(run, events)}")
    return 0


def _state_after(run: RunDir, events: list[dict[str, Any]]) -> str:
    """The state the command's own `state` event names, else the state the log stands at."""
    state = _last(events, "state")
    return state["state"] if state else summarize(run).state


def checkpoint(args: argparse.Namespace) -> int:
    run = resolve(args.run)
    written = _last(launch.command(run, {"cmd": "checkpoint"}), "checkpoint")
    if written:
        print(f"{run.name}: checkpoint at iter {written.get('iter')} -> {written.get('path')}")
    else:
        print(f"{run.name}: checkpoint written")
    return 0


def set_live(args: argparse.Namespace) -> int:
    run = resolve(args.run)
    pairs = [cfgmod.parse_assignment(a) for a in args.assignments]
    for key, _ in pairs:
        if key not in cfgmod.LIVE_KEYS:
            raise UserError(f"{key} cannot change during a run (live keys: {', '.join(cfgmod.LIVE_KEYS)}); "
                            f"for a stopped run use 'gpt2-cockpit resume {run.name} --set {key}=...'")
    for key, value in pairs:
        changed = _last(launch.command(run, {"cmd": "set", "key": key, "value": value}), "set", key=key)
        if changed:
            print(f"{run.name}: {key} {changed.get('old')} -> {changed.get('new')}")
        else:
            print(f"{run.name}: {key} = {value}")
    return 0


def sample(args: argparse.Namespace) -> int:
    sampling.check(args.max_new_tokens, args.temperature, args.top_k, args.prompt)
    run = resolve(args.run)
    if run.alive():
        text = launch.sample_text(run, args.prompt, args.max_new_tokens, args.temperature, args.top_k)
    else:  # not live: generate from its newest checkpoint in this process (loads torch)
        from gpt2_cockpit.engine.train.runner import sample_from_checkpoint

        text = sample_from_checkpoint(run, args.prompt, args.max_new_tokens, args.temperature, args.top_k)
    print(text)
    return 0


def _last(events: list[dict[str, Any]], type: str, **match: Any) -> dict[str, Any] | None:
    """The newest event of this type whose fields equal `match`, or None."""
    for event in reversed(events):
        if event.get("type") == type and all(event.get(k) == v for k, v in match.items()):
            return event
    return None


# --------------------------------------------------------------------------- listings


def list_runs(args: argparse.Namespace) -> int:
    dirs = list_dirs()
    if not dirs:
        print("no runs yet; start one with 'gpt2-cockpit train'")
        return 0
    rows = [("NAME", "PRESET", "STATE", "ITER", "LOSS", "AGE")]
    for run in dirs:
        s = summarize(run)
        loss = f"{s.loss:.4f}" if isinstance(s.loss, (int, float)) else "-"
        rows.append((s.name, s.preset, s.state, f"{s.iter}/{s.max_iters}", loss, fmt_age(s.age)))
    print(table(rows))
    return 0


def table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns two spaces apart; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def list_presets(args: argparse.Namespace) -> int:
    infos = presets.available()
    width = max(len(i.name) for i in infos)
    for info in infos:
        try:
            desc = cfgmod.load(info.path).description
        except UserError as e:
            desc = f"(invalid: {e})"
        tag = "" if info.origin == "shipped" else " [user]"
        print(f"{info.name.ljust(width)}  {desc}{tag}")
    return 0


# --------------------------------------------------------------------------- the machine and the model


def doctor(args: argparse.Namespace) -> int:
    from gpt2_cockpit.engine.machine import doctor as diagnostics  # imports torch to ask it about CUDA

    checks = diagnostics.run_checks(online=args.online)
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(diagnostics.format_checks(checks, width=_width(), color=color))
    return diagnostics.exit_code(checks)


def plan(args: argparse.Namespace) -> int:
    from gpt2_cockpit.engine.machine import planner

    # the default preset is resolved here, not at parse time: it asks NVML, which `plan X` needn't
    cfg = presets.load(args.preset or presets.default_name(), args.overrides)
    if args.peak_tflops < 0:
        raise UserError(f"--peak-tflops {args.peak_tflops}: expected a positive number")
    peak_override = args.peak_tflops or cfg.train.peak_tflops
    if args.gpu:
        gpu = planner.GpuSpec.named(args.gpu, peak_override)
    elif cfg.train.device == "cpu":
        gpu = None
    else:
        gpu = planner.GpuSpec.detect(peak_override=peak_override)
    ms, source = args.ms_per_iter, "--ms-per-iter"
    if ms is None and not args.gpu:  # a pace measured here says nothing about a GPU we don't have
        found = planner.measured_ms_per_iter(cfg, args.gpus)
        if found:
            ms, source = found
    result = planner.plan_run(cfg, gpu=gpu, world_size=args.gpus, mfu=args.mfu, ms_per_iter=ms,
                               price_per_kwh=args.price_per_kwh, measured_from=source)
    print(json.dumps(result.to_dict(), indent=2) if args.json else planner.format_rows(result.rows()))
    return 0


def bench(args: argparse.Namespace) -> int:
    if args.suite:
        return _suite(args)
    if args.only or args.nanogpt:
        raise UserError("--only and --nanogpt belong to --suite")
    from gpt2_cockpit.engine.train import bench as benchmark  # imports torch

    cfg = presets.load(args.preset or presets.default_name(), args.overrides)
    result = benchmark.measure(cfg, args.steps, args.warmup, args.real_data,
                               log=(lambda line: None) if args.json else print)
    print(json.dumps(result) if args.json else benchmark.format_result(result))
    return 0


def _suite(args: argparse.Namespace) -> int:
    """bench --suite: a progress line per section, the summary, where the report is; exit 1 when a
    section failed."""
    if args.preset or args.overrides or args.real_data or args.json:
        raise UserError("--suite runs its own presets and writes its report to --out DIR: "
                        "leave out PRESET, --set, --real-data and --json")
    from gpt2_cockpit.engine.train import suite, suite_sections  # imports torch

    only = suite.parse_only(args.only)
    out = Path(args.out).expanduser()
    command = "gpt2-cockpit " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "gpt2-cockpit bench --suite"
    report = suite.run_suite(out, suite_sections.SECTIONS, only=only, nanogpt=Path(args.nanogpt) if args.nanogpt else None,
                             command=command, log=lambda line: print(line, flush=True))
    print()
    print(table([("SECTION", "STATUS", "SECONDS", "REASON")]
                + [(s.name, s.status, f"{s.seconds:.1f}", s.reason[:70]) for s in report.sections]))
    print(f"\n{report.header['seconds']:.0f} s; the report: {out / 'report.md'} and {out / 'report.json'}")
    return 1 if any(s.status == "failed" for s in report.sections) else 0


def export(args: argparse.Namespace) -> int:
    from gpt2_cockpit.engine.train.export import export_run# imports torch and transformers

    run = resolve(args.run)
    dest = Path(args.to).expanduser()
    what = export_run(run, dest, best=args.best, force=args.force, warn=_warn)
    print(f"exported {run.name} ({what}) to {dest}; load it with "
          f"transformers.pipeline(\"text-generation\", model=\"{dest}\")")
    return 0


def prepare(args: argparse.Namespace) -> int:
    """Tokenize a preset's corpus into the token cache: one updating progress line, then a summary."""
    import time

    from gpt2_cockpit.engine.data import sources
    from gpt2_cockpit.engine.data import prepare as prep

    overrides = list(args.overrides)
    if args.source:
        overrides.append(f"data.source={json.dumps(args.source)}")
    if args.tokenizer:
        overrides.append(f"data.tokenizer={json.dumps(args.tokenizer)}")
    cfg = presets.load(args.preset or presets.default_name(), overrides)
    if cfg.engine != "pretrain":
        raise UserError(f"preset {cfg.name} is a finetune preset: its data is tokenized with its model's tokenizer "
                        f"when the run starts; prepare takes a pretrain preset")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected at least 1")
    d = cfg.data
    source = d.source
    if not source.startswith(("builtin:", "hf:", "url:")):
        sources.source_identity(source)  # 'does not exist' in one sentence
        source = str(Path(source).expanduser().resolve())
    workers = args.workers or d.workers or prep.default_workers()
    shard_tokens = d.shard_tokens
    line = _ProgressLine()
    start = time.monotonic()
    try:
        folder = prep.prepare_tokens(source, d.tokenizer, d.val_fraction, d.text_column, workers=workers,
                                     shard_tokens=shard_tokens, say=line.say, on_progress=line.show)
    finally:
        line.end()
    if line.shown:  # the engine's own summary line was printed: say where and how long
        print(f"token shards in {folder} ({time.monotonic() - start:,.1f} s with {workers} worker(s))")
    else:
        meta = json.loads((folder / "meta.json").read_text())
        print(f"{source} ({d.tokenizer}) is already prepared: {meta['n_train']:,} train and {meta['n_val']:,} val "
              f"tokens in {folder}")
    return 0


class _ProgressLine:
    """One line rewritten in place with \\r on a terminal; elsewhere a line every 10 seconds."""

    def __init__(self):
        from gpt2_cockpit.engine.data.prepare import _text_progress, format_progress

        self.tty = sys.stdout.isatty()
        self.format = format_progress
        self.plain = _text_progress(self.say)
        self.shown = False
        self.width = 0

    def show(self, p) -> None:
        if p.phase == "done":
            return
        self.shown = True
        if not self.tty:
            self.plain(p)
            return
        text = self.format(p)[:_width() - 1]
        sys.stdout.write("\r" + text.ljust(self.width))
        sys.stdout.flush()
        self.width = len(text)

    def say(self, message: str) -> None:
        self.end()
        print(message, flush=True)

    def end(self) -> None:
        if self.tty and self.width:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.width = 0


def _warn(message: str) -> None:
    print(f"gpt2-cockpit: {message}", file=sys.stderr)


def _width() -> int:
    return min(shutil.get_terminal_size((80, 24)).columns, 100)
