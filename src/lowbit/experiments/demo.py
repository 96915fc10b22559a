"""The main job: until the model demo lands, the format tour."""
from __future__ import annotations

import argparse

from . import tour

HELP = "the main job: the format tour on a seeded weight tensor"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lowbit demo``."""
    tour.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run the tour."""
    return tour.run(args)
