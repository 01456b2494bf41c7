"""The shipped networks, by short name, for the CLI, the Slicer module and the web app.

Shipped models live in ``Resources/networks/<kind>/<name>.mrhnet``:

* ``demo``: AF, NF and MBP networks trained by this project on simulated brains (the phantom), for
  trying the whole flow; not for real data.
* ``original``: the original authors' MRH-AF networks, imported from their MATLAB files; they expect
  the original acquisition protocol.

:func:`resolve` accepts a short name (``af``, ``nf``, ``mbp``, ``af-original-4`` ...), a model file
name in the catalog, or a path to any model folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MRHNetError
from .modelfile import SUFFIX, ModelInfo, read_info
from ..resources import resources_dir

KINDS = ("demo", "original")


@dataclass
class CatalogEntry:
    """One shipped network."""

    name: str
    path: Path
    kind: str
    info: ModelInfo

    @property
    def target(self) -> str:
        return self.info.target

    @property
    def description(self) -> str:
        return self.info.description


def _short_name(file_name: str, kind: str) -> str:
    stem = file_name[: -len(SUFFIX)] if file_name.endswith(SUFFIX) else file_name
    if kind == "demo" and stem.startswith("mrh-") and stem.endswith("-demo"):
        return stem[4:-5]  # mrh-af-demo -> af
    return stem[4:] if stem.startswith("mrh-") else stem


def list_models(root: str | os.PathLike | None = None) -> list[CatalogEntry]:
    """All shipped networks (demo first, then the original authors'), sorted by name within a kind."""
    base = Path(root) if root is not None else resources_dir() / "networks"
    entries = []
    for kind in KINDS:
        folder = base / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            entries.append(CatalogEntry(_short_name(path.name, kind), path, kind, read_info(path)))
    return entries


def resolve(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Path of a model given a catalog name or a path; a clear error listing the known names otherwise."""
    path = Path(name_or_path)
    if path.exists():
        return path
    text = str(name_or_path)
    entries = list_models(root)
    for entry in entries:
        if text in (entry.name, entry.path.name, entry.path.name[: -len(SUFFIX)]):
            return entry.path
    known = ", ".join(e.name for e in entries) or "none shipped"
    raise MRHNetError(f"{text}: no such model file or shipped model (shipped: {known})")


def describe(entry: CatalogEntry) -> str:
    """One paragraph about a shipped model (CLI ``mrhnet models`` and the Slicer models panel)."""
    info = entry.info
    trained = info.training.get("summary") or info.provenance.get("trained_by", "")
    lines = [f"{entry.name} [{entry.kind}] target {info.target.upper()}, depth {info.depth}: {info.description}",
             info.protocol.describe()]
    if trained:
        lines.append(f"  trained: {trained}")
    return "\n".join(lines)
