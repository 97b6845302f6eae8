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
        from gpt2_cockpit.tui.app import make_app
        from gpt2_cockpit.engine import presets, runs

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


def test_engine_modules_the_cockpit_uses_never_import_textual(tmp_path):
    out = run_python("""
        import sys
        import gpt2_cockpit.engine.config, gpt2_cockpit.engine.events, gpt2_cockpit.engine.runs
        import gpt2_cockpit.engine.control, gpt2_cockpit.engine.launch, gpt2_cockpit.engine.presets
        import gpt2_cockpit.engine.planner, gpt2_cockpit.engine.hardware
        import gpt2_cockpit.engine.fmt, gpt2_cockpit.engine.sampling
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "textual_plotext", "torch")))
    """, tmp_path)
    assert out.strip() == "[]"
