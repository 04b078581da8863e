"""JSON files of the training state (trainer counters, scheduler, data position, RNG, optimizer index).

Checkpoint state is plain JSON so that loading it can never run code (unlike pickle). Floats are
written with `repr` precision, so they read back bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, value: Any) -> Path:
    try:
        text = json.dumps(value, indent=1)
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot write {path}: {err} (checkpoint state must be dicts, lists, str, numbers, "
                        "bools and None)") from err
    path.write_text(text + "\n")
    return path


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): the checkpoint is damaged") from err
