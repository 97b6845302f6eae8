"""The layers: only the command line talks to the user's terminal, and its entry points stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gpt2_cockpit.engine
from conftest import CLI, cli_env

ENGINE = Path(gpt2_cockpit.engine.__file__).parent
ENTRY_POINTS = {"runner.py"}  # a run's own process: what it prints goes to the run's stdout.log


def terminal_writes(path: Path) -> list[int]:
    """Lines of `path` that call print() or write to sys.stdout / sys.stderr."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "print":
            lines.append(node.lineno)
        elif (isinstance(f, ast.Attribute) and f.attr == "write" and isinstance(f.value, ast.Attribute)
              and f.value.attr in ("stdout", "stderr") and isinstance(f.value.value, ast.Name)
              and f.value.value.id == "sys"):
            lines.append(node.lineno)
    return lines


def test_engine_library_modules_never_print():
    modules = sorted(p for p in ENGINE.glob("*.py") if p.name not in ENTRY_POINTS)
    assert len(modules) > 10
    offenders = [f"engine/{p.name}:{line}" for p in modules for line in terminal_writes(p)]
    assert offenders == [], "engine modules return text; cli/ prints it"


def test_the_print_scan_finds_prints(tmp_path):
    assert terminal_writes(ENGINE / "runner.py")  # the entry point does print: the scan sees it
    src = tmp_path / "m.py"
    src.write_text("import sys\ndef f():\n    sys.stderr.write('x')\n")
    assert terminal_writes(src) == [3]


def test_entry_points_load_neither_torch_nor_textual(tmp_path):
    code = ("import sys\n"
            "import gpt2_cockpit.engine.launch, gpt2_cockpit.cli.main\n"
            "gpt2_cockpit.cli.main.build_parser()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'textual')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("bad, named", [(["--temperature", "0"], "temperature"),
                                        (["--temperature", "nan"], "temperature"),
                                        (["--max-new-tokens", "0"], "max_new_tokens"),
                                        (["--top-k", "-1"], "top_k")])
def test_sample_with_a_bad_setting_is_one_sentence(tmp_path, bad, named):
    proc = subprocess.run(CLI + ["sample", "some-run", "Once", *bad], capture_output=True, text=True, timeout=60,
                          env=cli_env(tmp_path))
    assert proc.returncode != 0 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr  # the setting, checked before the run is looked up
