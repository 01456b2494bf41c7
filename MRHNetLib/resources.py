"""Where the project's shipped data lives (anatomy maps, networks, acquisition protocols).

The data sits in the repository's top-level ``Resources/``. It is found, in this order:

1. ``$MRHNET_RESOURCES`` when set;
2. ``MRHNetLib/Resources`` inside the package: an installed wheel (``pip install .``, a wheel file or
   ``pip install git+URL``), which carries ``Resources/`` there (see setup.py);
3. ``Resources/`` beside the package: a source checkout, and the Slicer extension's install tree (its
   CMake installs ``MRHNetLib/`` and ``Resources/`` side by side, next to the module file).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MRHNetError

# sub-folders of Resources/ that the engine reads at run time (the wheel and the Slicer install carry them)
RUNTIME_FOLDERS = ("anatomy", "networks", "protocols")
_PACKAGE = Path(__file__).resolve().parent


def candidates() -> list[Path]:
    """The folders searched, in order (see the module docstring)."""
    env = os.environ.get("MRHNET_RESOURCES")
    return ([Path(env)] if env else []) + [_PACKAGE / "Resources", _PACKAGE.parent / "Resources"]


def resources_dir() -> Path:
    """The first folder of :func:`candidates` that holds shipped data."""
    env = os.environ.get("MRHNET_RESOURCES")
    for i, candidate in enumerate(candidates()):
        # beside the package, only a folder holding our data counts (site-packages/Resources may be another's)
        if candidate.is_dir() and (bool(env) and i == 0 or any((candidate / f).is_dir() for f in RUNTIME_FOLDERS)):
            return candidate
    raise MRHNetError("MRHNet resources not found (searched " + ", ".join(map(str, candidates()))
                      + "): reinstall, or set MRHNET_RESOURCES to the extension's Resources folder")


def resource(*parts: str) -> Path:
    """Path of a shipped file; a clear error if it is missing."""
    p = resources_dir().joinpath(*parts)
    if not p.exists():
        raise MRHNetError(f"{p}: shipped resource is missing (incomplete installation?)")
    return p
