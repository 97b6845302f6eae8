"""The wheel is the product: build it from the tracked files, check every source and data file
of the packages is in it, and import every module from it where the checkout cannot be seen.

An editable install (the README's, CI's) finds modules in the checkout whatever pyproject.toml
says, so only a wheel shows a subpackage or a data file left out (it once lacked tui/screens/).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("cli", "engine", "tui", "presets")  # installed as gpt2_cockpit.<name>
SHIPPED = (".py", ".toml", ".tcss")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    return out.stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tracked files alone (what a clone or an sdist has)."""
    pytest.importorskip("setuptools")
    tree = tmp_path_factory.mktemp("tree")
    for name in tracked_files():
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(tree)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = out.glob("gpt2_cockpit-*.whl")
    return whl


def test_every_tracked_source_and_data_file_is_in_the_wheel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [f for f in tracked_files() if f.split("/")[0] in PACKAGES and f.endswith(SHIPPED)]
    assert any(f.startswith("tui/screens/") for f in wanted)  # the files that once went missing
    missing = [f for f in wanted if f"gpt2_cockpit/{f}" not in names]
    assert not missing, f"left out of the wheel: {missing}"
    assert not [n for n in names if n.startswith(("tests/", "gpt2_cockpit/tests/"))]


def test_every_module_imports_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by unpacking
    modules = sorted(
        ".".join(p.relative_to(site).with_suffix("").parts).removesuffix(".__init__")
        for p in (site / "gpt2_cockpit").rglob("*.py")
    )
    script = (
        "import importlib, importlib.util, sys\n"
        f"site = {str(site)!r}\n"
        f"for name in {modules!r}:\n"
        "    if name.endswith('.__main__'):  # running it is running the command: find it only\n"
        "        spec = importlib.util.find_spec(name)\n"
        "        assert spec.origin.startswith(site), (name, spec.origin)\n"
        "        continue\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
        "print(len(sys.modules))\n"
    )
    # -S: no site-packages processing, so no editable-install finder pointing at the checkout;
    # the dependencies come from site-packages on PYTHONPATH, the package from the wheel alone
    deps = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{site}:{deps}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_cockpit_entry_point_is_declared(wheel):
    entry_points = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "gpt2-cockpit = gpt2_cockpit.cli.main:main" in text
