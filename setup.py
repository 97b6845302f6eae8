"""Package discovery for the layout of DESIGN.md: the folders at the top of the repository
(cli/, engine/, tui/, presets/) install as gpt2_cockpit.cli, gpt2_cockpit.engine, ...

Every folder with an __init__.py under them is found, so a new subpackage reaches the wheel
without a line here (tests/test_wheel.py builds the wheel and checks). Everything else about
the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

TOP = ("cli", "engine", "tui", "presets")

found = find_packages(include=[pattern for top in TOP for pattern in (top, f"{top}.*")])
setup(
    packages=[f"gpt2_cockpit.{name}" for name in found],
    package_dir={f"gpt2_cockpit.{top}": top for top in TOP},
)
