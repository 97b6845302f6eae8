"""gpt2-cockpit's command line. Thin: each command parses its arguments and calls the engine.

Heavy imports (torch, transformers, textual) happen inside the commands that need them, so
`gpt2-cockpit runs` or `pause` answer instantly and the cockpit process never loads torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UserError

EPILOG = "Runs live under $GPT2_COCKPIT_HOME/runs (default ~/.local/share/gpt2-cockpit/runs)."


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one preset key, e.g. --set train.learning_rate=3e-4 (repeatable)")


def _add_mode(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--headless", action="store_true",
                   help="run in the foreground, one progress line per log interval; Ctrl-C checkpoints and stops")
    g.add_argument("--detach", action="store_true", help="run in the background; print the run name and return")


def build_parser() -> argparse.ArgumentParser:
    from . import bench, doctor, export, planner

    parser = argparse.ArgumentParser(
        prog="gpt2-cockpit",
        description="Train GPT-2-class models on your own GPU, from one terminal. With no command: open the cockpit.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="start a run (opens the cockpit attached to it unless --headless/--detach)")
    p.add_argument("preset", nargs="?", help="preset name or .toml path (default: shakespeare-char on CUDA, else cpu-tiny)")
    _add_set(p)
    p.add_argument("--name", help="run name (default: PRESET-DATE-TIME)")
    _add_mode(p)
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs on this machine to train on, through torchrun (DDP)")

    p = sub.add_parser("attach", help="open the cockpit attached to a run (default: the newest)")
    p.add_argument("run", nargs="?", help="run name or run directory")

    sub.add_parser("runs", help="list runs: name, preset, state, iter, last loss, age")

    for name, text in (("pause", "pause a live run between steps"),
                       ("stop", "finish the current step, checkpoint and stop a live run"),
                       ("checkpoint", "write a checkpoint of a live run now")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="run name or run directory")

    p = sub.add_parser("resume", help="unpause a live run, or restart a stopped/crashed run from its last checkpoint")
    p.add_argument("run", help="run name or run directory")
    _add_set(p)
    _add_mode(p)
    p.add_argument("--gpus", type=int, default=None, metavar="N", help="GPUs for the restarted run (default: as before)")

    p = sub.add_parser("sample", help="generate text from a live run's current weights (or its last checkpoint)")
    p.add_argument("run", help="run name or run directory")
    p.add_argument("prompt", nargs="?", default="", help="text to continue (default: empty)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)

    p = sub.add_parser("set", help="change live-tunable settings of a running run")
    p.add_argument("run", help="run name or run directory")
    p.add_argument("assignments", nargs="+", metavar="KEY=VALUE", help="e.g. train.learning_rate=1e-4")

    p = sub.add_parser("doctor", help="environment diagnostics (exit 1 if a check needed for GPU training fails)")
    doctor.add_arguments(p)

    p = sub.add_parser("plan", help="parameters, tokens, FLOPs, VRAM, hours and energy for a preset")
    planner.add_arguments(p)

    p = sub.add_parser("bench", help="time warmed-up training steps: ms/iter, tokens/s, MFU")
    bench.add_arguments(p)

    sub.add_parser("presets", help="list presets (shipped and your own)")

    p = sub.add_parser("export", help="turn a pretrain checkpoint into a Hugging Face GPT-2 folder")
    export.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args) or 0
    except UserError as e:
        print(f"gpt2-cockpit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import launch

    cmd = args.command
    if cmd is None:
        return _cockpit("home")
    if cmd == "train":
        run = launch.create_run(args.preset, args.overrides, args.name)
        return _start(run, args, resume=False, gpus=args.gpus)
    if cmd == "resume":
        from .runs import resolve

        run = resolve(args.run)
        if run.alive():
            if args.overrides:
                raise UserError(f"run {run.name} is live; change its settings with 'gpt2-cockpit set {run.name} KEY=VALUE'")
            reply = launch.control(run, {"cmd": "resume"})
            print(f"{run.name}: {reply.get('state', 'running')}")
            return 0
        launch.prepare_restart(run, args.overrides)
        return _start(run, args, resume=True, gpus=args.gpus)
    if cmd == "attach":
        from .runs import resolve

        return _cockpit("run", run=str(resolve(args.run).path))
    if cmd == "runs":
        return launch.print_runs()
    if cmd in ("pause", "stop", "checkpoint"):
        return launch.simple_command(args.run, cmd)
    if cmd == "sample":
        return launch.sample(args.run, args.prompt, args.max_new_tokens, args.temperature, args.top_k)
    if cmd == "set":
        return launch.set_live(args.run, args.assignments)
    if cmd == "presets":
        return launch.print_presets()
    if cmd in ("doctor", "plan", "bench", "export"):
        import importlib

        module = importlib.import_module(f".{'planner' if cmd == 'plan' else cmd}", __package__)
        return module.run(args)
    parser.error(f"unknown command {cmd}")
    return 2


def _start(run, args: argparse.Namespace, resume: bool, gpus: int | None) -> int:
    from . import launch

    if args.headless:
        return launch.run_foreground(run, resume=resume, gpus=gpus)
    launch.spawn(run, resume=resume, gpus=gpus)
    if args.detach:
        print(run.name)
        return 0
    return _cockpit("run", run=str(run.path))


def _cockpit(mode: str, run: str | None = None) -> int:
    """Open the Textual cockpit (a separate import tree that never loads torch)."""
    if not sys.stdout.isatty() and not os.environ.get("GPT2_COCKPIT_FORCE_TUI"):
        hint = "; the run goes on: follow it with 'gpt2-cockpit runs'" if run else ""
        raise UserError(f"the cockpit needs a terminal (stdout is not a TTY){hint}")
    from gpt2_cockpit.tui.app import main as tui_main

    return tui_main(mode=mode, run=run)


if __name__ == "__main__":
    sys.exit(main())
