"""`beingh train` / `python -m beingh.train` / `torchrun -m beingh.train`: parse, validate, train."""

from __future__ import annotations

import os
import sys

from beingh.train.args import ArgumentError, parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ArgumentError as err:
        print(f"beingh train: error: {err}", file=sys.stderr)
        return 2
    from beingh.data.dataset_config import DatasetConfigError
    from beingh.train.trainer import train

    try:
        path = train(args)
    except (ArgumentError, DatasetConfigError, FileNotFoundError) as err:
        print(f"beingh train: error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {path}")
    return 0
