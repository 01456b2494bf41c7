"""Engine work in a child process, followed without threads: :class:`ChildJob`.

A GUI thread must never wait on the engine: inside Slicer, PythonQt keeps the GIL while the Qt loop is
idle, so a worker thread would starve or freeze the GUI. A job is therefore ``mrhnet job SPEC.json``
(:mod:`MRHNetLib.cli.job`) in a child process, started with Slicer's own ``PythonSlicer`` inside Slicer
and ``sys.executable`` elsewhere. The child's stdout (JSON lines) goes to a file in the job's private
folder; :meth:`ChildJob.poll`, called from a GUI timer, reads the lines that arrived since the last call
and never blocks. Cancel ends the child (its whole process group) within a second and removes the folder;
so does the end of the Python process that started it. A finished child returns its GPU memory.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

from ..errors import MRHNetError
from .jobs import CANCELLED, DONE, FAILED, FINAL, PENDING, RUNNING, Event

KILL_WAIT_S = 0.8  # after asking the child to stop, how long before it is killed
_LIVE: "weakref.WeakSet[ChildJob]" = weakref.WeakSet()  # children to end when this process exits


def in_slicer() -> bool:
    """Whether this Python runs inside the Slicer application (not slicer-core or PythonSlicer)."""
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None and \
        hasattr(slicer.app, "slicerHome")


def python_command() -> list[str]:
    """The Python that runs engine work: ``PythonSlicer`` inside Slicer (``sys.executable`` is the
    application there), else this interpreter."""
    if not in_slicer():
        return [sys.executable]
    import slicer

    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidates = [shutil.which(name), str(Path(slicer.app.slicerHome) / "bin" / name),
                  str(Path(sys.executable).parent / name)]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        raise MRHNetError(f"{name}: Slicer's Python launcher was not found in {slicer.app.slicerHome}/bin")
    return [found]


def child_environment() -> dict[str, str]:
    """The child's environment: Slicer's startup environment inside Slicer, plus MRHNetLib's folder on
    PYTHONPATH (the extension's install tree is not on PythonSlicer's path) and unbuffered output."""
    env = dict(os.environ)
    if in_slicer():
        import slicer

        env = dict(slicer.util.startupEnvironment())
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ChildJob:
    """``mrhnet job`` on ``spec`` in a child process, with the private folder ``workdir``.

    ``poll()`` returns new :class:`~MRHNetLib.gui.jobs.Event` s: ``progress``, ``data`` (a training
    epoch, payload the row), then exactly one of ``done`` (payload: the outputs dict), ``failed``
    (message; :attr:`details` holds the child's traceback or stderr) or ``cancelled``."""

    def __init__(self, spec: dict[str, Any], workdir: str | os.PathLike, *, name: str = "",
                 remove_workdir: bool = True, python: list[str] | None = None):
        self.spec, self.workdir, self.name = dict(spec), Path(workdir), name or spec.get("kind", "job")
        self.remove_workdir, self.python = remove_workdir, python
        self.state, self.fraction, self.message = PENDING, 0.0, ""
        self.output: dict[str, Any] | None = None
        self.error: str | None = None
        self.details: str | None = None
        self.process: subprocess.Popen | None = None
        self._offset, self._pending = 0, b""

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    @property
    def events_path(self) -> Path:
        return self.workdir / "events.jsonl"

    def start(self) -> "ChildJob":
        if self.state != PENDING:
            raise MRHNetError(f"job '{self.name}' was already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        spec_path = self.workdir / "job.json"
        spec_path.write_text(json.dumps({"parent_pid": os.getpid(), **self.spec}, indent=1))  # the child watches it
        command = (self.python or python_command()) + ["-m", "MRHNetLib", "job", str(spec_path)]
        options: dict[str, Any] = {"start_new_session": True} if os.name != "nt" else \
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
        with open(self.events_path, "wb") as out, open(self.workdir / "stderr.log", "wb") as err:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            env=child_environment(), cwd=str(self.workdir), **options)
        self.state = RUNNING
        _LIVE.add(self)
        return self

    def poll(self) -> list[Event]:
        """Events since the last call (non-blocking); progress events are merged into the latest."""
        if self.state != RUNNING:
            return []
        exit_code = self.process.poll()  # before reading: lines written before the exit are all there
        events: list[Event] = []
        for record in self._read_lines():
            event = self._event(record)
            if event is None:
                continue
            if event.kind == "progress" and events and events[-1].kind == "progress":
                events[-1] = event
            else:
                events.append(event)
            if self.finished:
                self._end()
                return events
        if exit_code is not None:
            stderr = self._stderr_tail()
            events.append(self._finish(FAILED, f"the engine process ended unexpectedly (exit code {exit_code})"
                                       + (f": {stderr.splitlines()[-1]}" if stderr else ""), details=stderr))
            self._end()
        return events

    def cancel(self) -> None:
        """End the child now (within about a second) and remove the job's folder."""
        if self.state == PENDING:
            self.state, self.message = CANCELLED, "cancelled"
        elif self.state == RUNNING:
            self._stop_process()
            self._finish(CANCELLED, "cancelled")
            self._end()

    def wait(self, timeout: float | None = None, interval: float = 0.05, on_event=None) -> dict[str, Any]:
        """Block until the job ends (console use); the outputs, or the engine's error raised."""
        import time

        from ..errors import Cancelled

        start = time.monotonic()
        while not self.finished:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if timeout is not None and time.monotonic() - start > timeout:
                self.cancel()
                raise MRHNetError(f"job '{self.name}' did not finish within {timeout:g} s")
            time.sleep(interval)
        if self.state == FAILED:
            raise MRHNetError(self.error or "job failed")
        if self.state == CANCELLED:
            raise Cancelled(f"job '{self.name}' was cancelled")
        return self.output or {}

    # --- internals -------------------------------------------------------------------------
    def _read_lines(self) -> list[dict[str, Any]]:
        try:
            with open(self.events_path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:  # a stray print of a library: not ours
                continue
        return records

    def _event(self, record: dict[str, Any]) -> Event | None:
        kind = record.get("event")
        if kind == "progress":
            self.fraction, self.message = float(record.get("fraction", 0.0)), str(record.get("message", ""))
            return Event("progress", self.fraction, self.message)
        if kind == "epoch":
            row = {k: v for k, v in record.items() if k != "event"}
            loss = row.get("train_loss")
            text = f"training: epoch {row.get('epoch')}" + (f", loss {loss:.4g}" if isinstance(loss, float) else "")
            return Event("data", self.fraction, text, row)
        if kind == "done":
            return self._finish(DONE, "done", payload=record.get("outputs") or {})
        if kind == "failed":
            return self._finish(FAILED, str(record.get("message") or "failed"),
                                details=record.get("details") or self._stderr_tail())
        return None

    def _finish(self, kind: str, message: str, payload: Any = None, details: str | None = None) -> Event:
        self.state, self.message = kind, message
        if kind == DONE:
            self.output, self.fraction = payload, 1.0
        elif kind == FAILED:
            self.error, self.details = message, details
        return Event(kind, self.fraction, message, payload)

    def _stderr_tail(self, limit: int = 4000) -> str:
        try:
            return (self.workdir / "stderr.log").read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    def _stop_process(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        if os.name == "nt":  # PythonSlicer.exe is a launcher: the job runs in its child, so end the tree
            try:  # no console window flashing up from the GUI
                subprocess.run(kill_tree_command(proc.pid), capture_output=True, check=False, timeout=5 * KILL_WAIT_S,
                               creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            except (OSError, subprocess.TimeoutExpired):
                pass  # the launcher itself is still killed below
            try:
                proc.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            return
        try:  # the job turns SIGTERM into SystemExit and cleans up (MRHNetLib.cli.job.exit_on_sigterm)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=KILL_WAIT_S)
        except ProcessLookupError:
            pass

    def _end(self) -> None:
        """After the final event: a failed or cancelled child is made sure to be gone and its folder
        removed; a successful one exits by itself (its folder holds the outputs until :meth:`cleanup`)."""
        _LIVE.discard(self)
        if self.state != DONE:
            self._stop_process()
            if self.remove_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def cleanup(self) -> None:
        """Remove the job's folder (after its outputs were read)."""
        if self.remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def kill_tree_command(pid: int) -> list[str]:
    """Windows: the command that ends process ``pid`` and all its children (the CTK launcher
    ``PythonSlicer.exe`` starts the real interpreter as a child, which ``terminate`` would leave running)."""
    return ["taskkill", "/F", "/T", "/PID", str(int(pid))]


@atexit.register
def _end_children() -> None:
    for job in list(_LIVE):
        job.cancel()
