"""Integrity manifest of a checkpoint folder: the size and sha256 of every file in it.

`manifest.json` is the last file a save writes, so its presence also marks a complete checkpoint
(`is_complete`). `verify_checkpoint` detects bit flips, truncation and missing files, naming the file;
resume (`beingh.train`) and `BeingHPolicy` call it before reading anything. It is an integrity check,
not a signature: whoever can write the folder can rewrite the manifest. Released checkpoints (the
original's) have no manifest: they load, with a log line that says their files are not verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "beingh-checkpoint-manifest/1"
TRAIN_STATE_DIR = "train_state"
"""Subfolder with the optimizer/scheduler/data/RNG state; inference skips it."""


class CheckpointIntegrityError(ValueError):
    """A checkpoint file is missing, truncated or differs from the manifest (or the manifest is invalid)."""


def file_entry(path: Path) -> dict[str, Any]:
    """`{"size": bytes, "sha256": hex}` of one file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


def list_files(folder: Path) -> list[str]:
    """Every regular file under `folder` as a relative POSIX path, the manifest itself excluded."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST_FILE
    )


def hash_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Entries of several files, hashed in parallel threads (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return dict(zip(names, pool.map(lambda name: file_entry(folder / name), names)))


def write_manifest(folder: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Write `<folder>/manifest.json` for `entries` (relative path -> size and sha256)."""
    path = folder / MANIFEST_FILE
    document = {"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": dict(sorted(entries.items()))}
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest's file entries, or None when the folder has no manifest."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointIntegrityError(f"{path} is not valid JSON ({err}): the manifest is damaged") from err
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise CheckpointIntegrityError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    for name, entry in files.items():
        _check_entry(path, name, entry)
    return files


def _check_entry(manifest: Path, name: str, entry: Any) -> None:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or name in ("", "."):
        raise CheckpointIntegrityError(f"{manifest} lists {name!r}, which is not a path inside the checkpoint")
    ok = (
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
    )
    if not ok:
        raise CheckpointIntegrityError(f"{manifest}: entry {name!r} needs an int 'size' and a 64-hex 'sha256'")


def _size_problem(path: Path, expected: int) -> str | None:
    if not path.is_file():
        return f"{path} is listed in {MANIFEST_FILE} but missing (or not a regular file)"
    size = path.stat().st_size
    if size != expected:
        return f"{path} has {size} bytes, {MANIFEST_FILE} says {expected}: the file is truncated or was modified"
    return None


def is_complete(folder: Path) -> bool:
    """True when `folder` has a valid manifest and every listed file exists with its listed size (no hashing)."""
    try:
        files = read_manifest(folder)
    except CheckpointIntegrityError:
        return False
    return files is not None and all(_size_problem(folder / n, e["size"]) is None for n, e in files.items())


def verify_checkpoint(folder: str | Path, skip_train_state: bool = False) -> bool:
    """Check every file the manifest lists (size, then sha256); True when verified, False without a manifest.

    Raises `CheckpointIntegrityError` naming the first bad file. `skip_train_state` leaves out
    `train_state/` (inference reads only the weights, config, tokenizer and metadata). Files that are
    not listed are never read by resume; they are reported in a warning.
    """
    folder = Path(folder)
    files = read_manifest(folder)
    if files is None:
        logger.info("%s has no %s (a released or older checkpoint): its files are not integrity-checked",
                    folder, MANIFEST_FILE)
        return False
    selected = {n: e for n, e in files.items() if not (skip_train_state and n.startswith(TRAIN_STATE_DIR + "/"))}
    started = time.perf_counter()
    total = sum(e["size"] for e in selected.values())
    logger.info("verifying %d files (%.2f GB) of %s against %s", len(selected), total / 1e9, folder, MANIFEST_FILE)
    for name, entry in selected.items():
        problem = _size_problem(folder / name, entry["size"])
        if problem is not None:
            raise CheckpointIntegrityError(problem)
    for name, actual in hash_files(folder, list(selected)).items():
        if actual["sha256"] != selected[name]["sha256"]:
            raise CheckpointIntegrityError(f"{folder / name}: sha256 differs from {MANIFEST_FILE}: the file is "
                                           "corrupted or was modified")
    unlisted = [n for n in list_files(folder) if n not in files]
    if unlisted:
        logger.warning("%s: files not in %s (not part of the checkpoint, never read by resume): %s",
                       folder, MANIFEST_FILE, ", ".join(unlisted[:10]) + (" ..." if len(unlisted) > 10 else ""))
    logger.info("verified %s (%.1f s)", folder, time.perf_counter() - started)
    return True
