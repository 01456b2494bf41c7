"""Background jobs for GUIs: run an engine function in a worker thread or process, poll it from a timer.

Used by the Slicer module (a ``QTimer`` calls :meth:`Job.poll`) and the web app (an asyncio loop does).
The engine function is called as ``func(*args, progress=Progress, **kwargs)``; each of its
``progress.update(fraction, message)`` calls is forwarded as an :class:`Event` through a thread-safe
queue, and is also where a cancel takes effect (the engine raises :class:`~MRHNetLib.errors.Cancelled`).

* ``mode="thread"`` (default): cheap, results shared in memory; torch releases the GIL in its kernels,
  so the GUI stays responsive. A worker that does not reach a progress check within ``cancel_grace_s``
  is abandoned: the job reports ``cancelled`` anyway and whatever it returns later is dropped.
* ``mode="process"``: a spawned Python process; results come back pickled. A worker that does not
  stop within ``cancel_grace_s`` is terminated. ``func`` must be importable (a module-level function).

A job's :attr:`Job.output` is set only on success; a failed or cancelled job has none. Two ways to
follow a job: :meth:`Job.poll` (events, for a GUI timer), or the :attr:`Job.done` / :attr:`Job.progress`
properties and :meth:`Job.result` (as ``concurrent.futures``), which poll for you.
"""
from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import Cancelled, MRHNetError, Progress, error_message

PENDING, RUNNING, CANCELLING, DONE, FAILED, CANCELLED = (
    "pending", "running", "cancelling", "done", "failed", "cancelled")
FINAL = (DONE, FAILED, CANCELLED)


@dataclass
class Event:
    """One message from a job: ``kind`` is progress, data (a payload from :meth:`Job.emit`), done,
    failed or cancelled."""

    kind: str
    fraction: float = 0.0
    message: str = ""
    payload: Any = None


class _Reporter:
    """Picklable callbacks a worker uses to talk to the job: progress (returns False to stop) and data."""

    def __init__(self, q, stop):
        self.q, self.stop = q, stop

    def progress(self, fraction: float, message: str) -> bool:
        self.q.put(("progress", float(fraction), message, None))
        return not self.stop.is_set()

    def emit(self, payload: Any, message: str = "") -> None:
        self.q.put(("data", 0.0, message, payload))


def _run(func: Callable, args: tuple, kwargs: dict, reporter: _Reporter, pass_emit: str | None) -> None:
    """Worker body (thread or child process): run ``func`` and post exactly one final message."""
    try:
        extra = {pass_emit: reporter.emit} if pass_emit else {}
        result = func(*args, progress=Progress(reporter.progress), **extra, **kwargs)
        if reporter.stop.is_set():
            reporter.q.put(("cancelled", 1.0, "cancelled", None))
        else:
            reporter.q.put(("done", 1.0, "done", result))
    except Cancelled:
        reporter.q.put(("cancelled", 1.0, "cancelled", None))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a message for the GUI
        reporter.q.put(("failed", 1.0, error_message(exc), traceback.format_exc()))


class Job:
    """A function run in the background; see the module docstring.

    ``emit_as``: name of a keyword argument through which ``func`` receives ``emit(payload, message="")``
    to send data (for example one loss value per epoch) that :meth:`poll` returns as ``data`` events."""

    def __init__(self, func: Callable, *args: Any, mode: str = "thread", cancel_grace_s: float = 1.5,
                 emit_as: str | None = None, name: str = "", **kwargs: Any):
        if mode not in ("thread", "process"):
            raise MRHNetError(f"unknown job mode '{mode}' (use 'thread' or 'process')")
        self.func, self.args, self.kwargs = func, args, kwargs
        self.mode, self.cancel_grace_s, self.emit_as = mode, cancel_grace_s, emit_as
        self.name = name or getattr(func, "__name__", "job")
        self.state = PENDING
        self.fraction, self.message = 0.0, ""
        self.output: Any = None
        self.error: str | None = None
        self.details: str | None = None
        self._cancel_time: float | None = None
        self._worker: Any = None
        if mode == "thread":
            self._queue: Any = queue.Queue()
            self._stop: Any = threading.Event()
        else:
            import multiprocessing

            self._ctx = multiprocessing.get_context("spawn")
            self._queue = self._ctx.Queue()
            self._stop = self._ctx.Event()

    # --- control ---------------------------------------------------------------------------
    def start(self) -> "Job":
        if self.state != PENDING:
            raise MRHNetError(f"job '{self.name}' was already started")
        reporter = _Reporter(self._queue, self._stop)
        body = (self.func, self.args, self.kwargs, reporter, self.emit_as)
        if self.mode == "thread":
            self._worker = threading.Thread(target=_run, args=body, name=f"MRHNet {self.name}", daemon=True)
        else:
            self._worker = self._ctx.Process(target=_run, args=body, name=f"MRHNet {self.name}", daemon=True)
        self.state = RUNNING
        self._worker.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop; it ends as ``cancelled`` within about ``cancel_grace_s`` seconds."""
        if self.state in (PENDING,):
            self.state, self.message = CANCELLED, "cancelled"
        elif self.state == RUNNING:
            self._stop.set()
            self._cancel_time = time.monotonic()
            self.state, self.message = CANCELLING, "cancelling"

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    @property
    def running(self) -> bool:
        return self.state in (RUNNING, CANCELLING)

    @property
    def done(self) -> bool:
        """Poll, then say whether the job has ended (done, failed or cancelled)."""
        if not self.finished and self.state != PENDING:
            self.poll()
        return self.finished

    @property
    def progress(self) -> tuple[float, str]:
        """Poll, then the latest (fraction, message)."""
        self.done  # noqa: B018 - polls
        return self.fraction, self.message

    def result(self) -> Any:
        """The output of a finished job; MRHNetError if it failed or has not finished, Cancelled if cancelled."""
        if not self.done:
            raise MRHNetError(f"job '{self.name}' has not finished")
        if self.state == FAILED:
            raise MRHNetError(self.error or "job failed")
        if self.state == CANCELLED:
            raise Cancelled(f"job '{self.name}' was cancelled")
        return self.output

    def emit(self, payload: Any, message: str = "") -> None:
        """Send a data event from inside a thread-mode worker (process workers use ``emit_as``)."""
        self._queue.put(("data", 0.0, message, payload))

    # --- polling ---------------------------------------------------------------------------
    def poll(self) -> list[Event]:
        """Drain pending messages (non-blocking) and update the state. Consecutive progress events are
        merged into the latest; the final event (done / failed / cancelled) comes exactly once."""
        events: list[Event] = []
        if self.finished:
            return events
        while True:
            try:
                kind, fraction, message, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            event = Event(kind, fraction, message, payload)
            if kind == "progress":
                if self.state == RUNNING:
                    self.fraction, self.message = fraction, message
                if events and events[-1].kind == "progress":
                    events[-1] = event
                else:
                    events.append(event)
            elif kind == "data":
                if self.state == RUNNING:
                    events.append(event)
            else:
                events.append(self._finish(kind, message, payload))
                return events
        if self.state == CANCELLING and time.monotonic() - (self._cancel_time or 0) > self.cancel_grace_s:
            if self.mode == "process" and self._worker.is_alive():
                self._worker.terminate()
            events.append(self._finish(CANCELLED, "cancelled", None))
        elif self.state == RUNNING and self.mode == "process" and not self._worker.is_alive() \
                and self._queue.empty():
            time.sleep(0.05)  # the final message may still be in the pipe
            if self._queue.empty():
                events.append(self._finish(FAILED, f"worker process ended unexpectedly (exit code "
                                                   f"{self._worker.exitcode})", None))
        return events

    def _finish(self, kind: str, message: str, payload: Any) -> Event:
        if self.state == CANCELLING and kind == DONE:
            kind, message, payload = CANCELLED, "cancelled", None  # a result after cancel is dropped
        self.state = kind
        if kind == DONE:
            self.output, self.fraction, self.message = payload, 1.0, "done"
        elif kind == FAILED:
            self.error, self.details, self.message = message, payload, message
        else:
            self.message = "cancelled"
        return Event(kind, self.fraction, message, payload if kind == DONE else None)

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             on_event: Callable[[Event], Any] | None = None) -> Any:
        """Block until the job ends (polling); return its result, raise MRHNetError if it failed or
        :class:`Cancelled` if it was cancelled. ``on_event`` sees every event (e.g. to pump a GUI)."""
        start = time.monotonic()
        while not self.finished:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self.finished:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                raise MRHNetError(f"job '{self.name}' did not finish within {timeout:g} s")
            time.sleep(interval)
        return self.result()


def start_job(func: Callable, *args: Any, **kwargs: Any) -> Job:
    """Create and start a :class:`Job` (same arguments)."""
    return Job(func, *args, **kwargs).start()
