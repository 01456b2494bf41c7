"""Errors and progress reporting shared by every part of the engine."""
from __future__ import annotations

from typing import Callable, Optional


class MRHNetError(ValueError):
    """A user-facing problem with inputs, models or options: one line that names the file and the problem."""


class Cancelled(RuntimeError):
    """Raised inside long work when the caller asked to stop (see :class:`Progress`)."""


ProgressCallback = Callable[[float, str], Optional[bool]]
"""``callback(fraction, message)``: fraction in [0, 1]. Returning ``False`` asks the work to stop."""


class Progress:
    """Forwards progress of one piece of work, optionally as a sub-range of a larger one.

    ``Progress(callback)`` calls ``callback(fraction, message)``; when the callback returns ``False``
    (or :meth:`cancel` was called) the next :meth:`update` raises :class:`Cancelled`.
    """

    def __init__(self, callback: ProgressCallback | None = None, start: float = 0.0, end: float = 1.0,
                 parent: "Progress | None" = None):
        self.callback = callback
        self.start, self.end = start, end
        self.parent = parent
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled or (self.parent is not None and self.parent.cancelled)

    def update(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1) of this piece of work; raise :class:`Cancelled` if asked to stop."""
        value = self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0)
        if self.parent is not None:
            self.parent.update(value, message)
        elif self.callback is not None and self.callback(value, message) is False:
            self._cancelled = True
        if self.cancelled:
            raise Cancelled(message or "cancelled")

    def sub(self, start: float, end: float) -> "Progress":
        """A child reporting into [start, end] of this one's range."""
        return Progress(None, start, end, parent=self)


def as_progress(progress: "Progress | ProgressCallback | None") -> Progress:
    """Accept a Progress, a bare callback or None."""
    return progress if isinstance(progress, Progress) else Progress(progress)


def error_message(exc: BaseException) -> str:
    """One line for the user: an MRHNetError as it is, anything else with its type."""
    if isinstance(exc, MRHNetError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'unexpected error'}"
