"""Where the project's shipped data lives (anatomy maps, models, figures)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MRHNetError


def resources_dir() -> Path:
    """``$MRHNET_RESOURCES`` if set, else ``Resources/`` of the source tree (beside this package)."""
    env = os.environ.get("MRHNET_RESOURCES")
    for candidate in ([Path(env)] if env else []) + [Path(__file__).resolve().parent.parent / "Resources",
                                                     Path(__file__).resolve().parent / "Resources"]:
        if candidate.is_dir():
            return candidate
    raise MRHNetError("MRHNet resources not found: set MRHNET_RESOURCES to the extension's Resources folder")


def resource(*parts: str) -> Path:
    """Path of a shipped file; a clear error if it is missing."""
    p = resources_dir().joinpath(*parts)
    if not p.exists():
        raise MRHNetError(f"{p}: shipped resource is missing (incomplete installation?)")
    return p
