"""Dataset name -> directory.

Sources, later overriding earlier:
1. `configs/dataset_registry.yaml` shipped with the repo (the names the shipped YAMLs use);
2. the user's YAML file(s) in `$BEINGH_DATASET_REGISTRY` (several separated by `os.pathsep`);
3. a dataset path given directly as the name (anything with a path separator, or an existing
   LeRobot directory); a relative one is resolved against `relative_to` (the dataset YAML's folder).

Registry files map names to paths: `datasets: {name: path}`. Relative paths are resolved against
`$BEINGH_DATA_ROOT` (required for the shipped registry, which holds no absolute paths); in a user
registry they fall back to the registry file's folder when `$BEINGH_DATA_ROOT` is unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
SHIPPED_REGISTRY = REPO_CONFIG_DIR / "dataset_registry.yaml"
DATA_ROOT_ENV = "BEINGH_DATA_ROOT"
REGISTRY_ENV = "BEINGH_DATASET_REGISTRY"


class UnknownDatasetError(LookupError):
    """A dataset name that is neither a path nor registered; the message lists the files searched."""


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    path: str
    """As written in the registry file (may be relative)."""
    registry_file: Path


def registry_files() -> list[Path]:
    """The registry files searched, lowest priority first."""
    files = [SHIPPED_REGISTRY]
    files += [Path(p).expanduser() for p in os.environ.get(REGISTRY_ENV, "").split(os.pathsep) if p]
    return files


def load_registry(files: list[Path] | None = None) -> dict[str, RegistryEntry]:
    """Merge the registry files (later files override earlier ones)."""
    entries: dict[str, RegistryEntry] = {}
    for file in registry_files() if files is None else files:
        if not file.is_file():
            if file != SHIPPED_REGISTRY:
                raise FileNotFoundError(f"dataset registry file not found: {file} (from ${REGISTRY_ENV})")
            continue
        raw = yaml.safe_load(file.read_text()) or {}
        datasets = raw.get("datasets") if isinstance(raw, dict) else None
        if not isinstance(datasets, dict):
            raise ValueError(f"{file}: expected a top-level 'datasets' mapping of name -> path")
        for name, path in datasets.items():
            if not isinstance(path, str) or not path:
                raise ValueError(f"{file}: key 'datasets.{name}': expected a path string, got {path!r}")
            entries[str(name)] = RegistryEntry(str(name), path, file)
    return entries


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith(("~", ".")) or (Path(name) / "meta").is_dir()


def resolve_dataset_path(name: str, relative_to: Path | None = None, files: list[Path] | None = None) -> Path:
    """The directory of dataset `name` (a registry name or a path); raises naming the files searched."""
    if _looks_like_path(name):
        path = Path(os.path.expandvars(name)).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_dir():
            raise FileNotFoundError(f"dataset path not found: {path}")
        return path.resolve()
    files = registry_files() if files is None else files
    entries = load_registry(files)
    if name not in entries:
        searched = ", ".join(str(f) for f in files)
        raise UnknownDatasetError(
            f"unknown dataset '{name}': not a path and not in the registry files searched ({searched}); "
            f"add it to a registry YAML named in ${REGISTRY_ENV} or give the dataset path"
        )
    entry = entries[name]
    path = Path(os.path.expandvars(entry.path)).expanduser()
    if not path.is_absolute():
        root = os.environ.get(DATA_ROOT_ENV)
        if root:
            path = Path(root).expanduser() / path
        elif entry.registry_file != SHIPPED_REGISTRY:
            path = entry.registry_file.parent / path
        else:
            raise FileNotFoundError(
                f"dataset '{name}' is registered at relative path '{entry.path}' in {entry.registry_file}, "
                f"but ${DATA_ROOT_ENV} is not set; export {DATA_ROOT_ENV}=<folder holding your datasets>"
            )
    if not path.is_dir():
        raise FileNotFoundError(f"dataset '{name}' ({entry.registry_file}): directory not found: {path}")
    return path.resolve()
