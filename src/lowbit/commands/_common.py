"""Options and set-up shared by the model commands (``train``, ``quantize``, ``eval``, ``demo``)."""
from __future__ import annotations

import argparse

import torch

from ..data import dataset_names
from ..train import seed_everything


def add_common(p: argparse.ArgumentParser, *, data_from_checkpoint: bool = False) -> None:
    """``--data``, ``--seed``, ``--threads``."""
    default = "the checkpoint's dataset" if data_from_checkpoint else "digits"
    p.add_argument("--data", default=None if data_from_checkpoint else "digits",
                   help=f"dataset: {', '.join(dataset_names())}, or a path to MNIST idx files / a .npz (default: {default})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1; small models run fastest on one, and results depend on it)")


def setup(args: argparse.Namespace) -> None:
    """Apply ``--threads`` and ``--seed``."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
