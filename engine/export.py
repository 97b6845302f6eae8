"""Placeholder until the export engineer lands engine/export.py (being written now)."""

import argparse

from .errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--to", required=True)
    p.add_argument("--force", action="store_true")


def run(args: argparse.Namespace) -> int:
    raise UserError("export is not available yet")
