"""The cockpit process never loads torch; the engine modules it uses never load textual."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def run_python(code: str, tmp_path) -> str:
    env = {**os.environ, "GPT2_COCKPIT_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_cockpit_never_imports_torch(tmp_path):
    out = run_python("""
        import asyncio, sys
        from gpt2_cockpit.engine import presets
        from gpt2_cockpit.engine.runs import rundir as runs
        from gpt2_cockpit.tui.app import make_app

        run = runs.create(presets.load("cpu-tiny"), "r")
        other = runs.create(presets.load("cpu-tiny", ["train.learning_rate=1e-4"]), "r2")

        async def main():
            for mode, target in (("home", None), ("run", str(run.path)), ("compare", None)):
                app = make_app(mode, target, runs=[run.path, other.path] if mode == "compare" else (),
                               doctor_argv=[sys.executable, "-c", "print('[]')"])
                async with app.run_test(size=(80, 24)) as pilot:
                    await pilot.pause(0.5)
                    if mode == "home":  # the plan pane and the preset editor: the planner runs here
                        await pilot.press("e")
                        for _ in range(200):
                            if "tokens/step" in app.screen.query_one("PlanPane").text:
                                break
                            await pilot.pause(0.05)
                        print("planned" if "tokens/step" in app.screen.query_one("PlanPane").text else "no plan")
                    if mode == "compare":  # engine.metrics reads the logs and configs
                        for _ in range(200):
                            if app.screen.runs:
                                break
                            await pilot.pause(0.05)
                        print("compared" if "train.learning_rate" in app.screen.differ else "no compare")

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
    """, tmp_path)
    assert out.split() == ["planned", "compared", "[]"]


def test_the_engine_outside_train_never_imports_torch_or_textual(tmp_path):
    """Every module of engine/ but engine/train/ (the top, data/, runs/, machine/: what the cockpit
    may use) imports, all of them in one process, without loading torch or textual."""
    out = run_python("""
        import importlib, pkgutil, sys
        import gpt2_cockpit.engine as engine

        names = [m.name for m in pkgutil.walk_packages(engine.__path__, "gpt2_cockpit.engine.")
                 if not m.name.startswith("gpt2_cockpit.engine.train")]
        for name in names:
            importlib.import_module(name)
        print(len(names), all(n.split(".")[2] in ("data", "runs", "machine") or n.count(".") == 2 for n in names))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "textual_plotext", "torch")))
    """, tmp_path)
    count, loaded = out.strip().splitlines()
    assert int(count.split()[0]) >= 25 and count.split()[1] == "True"
    assert loaded == "[]"
