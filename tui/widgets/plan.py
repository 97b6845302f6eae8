"""The plan pane (what a preset will cost) and the diagnostics summary, for the home screen.

The figures come from the engine (planner, `gpt2-cockpit doctor --json`); these widgets only
show them. Computing them happens in the screens' thread workers: a plan's in `Planner`'s (the
home screen's and the preset editor's), the diagnostics in the home screen's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from textual import work
from textual.content import Content
from textual.message import Message

from gpt2_cockpit.engine import config as cfgmod
from gpt2_cockpit.engine.errors import UserError
from gpt2_cockpit.engine.machine.doctor import NO_GPU_HINT

from .panes import TextPane, label_value_lines


# --------------------------------------------------------------------------- plan


@dataclass
class PlanResult:
    rows: list[tuple[str, str]]
    fits: bool | None = None
    error: str | None = None
    device: str = ""  # where the run would train, in words ("the CPU (no NVIDIA GPU found)")

    def summary(self) -> str:
        """The plan in one line: parameters, tokens, memory and time (what starting it means)."""
        if self.error:
            return self.error
        rows = dict(r for r in self.rows if r[0])
        parts = []
        if "parameters" in rows:
            parts.append(rows["parameters"].split(" (")[0] + " parameters")
        if "total tokens" in rows:  # "1.54M in 2,000 iters"
            count, _, rest = rows["total tokens"].partition(" ")
            parts.append(f"{count} tokens {rest}".strip())
        if "VRAM estimate" in rows:
            parts.append("VRAM " + rows["VRAM estimate"])
        elif "memory estimate" in rows:
            parts.append(rows["memory estimate"].split(" (")[0])
        if "time" in rows and not rows["time"].startswith("n/a"):
            parts.append(rows["time"])
        return " · ".join(parts)


def compute_plan(cfg: cfgmod.Config) -> PlanResult:
    """The planner's rows for `cfg` on this machine's GPU (blocking: NVML, run logs; call from a worker)."""
    try:
        from gpt2_cockpit.engine.machine import planner
    except ImportError as e:
        return PlanResult([], error=f"planner unavailable ({e})")
    plan_run = getattr(planner, "plan_run", None)
    if plan_run is None:
        return PlanResult([], error="planner unavailable")
    try:
        measured = None
        if hasattr(planner, "measured_ms_per_iter"):
            measured = planner.measured_ms_per_iter(cfg)
        if measured:
            plan = plan_run(cfg, gpu="auto", ms_per_iter=measured[0], measured_from=measured[1])
        else:
            plan = plan_run(cfg, gpu="auto")
    except UserError as e:
        return PlanResult([], error=str(e))
    return PlanResult(plan.rows(), fits=plan.to_dict().get("fits"), device=_device(cfg, getattr(plan, "gpu", None)))


def _device(cfg: cfgmod.Config, gpu: Any) -> str:
    """Where a run of `cfg` would train on this machine, in words (as the engine picks: a
    detected NVIDIA GPU unless the preset says cpu)."""
    found = gpu is not None and getattr(gpu, "source", "") == "detected"
    if cfg.train.device == "cpu":
        return "the CPU (the preset says so)" if found else "the CPU"
    if found:
        return f"the GPU, {gpu.name}"
    if cfg.train.device == "cuda":
        return "CUDA, which the preset asks for, but no NVIDIA GPU was found"
    return "the CPU (no NVIDIA GPU found)"


class PlanReady(Message, bubble=False):
    """A plan from `Planner`'s worker: of `key` (what the screen planned: a preset's name), for
    its request number `request`."""

    def __init__(self, key: str, request: int, result: PlanResult) -> None:
        super().__init__()
        self.key = key
        self.request = request
        self.result = result


class Planner:
    """A screen's plans, computed off the UI thread (a mixin for a Screen: the home screen and
    the preset editor). `request_plan(key, cfg)` plans `cfg` in a thread worker (group "plan",
    exclusive: a newer request cancels the older one) and hands the result to the screen's
    `plan_ready(key, result)` only if no newer request came meanwhile: a cancelled thread runs
    on to its end, and its stale plan must not overwrite the newer one. A planner that fails
    (other than the UserError compute_plan turns into a result) gives an error result, shown
    like any other."""

    _plan_request = 0  # the newest request's number

    def request_plan(self, key: str, cfg: cfgmod.Config) -> None:
        self._plan_request += 1
        self._plan_worker(key, self._plan_request, cfg)

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan")
    def _plan_worker(self, key: str, request: int, cfg: cfgmod.Config) -> None:
        try:
            result = compute_plan(cfg)
        except Exception as e:  # a bug in the planner: say so in the pane, not "planning…" forever
            result = PlanResult([], error=f"planning failed: {e.__class__.__name__}: {e}")
        self.post_message(PlanReady(key, request, result))  # type: ignore[attr-defined]

    def on_plan_ready(self, message: PlanReady) -> None:
        if message.request == self._plan_request:
            self.plan_ready(message.key, message.result)

    def plan_ready(self, key: str, result: PlanResult) -> None:
        """The newest requested plan (on the UI thread): show it."""
        raise NotImplementedError


class PlanPane(TextPane):
    """The planner's rows for one preset; VRAM in green when it fits this GPU, red when not."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[str, str, PlanResult | None] = ("", "", None)

    def show(self, title: str, description: str, result: PlanResult | None) -> None:
        self._shown = (title, description, result)
        self.border_title = f"plan · {title}"
        parts: list[Any] = []
        if description:
            parts.append((description + "\n\n", "italic $text-muted"))
        if result is None:
            parts.append(("planning…", "$text-muted"))
        elif result.error:
            parts.append((result.error, "$error"))
        else:
            styles = {n: ("bold $success" if result.fits else "bold $error")
                      for n, (label, _) in enumerate(result.rows)
                      if label.startswith(("VRAM", "memory")) and result.fits is not None}
            width = (self.scrollable_content_region.width or 62) - 2  # room for a scrollbar that may appear
            parts.append(label_value_lines(result.rows, width, styles))
        self.set_body(Content.assemble(*parts))

    def on_resize(self) -> None:
        if self._shown[0]:
            self.show(*self._shown)


# --------------------------------------------------------------------------- diagnostics


def doctor_argv() -> list[str]:
    return [sys.executable, "-m", "gpt2_cockpit.cli", "doctor", "--json"]


def run_doctor(argv: list[str], timeout: float = 120.0) -> list[dict[str, Any]] | str:
    """The doctor's checks, or one sentence saying why there are none (blocking; call from a worker).

    Runs in a subprocess because the checks import torch, which the cockpit never does.
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"diagnostics did not finish within {timeout:.0f}s"
    except OSError as e:
        return f"diagnostics could not start ({e.strerror or e})"
    try:
        checks = json.loads(proc.stdout)
    except ValueError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return f"diagnostics unavailable: {tail[-1] if tail else f'exit code {proc.returncode}'}"
    if not isinstance(checks, list):
        return "diagnostics unavailable: unexpected output from 'gpt2-cockpit doctor --json'"
    return [c for c in checks if isinstance(c, dict)]


STATUS_MARK = {"pass": ("✓", "$success"), "warn": ("!", "$warning"), "fail": ("✗", "$error")}


class DiagnosticsPane(TextPane):
    def on_mount(self) -> None:
        self.border_title = "diagnostics"
        self.set_body(Content.styled("checking this machine…", "$text-muted"))

    def show(self, checks: list[dict[str, Any]] | str) -> None:
        if isinstance(checks, str):
            self.set_body(Content.styled(checks, "$warning"))
            return
        counts = {k: sum(1 for c in checks if c.get("status") == k) for k in STATUS_MARK}
        parts: list[Any] = []
        for key, (mark, style) in STATUS_MARK.items():
            parts.append((f"{mark} {counts[key]} {key}  ", style))
        problems = [c for c in checks if c.get("status") in ("fail", "warn")]
        problems.sort(key=lambda c: c.get("status") != "fail")
        if not problems:
            parts.append(("all checks passed", "$text-muted"))
        if any(c.get("id") == "gpu" and c.get("status") == "fail" for c in checks):
            # the doctor's closing advice, first: the pane shows a few lines, Tab scrolls the rest
            parts.append(("\n" + NO_GPU_HINT[0].upper() + NO_GPU_HINT[1:], "bold $accent"))
        for c in problems:
            mark, style = STATUS_MARK[c["status"]]
            advice = c.get("remedy") or c.get("detail") or ""
            parts.append((f"\n{mark} {c.get('name', c.get('id', '?'))}", style))
            if advice:
                parts.append((f": {advice}", ""))
        self.set_body(Content.assemble(*parts))
