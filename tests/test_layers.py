"""The layers: only the command line talks to the user's terminal, and its entry points stay light;
the cockpit never reaches the training code, the engine never reaches textual, and no module's
imports come back to it (static checks over every source file, lazy imports included)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gpt2_cockpit.engine
from conftest import CLI, cli_env

ENGINE = Path(gpt2_cockpit.engine.__file__).parent
ROOT = ENGINE.parent
ENTRY_POINTS = {"train/runner.py"}  # a run's own process: what it prints goes to the run's stdout.log


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
    modules = sorted(p for p in ENGINE.rglob("*.py") if p.relative_to(ENGINE).as_posix() not in ENTRY_POINTS)
    assert len(modules) > 30
    offenders = [f"engine/{p.relative_to(ENGINE).as_posix()}:{line}" for p in modules for line in terminal_writes(p)]
    assert offenders == [], "engine modules return text; cli/ prints it"


def test_the_print_scan_finds_prints(tmp_path):
    assert terminal_writes(ENGINE / "train" / "runner.py")  # the entry point does print: the scan sees it
    src = tmp_path / "m.py"
    src.write_text("import sys\ndef f():\n    sys.stderr.write('x')\n")
    assert terminal_writes(src) == [3]


def test_entry_points_load_neither_torch_nor_textual(tmp_path):
    code = ("import sys\n"
            "import gpt2_cockpit.engine.runs.launch, gpt2_cockpit.cli.main\n"
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


# --------------------------------------------------------------------------- the import graph
#
# Every module of the project (cli/, engine/, tui/ as gpt2_cockpit.cli, ...) and what it imports,
# read with ast from the source: relative imports resolved, `from pkg import name` counted as an
# import of pkg.name where that is a module (else of pkg). Imports inside functions count as well
# (lazy: the data <-> prepare cycle of issue #19 was one of them); imports under
# `if TYPE_CHECKING:` do not (they never run). A package's own __init__ is not counted as imported
# by its submodules: the engine's subpackage __init__ files import nothing (checked below).

TOPS = ("cli", "engine", "tui")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
    return ".".join(["gpt2_cockpit", *parts])


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in TOPS for p in (ROOT / top).rglob("*.py")}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, modules: dict[str, Path], lazy: bool = True) -> set[str]:
    """The project modules (and, for outside ones, their top-level names) that `name` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = ast.walk(tree) if lazy else [n for n in tree.body]  # module level: the statements of the body
    found = set()
    for node in nodes:
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return found


def import_graph(lazy: bool = True) -> dict[str, set[str]]:
    modules = project_modules()
    return {name: {m for m in imports_of(name, path, modules, lazy) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        path.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_the_project_modules():
    graph = import_graph(lazy=True)
    assert len(graph) > 60 and any(graph.values())
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path, monkeypatch):
    """The check would have caught issue #19's cycle: data imported prepare inside a function."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    root = tmp_path / "repo"
    (root / "engine" / "data").mkdir(parents=True)
    (root / "engine" / "__init__.py").write_text("")
    (root / "engine" / "data" / "__init__.py").write_text("")
    (root / "engine" / "data" / "shards.py").write_text("def prepare():\n    from .prepare import prepare_tokens\n")
    (root / "engine" / "data" / "prepare.py").write_text("from . import shards\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", root)
    monkeypatch.setattr(__import__(__name__), "TOPS", ("engine",))
    assert find_cycle(import_graph(lazy=False)) is None  # module level alone misses it
    assert find_cycle(import_graph(lazy=True)) == ["gpt2_cockpit.engine.data.prepare", "gpt2_cockpit.engine.data.shards",
                                                    "gpt2_cockpit.engine.data.prepare"]


def test_engine_subpackages_say_what_they_are_and_import_nothing():
    subpackages = sorted(p for p in ENGINE.iterdir() if (p / "__init__.py").is_file())
    assert [p.name for p in subpackages] == ["data", "machine", "runs", "train"]
    for pkg in [ENGINE, *subpackages]:
        tree = ast.parse((pkg / "__init__.py").read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{pkg.name}/__init__.py has no docstring"
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")], pkg


def test_the_cockpit_imports_nothing_under_engine_train():
    """tui/ names no module of engine/train/ (lazy imports included), and nothing it imports at
    module level reaches one either (engine/data/ and engine/machine/ are torch-free at import)."""
    modules = project_modules()
    train = "gpt2_cockpit.engine.train"
    direct = {f"{name} imports {m}" for name, path in modules.items() if name.startswith("gpt2_cockpit.tui")
              for m in imports_of(name, path, modules) if m == train or m.startswith(train + ".")}
    assert direct == set()
    graph = import_graph(lazy=False)
    seen, todo = set(), [m for m in graph if m.startswith("gpt2_cockpit.tui")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert "gpt2_cockpit.engine.runs.launch" in seen  # the walk does reach the engine
    assert sorted(m for m in seen if m == train or m.startswith(train + ".")) == []


def test_the_engine_never_imports_textual():
    modules = project_modules()
    offenders = sorted(f"{name} imports {m}" for name, path in modules.items()
                       if name.startswith("gpt2_cockpit.engine")
                       for m in imports_of(name, path, modules) if m.split(".")[0] in ("textual", "textual_plotext"))
    assert offenders == []


def test_architecture_md_maps_every_module():
    """ARCHITECTURE.md names every module of cli/, engine/ and tui/ (a new one gets its line)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    modules = {p.stem for top in TOPS for p in (ROOT / top).rglob("*.py") if p.name != "__init__.py"}
    folders = {p.name for top in TOPS for p in (ROOT / top).rglob("*") if (p / "__init__.py").is_file()}
    missing = sorted([m for m in modules if not re.search(rf"(?<![\w/]){re.escape(m)}\b", text)]
                     + [f + "/" for f in folders if not re.search(rf"(?<![\w/]){re.escape(f)}/", text)])
    assert missing == []
