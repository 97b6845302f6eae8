"""Deciding between runs: `compare`, `metrics` and `plot`. Read-only: they read run logs and
configs through engine/runs/metrics.py (no torch) and print; `plot` writes one image file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.fmt import NA, fmt_count, fmt_duration, fmt_float, fmt_lr, fmt_mfu, fmt_ms
from gpt2_cockpit.engine.runs import metrics
from gpt2_cockpit.engine.runs.rundir import RunDir, list_dirs, resolve

from .commands import table

PLOT_SUFFIXES = (".png", ".svg")
SMOOTHING = 0.6  # EMA weight of the train curve: light, as the cockpit's default
PLOT_INSTALL = 'pip install "gpt2-cockpit[plot]"'


def _distinct_runs(names: list[str]) -> list[RunDir]:
    """Resolve each RUN; the same run named twice (or two runs of one name) is a mistake."""
    runs: list[RunDir] = []
    for name in names:
        run = resolve(name)
        for seen in runs:
            if seen.path == run.path:
                raise UserError(f"run {run.name} is named twice; give different runs")
            if seen.name == run.name:
                raise UserError(f"two runs are named {run.name} ({seen.path} and {run.path}); rename one")
        runs.append(run)
    return runs


# --------------------------------------------------------------------------- compare


def _newest_two() -> list[RunDir]:
    """The two newest runs (as `attach` picks the newest), for `compare` with no run names."""
    newest = list_dirs()[:2]
    if len(newest) < 2:
        have = f"there is only {newest[0].name}" if newest else "there are no runs yet"
        raise UserError(f"compare needs two runs and {have} (give run names: gpt2-cockpit compare RUN RUN...)")
    print(f"comparing the two newest runs, {newest[0].name} and {newest[1].name} "
          f"(name the runs to compare others: gpt2-cockpit compare RUN RUN...)", file=sys.stderr)
    return newest


def compare(args: argparse.Namespace) -> int:
    if len(args.runs) == 1:
        raise UserError("compare needs at least two runs (see 'gpt2-cockpit runs')")
    runs = _distinct_runs(args.runs) if args.runs else _newest_two()
    stats = [metrics.load(run, every_step=False).stats for run in runs]
    differ = metrics.config_diff({s.name: s.config for s in stats}, {s.name: s.changes for s in stats})
    best = metrics.best_run(stats)
    best_hellaswag = metrics.best_hellaswag_run(stats)
    if args.json:
        print(json.dumps({"runs": [s.to_dict() for s in stats], "differ": differ,
                          "best": best.name if best else None,
                          "best_hellaswag": best_hellaswag.name if best_hellaswag else None}, indent=2))
        return 0
    hellaswag = best_hellaswag is not None  # the column only where a run scored HellaSwag
    rows = [("RUN", "STATE", "ITERS", "TOKENS", "BEST VAL") + (("ACC_NORM",) if hellaswag else ())
            + ("TRAIN LOSS", "TOK/S", "WALL")]
    for s in stats:
        best_val = f"{fmt_float(s.best_val_loss)} @{s.best_val_iter}" if s.best_val_loss is not None else NA
        rows.append((s.name, s.state, f"{s.iter}/{s.max_iters}", fmt_count(s.tokens), best_val)
                    + ((acc_norm_cell(s),) if hellaswag else ())
                    + (fmt_float(s.last_train_loss), fmt_count(s.tokens_per_sec), fmt_duration(s.wall_seconds)))
    print(table(rows))
    print()
    if best:
        print(f"best val loss: {best.name} ({fmt_float(best.best_val_loss)} at iter {best.best_val_iter})")
    else:
        print("best val loss: none of these runs has evaluated yet")
    if best_hellaswag:
        print(f"best HellaSwag acc_norm: {best_hellaswag.name} ({best_hellaswag.best_acc_norm:.4f} at iter "
              f"{best_hellaswag.best_acc_norm_iter}){reference_text(best_hellaswag)}")
    print()
    if not differ:
        print("config keys that differ: none")
        return 0
    print("config keys that differ:")
    rows = [("KEY",) + tuple(s.name for s in stats)]
    rows += [(key,) + tuple(metrics.value_history(values[s.name], s.changes, key) for s in stats)
             for key, values in differ.items()]
    print(table(rows))
    if any(c.key in differ for s in stats for c in s.changes):
        print("\na → b @N: changed during the run, after N steps: live ('gpt2-cockpit set'), or (oom) an\n"
              "out-of-memory split, or (resume) a restart with --set")
    return 0


def acc_norm_cell(s: metrics.RunStats) -> str:
    """A run's best HellaSwag acc_norm and its iteration ("0.2710 @500"), or N/A."""
    return f"{s.best_acc_norm:.4f} @{s.best_acc_norm_iter}" if s.best_acc_norm is not None else NA


def reference_text(s: metrics.RunStats) -> str:
    """ "; GPT-2 124M: 0.2955" (the GPT-2 size nearest the run's model), or nothing."""
    if s.hellaswag_reference is None or s.hellaswag_reference_acc_norm is None:
        return ""
    return f"; {s.hellaswag_reference}: {s.hellaswag_reference_acc_norm:.4f}"


# --------------------------------------------------------------------------- metrics

# one CSV for every kind of row (step, eval, hellaswag), so pandas.read_csv takes it at once;
# blank where a kind has no value
CSV_FIELDS = ("kind",) + tuple(dict.fromkeys(metrics.STEP_FIELDS + metrics.EVAL_FIELDS + metrics.HELLASWAG_FIELDS))


def metrics_cmd(args: argparse.Namespace) -> int:
    m = metrics.load(resolve(args.run))
    if args.json:
        print(json.dumps({"steps": [r.to_dict() for r in m.steps], "evals": [r.to_dict() for r in m.evals],
                          "hellaswag": [r.to_dict() for r in m.hellaswag]}))
    elif args.csv:
        sys.stdout.write(metrics_csv(m))
    else:
        print(metrics_table(m))
    return 0


def metrics_csv(m: metrics.RunMetrics) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, restval="", lineterminator="\n")
    writer.writeheader()
    for kind, rows in (("step", m.steps), ("eval", m.evals), ("hellaswag", m.hellaswag)):
        for row in rows:
            writer.writerow({"kind": kind, **{k: ("" if v is None else v) for k, v in row.to_dict().items()}})
    return out.getvalue()


def metrics_table(m: metrics.RunMetrics) -> str:
    s = m.stats
    hellaswag = f", {len(m.hellaswag)} HellaSwag evaluations" if m.hellaswag else ""
    parts = [f"{s.name}: {len(m.steps)} step rows, {len(m.evals)} evals{hellaswag} (--csv or --json for every field)"]
    if m.steps:
        rows = [("ITER", "TOKENS", "LOSS", "LR", "GRAD NORM", "STEP", "TOK/S", "MFU", "BATCH", "TIME")]
        for r in m.steps:
            batch = f"{r.micro_batch}×{r.grad_accum}" if r.micro_batch and r.grad_accum else NA
            rows.append((str(r.iter), fmt_count(r.tokens), fmt_float(r.loss), fmt_lr(r.lr),
                         fmt_float(r.grad_norm, 3), fmt_ms(r.ms) if r.ms is not None else NA,
                         fmt_count(r.tokens_per_sec), fmt_mfu(r.mfu), batch, fmt_duration(r.elapsed)))
        parts += ["", table(rows)]
    if m.evals:
        ppl = any(r.val_ppl is not None for r in m.evals)
        rows = [("EVAL ITER", "TRAIN LOSS", "VAL LOSS") + (("VAL PPL",) if ppl else ()) + ("TIME",)]
        for r in m.evals:
            rows.append((str(r.iter), fmt_float(r.train_loss), fmt_float(r.val_loss))
                        + ((fmt_float(r.val_ppl, 2),) if ppl else ()) + (fmt_duration(r.elapsed),))
        parts += ["", table(rows)]
    if m.hellaswag:
        rows = [("HELLASWAG ITER", "ACC", "ACC_NORM", "N", "SECONDS", "TIME")]
        for r in m.hellaswag:
            rows.append((str(r.iter), fmt_float(r.acc), fmt_float(r.acc_norm), f"{r.n:,}" if r.n is not None else NA,
                         f"{r.seconds:.1f}" if r.seconds is not None else NA, fmt_duration(r.elapsed)))
        parts += ["", table(rows)]
        if m.reference is not None:
            parts.append(f"(acc_norm of {m.reference[0]}, the GPT-2 nearest this model: {m.reference[1]:.4f})")
    return "\n".join(parts)


# --------------------------------------------------------------------------- plot


def plot(args: argparse.Namespace) -> int:
    dest = Path(args.to).expanduser()
    suffix = dest.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise UserError(f"--to {args.to}: the file must end in .png or .svg")
    if not dest.parent.is_dir():
        raise UserError(f"--to {args.to}: folder {dest.parent} does not exist")
    try:
        import matplotlib  # noqa: F401  (only here: the other commands never load it)
    except ImportError:
        raise UserError(f"plot needs matplotlib: {PLOT_INSTALL}") from None
    metric = getattr(args, "metric", "loss")
    loaded = [metrics.load(run) for run in _distinct_runs(args.runs)]
    if metric == "hellaswag":
        empty = [m.stats.name for m in loaded if not any(r.acc_norm is not None for r in m.hellaswag)]
        missing = "logged no HellaSwag evaluation yet"
        hint = " (train.hellaswag_interval turns it on in a run)"
    else:
        empty = [m.stats.name for m in loaded if not m.steps and not m.evals]
        missing, hint = "logged no loss yet", ""
    if len(empty) == len(loaded):
        raise UserError(f"nothing to plot: {', '.join(empty)} {missing}{hint}")
    for name in empty:
        print(f"gpt2-cockpit: {name} {missing}; left out of the plot", file=sys.stderr)
    data = render_plot([m for m in loaded if m.stats.name not in empty], suffix[1:], x=args.x, log=args.log,
                       metric=metric)
    from gpt2_cockpit.engine.fsutil import atomic_write_bytes

    try:  # a temp name in the same folder, then a rename: never a half-written image
        atomic_write_bytes(dest, data)
    except OSError as e:
        raise UserError(f"cannot write {dest}: {e.strerror or e}") from None
    print(f"wrote {dest} ({', '.join(m.stats.name for m in loaded if m.stats.name not in empty)})")
    return 0


X_LABELS = {"iter": "iteration", "tokens": "tokens", "time": "active time"}


def render_plot(runs: list[metrics.RunMetrics], fmt: str, x: str = "iter", log: bool = False,
                metric: str = "loss") -> bytes:
    """The loss curves of `runs` as PNG or SVG bytes: per run, the logged train loss (faint) and
    its debiased EMA (solid), and val loss per eval as markers, in the run's own colour (its
    place in the list, from matplotlib's tab10 cycle, so the same order gives the same colours).
    metric "hellaswag": each run's HellaSwag acc_norm per evaluation instead, with the acc_norm
    of the GPT-2 size each run compares with as a dashed line (one per size) and chance (0.25)."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    time_scale, time_unit = _time_unit(runs) if x == "time" else (1.0, "")
    fig = Figure(figsize=(9, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if metric == "hellaswag":
        _draw_hellaswag(ax, runs, x, time_scale)
    for i, m in enumerate(runs if metric == "loss" else ()):
        colour = f"C{i % 10}"
        xs, ys = _series(m.steps, "loss", x, time_scale)
        if xs:
            ax.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(xs, metrics.ema(ys, SMOOTHING), color=colour, linewidth=1.8, label=f"{m.stats.name} train")
        vx, vy = _series(m.evals, "val_loss", x, time_scale)
        if vx:
            ax.plot(vx, vy, color=colour, linestyle="none", marker="o", markersize=6,
                    markeredgecolor="white", markeredgewidth=0.8, label=f"{m.stats.name} val")
    ax.set_xlabel(X_LABELS[x] + (f" ({time_unit})" if time_unit else ""))
    ax.set_ylabel("loss" if metric == "loss" else "HellaSwag acc_norm")
    if log:
        ax.set_yscale("log")
    if x == "iter":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    elif x == "tokens":
        ax.xaxis.set_major_formatter(lambda v, pos: fmt_count(v) if v else "0")
    if metric == "hellaswag":
        title = runs[0].stats.name if len(runs) == 1 else f"HellaSwag of {len(runs)} runs"
        ax.set_title(f"{title}  (acc_norm per evaluation; dashed: GPT-2, llm.c's figures)", fontsize=10)
    else:
        title = runs[0].stats.name if len(runs) == 1 else f"loss of {len(runs)} runs"
        ax.set_title(f"{title}  (train: EMA {SMOOTHING} of logged steps, raw faint; val: markers)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, frameon=False)
    out = io.BytesIO()
    # svg: real <text> (searchable, small) and no date, so the same runs give the same file
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "gpt2-cockpit"}):
        fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return out.getvalue()


CHANCE = 0.25  # HellaSwag's four endings: a model that guesses


def _draw_hellaswag(ax, runs: list[metrics.RunMetrics], x: str, time_scale: float) -> None:
    """acc_norm per run (line and markers, in the run's colour), then one dashed line per GPT-2
    reference the runs compare with, and chance dotted."""
    for i, m in enumerate(runs):
        xs, ys = _series(m.hellaswag, "acc_norm", x, time_scale)
        ax.plot(xs, ys, color=f"C{i % 10}", linewidth=1.6, marker="o", markersize=4, label=f"{m.stats.name} acc_norm")
    references = dict.fromkeys(m.reference for m in runs if m.reference is not None)
    for name, acc_norm in references:
        ax.axhline(acc_norm, color="0.25", linestyle="--", linewidth=1.1, label=f"{name} {acc_norm:.4f}")
    ax.axhline(CHANCE, color="0.6", linestyle=":", linewidth=1.0, label=f"chance {CHANCE:.2f}")


def _series(rows: list[Any], field: str, x: str, time_scale: float) -> tuple[list[float], list[float]]:
    """(x, y) points of rows where both are known; x is iter, tokens or active time."""
    attr = {"iter": "iter", "tokens": "tokens", "time": "elapsed"}[x]
    xs, ys = [], []
    for r in rows:
        xv, yv = getattr(r, attr), getattr(r, field)
        if xv is not None and yv is not None:
            xs.append(xv / time_scale if x == "time" else xv)
            ys.append(yv)
    return xs, ys


def _time_unit(runs: list[metrics.RunMetrics]) -> tuple[float, str]:
    longest = max((r.elapsed or 0.0 for m in runs for r in m.steps + m.evals + m.hellaswag), default=0.0)
    if longest >= 2 * 3600:
        return 3600.0, "hours"
    if longest >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"
