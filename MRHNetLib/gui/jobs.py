"""What a GUI sees of a job: its states and its :class:`Event` s.

A job (:class:`MRHNetLib.gui.process.ChildJob`, followed by :class:`MRHNetLib.gui.controller.Controller`)
goes from ``pending`` to ``running`` and ends ``done``, ``failed`` or ``cancelled``; each poll returns the
events since the last one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
FINAL = (DONE, FAILED, CANCELLED)


@dataclass
class Event:
    """One message from a job: ``kind`` is progress, data (a payload such as a training epoch's row),
    done (payload: the result), failed or cancelled."""

    kind: str
    fraction: float = 0.0
    message: str = ""
    payload: Any = None
