"""Pickle payloads that prove code ran: unpickling one writes a canary file.

Planted in checkpoint folders and sent to the server, they show that nothing there is ever unpickled
(`torch.load(weights_only=False)`, `pickle.load`, torch DCP's `.metadata`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


class Canary:
    """Unpickling this object runs `exec`, which writes `path`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('code from a pickle ran')",)


def pickle_payload(canary: Path) -> bytes:
    return pickle.dumps(Canary(canary))


def plant(path: Path, canary: Path) -> None:
    """Write a payload at `path`: a torch.save archive for .pt/.pth/.bin, a raw pickle otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".pt", ".pth", ".bin"):
        torch.save(Canary(canary), path)
    else:
        path.write_bytes(pickle_payload(canary))


def assert_payload_is_live(path: Path, canary: Path) -> None:
    """The planted file does run code when unpickled (so a test that finds no canary means something)."""
    if path.suffix in (".pt", ".pth", ".bin"):
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert canary.is_file(), f"the payload in {path} did not run"
    canary.unlink()
