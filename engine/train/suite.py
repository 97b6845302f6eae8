"""`gpt2-cockpit bench --suite`: every GPU path of the engine measured in one run.

    report = run_suite(Path("suite"), suite_sections.SECTIONS, only=None, nanogpt=None, command="...", log=print)

writes suite/report.json and suite/report.md after every section, so a suite cut short still
leaves what it measured. The sections (engine/train/suite_sections.py, one small function each, which
import this module's Suite, Outcome and Skip; the caller passes them in, so neither imports the other both ways) run
one after another in this process; `run_section` gives each the same treatment: it times it,
records a failure with its reason (the suite goes on), a `Skip` as `skipped` with the reason,
and cleans up after it (GPU memory and its cap, compiled graphs, threads), so one section's
leftovers do not colour the next one's figures. `--only` reruns chosen sections and keeps the
others from the report already in DIR (when it was made on the same device).

On a CPU every section runs on tiny shapes (CPU_SHAPE), on one thread, and a part
that needs a GPU says `skipped` with the reason. Nothing is downloaded: batches are random token ids (the
pretrain sections), the finetune section builds its GPT-2 and its tokenizer on the spot, and
nothing here imports textual (the GPU box has none).

The time budget, in seconds, per section (BUDGET_SECONDS: one H100, a 2-core CPU; 6 and 3
minutes in all). On the GPU most of it is torch.compile: the throughput section compiles two
models (tens of seconds each the first time; later sections and processes reuse Inductor's
on-disk cache), nanoGPT compiles its own, the OOM rehearsal recompiles for each micro-batch it
tries, and the ddp section's two processes compile again. On the CPU the memory section
dominates (a full-size training step traced under FakeTensorMode: ~5 s per preset and
precision), then the ddp section's two processes (~7 s each, most of it importing torch).
A section that runs past its budget says so in its notes.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import config as cfgmod
from ..errors import UserError

BUDGET_SECONDS: dict[str, tuple[int, int]] = {  # section: (one H100, 2-core CPU); GPU: estimates until it runs there
    "env": (5, 5),  # doctor's checks
    "nvml": (15, 1),  # a real run until NVML has given two `gpu` readings (one per 5 s)
    "throughput": (95, 10),  # two presets: compile (~40 s each, cold) + 3 warm-up and 10 timed steps
    "nanogpt": (65, 20),  # nanoGPT's train.py (its own compile, 20 iterations) between two timings of ours
    "levers": (30, 10),  # each lever off against the defaults, eager (no compile), 13 steps each
    "memory": (15, 45),  # GPU: eager steps (the compiled peak comes from throughput); CPU: 4 fake traces
    "oom": (45, 5),  # the 12 GB rehearsal, then a cap too small for micro-batch 16: OOM, recompile, go on
    "sampling": (10, 5),  # two steps, 200 tokens, one more step
    "hellaswag": (15, 5),  # 2,000 HellaSwag-shaped items scored (60 on a CPU, on the tiny shape)
    "resume": (15, 10),  # 12 steps unbroken against 6 + stop + resume 6, eager
    "finetune": (20, 15),  # a tokenizer and a random GPT-2 built; ours, then the Trainer, 13 steps each
    "ddp": (40, 40),  # two processes (plain; torchrun with one rank), each importing torch and compiling
}
SECTION_NAMES = tuple(BUDGET_SECONDS)
GIB = 1024 ** 3
# On a CPU the pretrain models shrink to this; random ids of a 256-symbol vocabulary (at GPT-2's
# 50,304 the output layer alone would take seconds per step on two cores).
CPU_SHAPE = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 64, "model.block_size": 64,
             "data.tokenizer": "char"}


class Skip(Exception):
    """Raised by a section that cannot run here; the message is the reason."""


@dataclass
class Outcome:
    """What a section found, filled in as it goes, so a failure keeps the figures before it."""

    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None  # a check that did not hold (e.g. the planner off by > 10%): failed

    def figure(self, name: str, value: float | int | bool | None) -> None:
        """A number for the report (None, NaN and infinities are left out: JSON has none)."""
        if value is None:
            return
        value = float(value) if isinstance(value, bool) else value
        if isinstance(value, float) and not math.isfinite(value):
            return
        self.figures[name] = float(f"{value:.6g}") if isinstance(value, float) else value

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass
class SectionReport:
    name: str
    status: str  # "ok" | "skipped" | "failed"
    reason: str
    seconds: float
    figures: dict[str, float]
    notes: list[str]
    budget_seconds: int
    date: str


@dataclass
class Suite:
    """What every section is given: where to write, what it runs on, and what one section
    leaves for a later one (our throughput for the nanoGPT comparison)."""

    out: Path
    device: str  # "cuda" or "cpu"
    nanogpt: Path | None = None
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpt2-suite-")))
    log: Callable[[str], None] = lambda line: None
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    def config(self, preset: str, **overrides: Any) -> cfgmod.Config:
        """A shipped preset for a measurement: grad_accum cut to 1 (a step is short), on a CPU
        shrunk to tiny shapes without compile; `overrides` ({"train.micro_batch": 4}) last."""
        from .. import presets

        cfg = presets.load(preset)
        sets: dict[str, Any] = {"train.grad_accum": 1, "train.eval_interval": 0, "train.sample_interval": 0}
        if hasattr(cfg.train, "hellaswag_interval"):
            sets["train.hellaswag_interval"] = 0  # timed training only, and HellaSwag's items are a download
        if not self.gpu:
            sets.update(CPU_SHAPE)
            sets["train.micro_batch"] = min(cfg.train.micro_batch, 4)
            sets["train.compile"] = False
            sets["train.device"] = "cpu"
        sets.update(overrides)
        if cfg.engine == "finetune":
            sets = {k: v for k, v in sets.items() if k not in cfgmod.PRETRAIN_ONLY}
        return cfgmod.with_overrides(cfg, sets, origin=f"the suite's {preset}")


@dataclass
class Report:
    header: dict[str, Any]
    sections: list[SectionReport]

    def to_dict(self) -> dict[str, Any]:
        return {**self.header, "sections": [asdict(s) for s in self.sections]}

    def write(self, out: Path) -> None:
        """report.json and report.md, each replaced whole (a reader never sees half of one)."""
        from ..fsutil import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(self.to_dict(), indent=2) + "\n")
        atomic_write_text(out / "report.md", markdown(self))


# --------------------------------------------------------------------------- running


def parse_only(text: str | None) -> list[str] | None:
    """--only "throughput,memory" -> the names, checked; None runs every section."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTION_NAMES]
    if unknown or not names:
        raise UserError(f"--only {text!r}: {'unknown section ' + ', '.join(unknown) if unknown else 'no section'}; "
                        f"the sections are {', '.join(SECTION_NAMES)}")
    return [n for n in SECTION_NAMES if n in names]  # in the suite's order


def run_suite(out: Path, sections: dict[str, Callable[[Suite, Outcome], None]], only: list[str] | None = None,
              nanogpt: Path | None = None, command: str = "", log: Callable[[str], None] = lambda line: None) -> Report:
    """Run the sections (all, or `only`), rewriting out/report.json and report.md after each.
    `sections`: name -> function, suite_sections.SECTIONS (tests pass their own)."""
    import torch

    functions = sections
    names = only or list(functions)
    if nanogpt is not None and not (Path(nanogpt).expanduser() / "train.py").is_file():
        raise UserError(f"--nanogpt {nanogpt}: no train.py there (give a checkout of karpathy/nanoGPT)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    suite = Suite(out=Path(out), device=device, nanogpt=Path(nanogpt).expanduser().resolve() if nanogpt else None,
                  log=log)
    header = environment(device, command)
    report = Report(header, _kept_sections(Path(out), header, names))
    home = os.environ.get("GPT2_COCKPIT_HOME")
    os.environ["GPT2_COCKPIT_HOME"] = str(suite.work / "home")  # the suite's runs and caches, not the user's
    threads = torch.get_num_threads()
    if device == "cpu":  # tiny shapes: a second OpenMP thread only spins, 100x slower on a busy 2-core box
        torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        for i, name in enumerate(names, 1):
            log(f"[{i}/{len(names)}] {name}")
            # if the process dies inside the section, the report already says where
            _put(report, SectionReport(name, "failed", "did not finish: the suite stopped during this section",
                                       0.0, {}, [], _budget(name, device), _now()))
            report.write(suite.out)
            result = run_section(name, functions[name], suite)
            _put(report, result)
            report.header["seconds"] = round(time.perf_counter() - started, 1)
            report.write(suite.out)
            log(f"    {summary_line(result)}")
    finally:
        torch.set_num_threads(threads)
        if home is None:
            os.environ.pop("GPT2_COCKPIT_HOME", None)
        else:
            os.environ["GPT2_COCKPIT_HOME"] = home
        shutil.rmtree(suite.work, ignore_errors=True)
    return report


def run_section(name: str, fn: Callable[[Suite, Outcome], None], suite: Suite) -> SectionReport:
    """One section, isolated: its exception becomes its `failed` reason, a Skip its `skipped`
    reason; either way the figures it recorded so far are kept, and what it left behind is
    cleaned up before the next one."""
    outcome = Outcome()
    threads = _threads()
    env = dict(os.environ)
    t0 = time.perf_counter()
    status, reason = "ok", ""
    try:
        fn(suite, outcome)
        if outcome.problem:
            status, reason = "failed", outcome.problem
    except Skip as e:
        status, reason = "skipped", str(e)
    except Exception as e:  # a section's bug or a broken GPU path: recorded, and the suite goes on
        status, reason = "failed", f"{e.__class__.__name__}: {_first_line(e)}"
        where = traceback.extract_tb(e.__traceback__)[-1]
        outcome.note(f"raised at {Path(where.filename).name}:{where.lineno} ({where.name})")
    finally:
        os.environ.clear()
        os.environ.update(env)
        _clean_up(suite.device, threads)
    seconds = round(time.perf_counter() - t0, 2)
    budget = _budget(name, suite.device)
    if status != "skipped" and seconds > budget:
        outcome.note(f"took {seconds:.0f} s, over its budget of {budget} s")
    return SectionReport(name, status, reason, seconds, outcome.figures, outcome.notes, budget, _now())


def _clean_up(device: str, threads: int) -> None:
    import torch

    gc.collect()
    torch.set_num_threads(threads)
    dynamo = sys.modules.get("torch._dynamo")  # loaded once something was compiled (importing it takes seconds)
    if dynamo is not None:
        dynamo.reset()  # compiled graphs, and dynamo's recompile count (a cap of 8 per function)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_per_process_memory_fraction(1.0)  # train.memory_limit_gb of the oom section
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _put(report: Report, section: SectionReport) -> None:
    """Replace the section of that name, or add it; in the suite's order."""
    rest = [s for s in report.sections if s.name != section.name]
    report.sections = sorted(rest + [section], key=lambda s: SECTION_NAMES.index(s.name)
                             if s.name in SECTION_NAMES else len(SECTION_NAMES))


def _kept_sections(out: Path, header: dict[str, Any], rerun: list[str]) -> list[SectionReport]:
    """The sections of an earlier report in `out` that this run does not redo, when it was made
    on the same device with the same torch (else the report starts afresh)."""
    path = out / "report.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or (old.get("device"), old.get("torch")) != (header["device"], header["torch"]):
        return []
    kept = []
    for s in old.get("sections") or []:
        try:
            section = SectionReport(**{k: s[k] for k in SectionReport.__dataclass_fields__})
        except (KeyError, TypeError):
            continue
        if section.name not in rerun:
            kept.append(section)
    return kept


def _budget(name: str, device: str) -> int:
    gpu, cpu = BUDGET_SECONDS.get(name, (60, 60))
    return gpu if device == "cuda" else cpu


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:400] if text else "(no message)"


def environment(device: str, command: str) -> dict[str, Any]:
    """The report's header: what ran where."""
    import torch

    from ..machine.nvml import probe

    nvml = probe()
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": nvml.driver,
        "python": platform.python_version(),
        "date": _now(),
        "command": command,
        "budget_seconds": {n: _budget(n, device) for n in SECTION_NAMES},
        "seconds": 0.0,
    }


# --------------------------------------------------------------------------- report.md


def summary_line(s: SectionReport) -> str:
    text = f"{s.status} in {s.seconds:.1f} s"
    return f"{text}: {s.reason}" if s.reason else text


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 1e6:
            return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return f"{v:.3e}"
    return str(v)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: Report) -> str:
    h = report.header
    total = sum(h["budget_seconds"].values())
    lines = [
        "# gpt2-cockpit bench --suite",
        "",
        "| | |",
        "| --- | --- |",
        f"| device | {_cell(h['device'])} |",
        f"| driver | {h.get('driver') or 'n/a'} |",
        f"| torch | {h['torch']} (CUDA {h.get('cuda') or 'n/a'}) |",
        f"| python | {h['python']} |",
        f"| date | {h['date']} |",
        f"| command | `{_cell(h['command'])}` |",
        f"| time | {h['seconds']:.0f} s (budget {total} s) |",
        "",
        "| section | status | seconds | budget | reason |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in report.sections:
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.budget_seconds} | {_cell(s.reason)} |")
    for s in report.sections:
        lines += ["", f"## {s.name}: {s.status} ({s.seconds:.1f} s)", ""]
        if s.reason:
            lines += [s.reason, ""]
        if s.figures:
            lines += ["| figure | value |", "| --- | --- |"]
            lines += [f"| {_cell(k)} | {_value(v)} |" for k, v in s.figures.items()]
            lines.append("")
        lines += [f"- {n}" for n in s.notes]
    return "\n".join(lines).rstrip() + "\n"
