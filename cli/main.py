"""`gpt2-cockpit`: the parser, and the edge where a user's mistake becomes one sentence.

Every command's arguments are declared here; commands.py does the work. Heavy imports (torch,
transformers, textual) happen inside the commands that need them, so `gpt2-cockpit runs` or
`pause` answer at once and the cockpit process never loads torch.
"""

from __future__ import annotations

import argparse
import sys

from gpt2_cockpit.engine import sampling
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.fsutil import quiet_broken_pipe
from gpt2_cockpit.engine.machine.planner import DEFAULT_MFU, PRICE_ENV
from gpt2_cockpit.engine.runs.launch import DEFAULT_MASTER_PORT

from . import commands, compare, evaluate

EPILOG = "Runs live under $GPT2_COCKPIT_HOME/runs (default ~/.local/share/gpt2-cockpit/runs)."


def _add_set(p: argparse.ArgumentParser, example: str = "train.learning_rate=3e-4") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one preset key, e.g. --set {example} (repeatable)")


def _add_mode(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--headless", action="store_true",
                   help="run in the foreground, one progress line per log interval; Ctrl-C checkpoints and stops")
    g.add_argument("--detach", action="store_true", help="run in the background; print the run name and return")


def _add_nodes(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "several machines",
        "Run the same command on every machine, each with its own --node-rank. Node 0 holds the run "
        "(its directory, config and checkpoints; watch it there); any other node joins it: it creates "
        "nothing, takes the config from node 0 (a preset or --set given on that machine is not used) "
        "and trains in the foreground, or in the background with --detach (its output in "
        "$GPT2_COCKPIT_HOME/nodes).")
    g.add_argument("--nnodes", type=int, default=1, metavar="N", help="machines training together (default 1)")
    g.add_argument("--node-rank", type=int, default=0, metavar="R", help="this machine's rank, 0 to N-1 (default 0)")
    g.add_argument("--master-addr", metavar="HOST", help="node 0's address, reachable from every machine")
    g.add_argument("--master-port", type=int, default=None, metavar="P",
                   help=f"a free TCP port on node 0, the same on every machine (default {DEFAULT_MASTER_PORT})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2-cockpit",
        description="Train GPT-2-class models on your own GPU, from one terminal. With no command: open the cockpit.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # in the order `gpt2-cockpit --help` lists them
    _add_run_commands(sub)
    _add_control_commands(sub)
    _add_machine_commands(sub)
    _add_model_commands(sub)
    _add_reading_commands(sub)
    return parser


def _add_run_commands(sub) -> None:
    """Starting a run and watching runs: train, attach, runs."""
    p = sub.add_parser("train", help="start a run (opens the cockpit attached to it unless --headless/--detach)")
    p.add_argument("preset", nargs="?", help="preset name or .toml path (default: shakespeare-char on CUDA, else cpu-tiny)")
    _add_set(p)
    p.add_argument("--name", help="run name (default: PRESET-DATE-TIME)")
    _add_mode(p)
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="GPUs on this machine to train on, through torchrun (data parallel)")
    _add_nodes(p)

    p = sub.add_parser("attach", help="open the cockpit attached to a run (default: the newest)")
    p.add_argument("run", nargs="?", help="run name or run directory")

    sub.add_parser("runs", help="list runs: name, preset, state, iter, last loss, age")


def _add_control_commands(sub) -> None:
    """A live run's remote control (resume also restarts a stopped one): pause, stop, checkpoint,
    resume, sample, set."""
    for name, text in (("pause", "pause a live run between steps"),
                       ("stop", "finish the current step, checkpoint and stop a live run"),
                       ("checkpoint", "write a checkpoint of a live run now")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="run name or run directory")

    p = sub.add_parser("resume", help="unpause a live run, or restart a stopped/crashed run from its last checkpoint")
    p.add_argument("run", help="run name or run directory")
    _add_set(p)
    _add_mode(p)
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="GPUs on this machine for the restarted run (default: as before; 1 per machine with --nnodes)")
    _add_nodes(p)

    p = sub.add_parser("sample", help="generate text from a live run's current weights (or its last checkpoint)")
    p.add_argument("run", help="run name or run directory")
    p.add_argument("prompt", nargs="?", default="", help="text to continue (default: empty)")
    p.add_argument("--max-new-tokens", type=int, default=sampling.MAX_NEW_TOKENS)
    p.add_argument("--temperature", type=float, default=sampling.TEMPERATURE)
    p.add_argument("--top-k", type=int, default=sampling.TOP_K)

    p = sub.add_parser("set", help="change live-tunable settings of a running run")
    p.add_argument("run", help="run name or run directory")
    p.add_argument("assignments", nargs="+", metavar="KEY=VALUE", help="e.g. train.learning_rate=1e-4")


def _add_machine_commands(sub) -> None:
    """This machine and what a run costs on it: doctor, plan, bench, presets."""
    p = sub.add_parser("doctor", help="environment diagnostics (exit 1 if a check needed for GPU training fails)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {id, name, status, detail, remedy}")
    p.add_argument("--online", action="store_true",
                   help="also probe whether the GPT-2 download sites answer (2-second timeouts)")

    p = sub.add_parser("plan", help="parameters, tokens, FLOPs, VRAM, hours and energy for a preset")
    # the default preset (shakespeare-char on a GPU, else cpu-tiny) is resolved when the command
    # runs, not here: this parser is built for every command, and asking NVML would slow them all
    p.add_argument("preset", nargs="?", default=None,
                   help="preset name or .toml path (default: shakespeare-char on a GPU, else cpu-tiny)")
    _add_set(p, "train.micro_batch=8")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--gpu", metavar="NAME", help='plan for a GPU you may not have, e.g. "RTX 4070 Ti", "A100 40GB", "H100"')
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs training together (DDP); default 1")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                   help=f"model FLOPs utilisation assumed for the time estimate (default {DEFAULT_MFU})")
    p.add_argument("--peak-tflops", type=float, default=0.0, metavar="X",
                   help="the GPU's dense bf16 TFLOP/s, instead of the built-in table")
    p.add_argument("--ms-per-iter", type=float, default=None, metavar="MS",
                   help="a measured pace (default: from the newest run of the same workload, if any)")
    p.add_argument("--price-per-kwh", type=float, default=None, metavar="PRICE",
                   help=f"electricity price for the cost row (default ${PRICE_ENV})")

    p = sub.add_parser("bench", help="time warmed-up training steps: ms/iter, tokens/s, MFU")
    p.add_argument("preset", nargs="?", help="preset name or .toml path (default: as for train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator; default 3)")
    p.add_argument("--real-data", action="store_true", help="read batches from the preset's corpus instead of random ids")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group(
        "the GPU suite",
        "--suite measures every GPU path in one run (about 6 minutes on one H100; tiny shapes in about 3 on "
        "a CPU): env, nvml, throughput, nanogpt, levers, memory, oom, sampling, resume, finetune, ddp. "
        "DIR/report.json and DIR/report.md are rewritten after every section.")
    g.add_argument("--suite", action="store_true", help="run the suite instead of timing one preset")
    g.add_argument("--out", metavar="DIR", default="gpt2-cockpit-suite",
                   help="where the report goes (default ./gpt2-cockpit-suite)")
    g.add_argument("--only", metavar="NAME,...", help="run these sections only (the report keeps the others)")
    g.add_argument("--nanogpt", metavar="DIR", help="a checkout of karpathy/nanoGPT to compare with (section nanogpt)")

    sub.add_parser("presets", help="list presets (shipped and your own)")


def _add_model_commands(sub) -> None:
    """A run's model and a preset's data: eval, export, prepare."""
    p = sub.add_parser("eval", help="HellaSwag acc and acc_norm of a run, a model folder or a hub name, beside GPT-2's")
    p.add_argument("target", metavar="TARGET",
                   help="a run (its newest checkpoint), a checkpoint file, a Hugging Face model folder (what "
                        "export writes) or a hub name such as gpt2 or gpt2-medium (needs the network once)")
    p.add_argument("--hellaswag", metavar="FILE",
                   help="a .jsonl in HellaSwag's format (default: its validation set, 10,042 items, downloaded once)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="score the first N items only")
    p.add_argument("--best", action="store_true", help="a run's best checkpoint by val loss, not its newest")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (acc, acc_norm, n, items_per_sec, reference, ...)")

    p = sub.add_parser("export", help="turn a pretrain checkpoint into a Hugging Face GPT-2 folder")
    p.add_argument("run", help="run name or run directory")
    p.add_argument("--to", required=True, metavar="DIR", help="folder to write (must be empty or new)")
    p.add_argument("--best", action="store_true", help="export the best checkpoint by val loss, not the newest")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR, replacing its model files")

    p = sub.add_parser("prepare", help="tokenize a preset's data into the token cache ahead of a run (resumable)")
    p.add_argument("preset", nargs="?", help="preset name or .toml path (default: as for train)")
    _add_set(p, "data.source=/data/fineweb-edu")
    p.add_argument("--source", metavar="SRC", help="the corpus (as data.source): a file, a folder, builtin:NAME, hf:NAME[:CONFIG]")
    p.add_argument("--tokenizer", choices=("char", "gpt2"), help="as data.tokenizer")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="tokenizing processes (default: CPU cores - 1)")


def _add_reading_commands(sub) -> None:
    """Runs read from their logs: compare, metrics, plot."""
    p = sub.add_parser("compare", help="runs side by side: state, iters, tokens, best val, speed, config keys that differ")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="two or more run names or run directories (default: the two newest runs)")
    p.add_argument("--json", action="store_true",
                   help='print one object: {"runs": [...], "differ": {key: {run: value}}, "best": name, '
                        '"best_hellaswag": name}')

    p = sub.add_parser("metrics", help="per-step and eval rows of a run (a table; --csv or --json for scripts)")
    p.add_argument("run", help="run name or run directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--csv", action="store_true",
                   help="one CSV, step rows, eval rows then HellaSwag rows, told apart by a 'kind' column "
                        "(step/eval/hellaswag)")
    g.add_argument("--json", action="store_true", help='print {"steps": [...], "evals": [...], "hellaswag": [...]}')

    p = sub.add_parser("plot", help="loss (or HellaSwag) curves of one or more runs as a PNG or SVG file")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run names or run directories")
    p.add_argument("--to", required=True, metavar="FILE", help="the image to write: FILE.png or FILE.svg")
    p.add_argument("--x", choices=("iter", "tokens", "time"), default="iter",
                   help="x axis: iterations, tokens trained, or active time (pauses left out); default iter")
    p.add_argument("--log", action="store_true", help="log-scale loss axis")
    p.add_argument("--metric", choices=("loss", "hellaswag"), default="loss",
                   help="loss (train and val), or hellaswag: acc_norm per evaluation with the GPT-2 "
                        "reference as a dashed line; default loss")


# command name -> the function in commands.py that carries it out (args) -> exit code
COMMANDS = {
    None: commands.cockpit_home,
    "train": commands.train,
    "resume": commands.resume,
    "attach": commands.attach,
    "runs": commands.list_runs,
    "pause": commands.pause,
    "stop": commands.stop,
    "checkpoint": commands.checkpoint,
    "sample": commands.sample,
    "set": commands.set_live,
    "doctor": commands.doctor,
    "plan": commands.plan,
    "bench": commands.bench,
    "presets": commands.list_presets,
    "eval": evaluate.evaluate,
    "export": commands.export,
    "prepare": commands.prepare,
    "compare": compare.compare,
    "metrics": compare.metrics_cmd,
    "plot": compare.plot,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # a reader gone meets us here, not in the interpreter's last flush
        return code
    except UserError as e:
        print(f"gpt2-cockpit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`gpt2-cockpit runs | head -1`): end quietly
        return quiet_broken_pipe()


if __name__ == "__main__":
    sys.exit(main())
