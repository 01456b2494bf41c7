"""``mrhnet job SPEC.json``: run one piece of GUI work and report it as JSON lines on stdout.

The Slicer module and the web app start their engine work as this command in a child process
(:mod:`MRHNetLib.gui.process`): inside Slicer with ``PythonSlicer -m MRHNetLib job SPEC``, elsewhere with
``sys.executable``. Everything goes through files in the job's private folder; stdout carries one JSON
object per line:

* ``{"event": "progress", "fraction": 0.4, "message": "..."}`` (at most every 0.1 s, and the last one)
* ``{"event": "epoch", "epoch": 3, "train_loss": ..., "val_loss": ...}`` (training: one per epoch)
* ``{"event": "done", "outputs": {...}}`` (paths of what was written; a predict job with ``"evaluate": true``
  on a subject with histology adds ``"evaluation": {"report": report.json, "figure": report.png}``), or
* ``{"event": "failed", "message": "one line", "details": "traceback or empty"}``.

Spec kinds (``"kind"``): ``predict`` (subject folder, models, out folder, device, chunk_voxels, evaluate),
``train`` (subject folder, target, out model, base_model, options, run_dir) and ``phantom`` (out
folder, brain, size, seed). The exit code is 0 on success, 2 for a user error, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..errors import MRHNetError, error_message

MAP_SUFFIX = ".nii"  # uncompressed: the GUI loads them back at once
EVALUATION_START = 0.85  # share of a predict job's progress bar before its evaluation
Emit = Callable[[dict[str, Any]], None]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("job", help="run GUI work described by a JSON file, reporting JSON lines",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="the job's JSON file")
    p.set_defaults(func=run)


def emitter(stream=None) -> Emit:
    """Write one JSON object per line and flush (the parent reads the lines as they come)."""
    out = stream or sys.stdout

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    return emit


def progress_reporter(emit: Emit, interval_s: float = 0.1) -> Callable[[float, str], None]:
    """A progress callback that emits at most every ``interval_s`` (always when the message changes)."""
    last = {"t": 0.0, "message": None}

    def report(fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if now - last["t"] >= interval_s or message != last["message"] or fraction >= 1.0:
            last.update(t=now, message=message)
            emit({"event": "progress", "fraction": round(float(fraction), 4), "message": message})

    return report


def run_predict(spec: dict[str, Any], emit: Emit) -> dict[str, Any]:
    from ..data.subject import load_subject
    from ..errors import Progress
    from ..network.infer import predict, write_maps

    subject = load_subject(spec["subject"], name=spec.get("name"))
    progress = Progress(progress_reporter(emit))
    evaluated = bool(spec.get("evaluate")) and bool(subject.targets())
    maps = predict(subject, spec["models"], device=spec.get("device", "auto"), chunk_voxels=spec.get("chunk_voxels"),
                   progress=progress.sub(0.0, EVALUATION_START if evaluated else 1.0))
    written = write_maps(maps, spec["out"], suffix=spec.get("suffix", MAP_SUFFIX))
    outputs: dict[str, Any] = {key: str(path) for key, path in written.items()}
    if evaluated:
        report = evaluate_maps(subject, maps, Path(spec["out"]), progress.sub(EVALUATION_START, 1.0))
        if report:
            outputs["evaluation"] = report
    return outputs


def evaluate_maps(subject, maps: dict[str, Any], out: Path, progress) -> dict[str, str]:
    """Evaluate the maps that have the subject's histology (:func:`MRHNetLib.evaluation.evaluate.evaluate`) and
    write report.json, report.md and report.png into ``out``: their paths, ``{}`` when no map has
    histology, or ``{"problem": one line}`` when the evaluation cannot be made (the maps stand)."""
    from ..evaluation.evaluate import MARKERS, evaluate

    chosen = {key: vol for key, vol in maps.items() if key in subject.targets()}  # never an ensemble's _std
    if not chosen:
        return {}
    markers = [m for m in MARKERS if m != "md" or "md" in subject.images]  # deriving MD is a slow DTI fit
    try:
        paths = evaluate(chosen, subject=subject, markers=markers, progress=progress).save(out)
    except MRHNetError as exc:
        return {"problem": f"evaluation: {exc}"}
    return {"report": str(paths["json"]), "figure": str(paths["png"])}


def run_train(spec: dict[str, Any], emit: Emit) -> dict[str, Any]:
    from ..data.subject import load_subject
    from ..network.config import config_for
    from ..network.train import finetune, read_log, train

    subject = load_subject(spec["subject"], name=spec.get("name"))
    base = spec.get("base_model")
    config = config_for("finetune" if base else "train", **spec.get("options", {}))
    run_dir = Path(spec["run_dir"])
    report = progress_reporter(emit)
    shown, stamp = 0, None

    def progress(fraction: float, message: str = "") -> None:
        """Progress (every batch), and one epoch event per new row of the run's log, read only when the
        log file changed (it is rewritten once an epoch)."""
        nonlocal shown, stamp
        report(fraction, message)
        try:
            st = (run_dir / "log.json").stat()
        except OSError:
            return
        if (st.st_mtime_ns, st.st_size) == stamp:
            return
        try:
            history = read_log(run_dir)
        except MRHNetError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        for row in history[shown:]:
            emit({"event": "epoch", **row})
        shown = len(history)

    if base:
        path = finetune(base, [subject], spec["target"], spec["out"], config, progress=progress, run_dir=run_dir,
                        keep_run_dir=True)
    else:
        path = train([subject], spec["target"], spec["out"], config, progress=progress, run_dir=run_dir,
                     keep_run_dir=True)  # the log is read after the last epoch; the job's folder goes anyway
    progress(1.0, "saved")
    return {"model": str(path)}


def run_phantom(spec: dict[str, Any], emit: Emit) -> dict[str, Any]:
    from ..simulation.phantom import simulate_subject

    subject = simulate_subject(spec.get("brain", "C1"), seed=int(spec.get("seed", 0)),
                               size=spec.get("size", "medium"), progress=progress_reporter(emit))
    folder = subject.save(spec["out"], suffix=spec.get("suffix", MAP_SUFFIX))
    return {"subject": str(folder)}


KINDS: dict[str, Callable[[dict[str, Any], Emit], dict[str, Any]]] = {
    "predict": run_predict, "train": run_train, "phantom": run_phantom}


def execute(spec: dict[str, Any], emit: Emit) -> int:
    """Run ``spec`` and emit its events; the exit code."""
    try:
        kind = spec.get("kind")
        if kind not in KINDS:
            raise MRHNetError(f"unknown job kind {kind!r} (known: {', '.join(KINDS)})")
        outputs = KINDS[kind](spec, emit)
    except MRHNetError as exc:
        emit({"event": "failed", "message": str(exc), "details": ""})
        return 2
    except Exception as exc:  # noqa: BLE001 - every failure reaches the GUI as one line plus details
        emit({"event": "failed", "message": error_message(exc), "details": traceback.format_exc()})
        return 1
    emit({"event": "done", "outputs": outputs})
    return 0


def exit_on_sigterm() -> None:
    """Make the GUI's Cancel (SIGTERM to the job's process group) a ``SystemExit``, so the job's ``finally``
    blocks still run: temporaries go, and an earlier model that a save was replacing is put back. (On Windows
    the GUI ends the process tree instead; nothing runs there.)"""
    if os.name != "nt":
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def watch_parent(pid: int | None, interval_s: float = 1.0) -> None:
    """End the job (as a cancel does, cleanup included) when the GUI process ``pid`` is gone: a crashed or
    killed Slicer or web app must not leave its engine computing. Checked once per ``interval_s`` by a daemon
    thread; POSIX only (Windows ends the job with its GUI's process tree only on Cancel)."""
    if not pid or os.name == "nt":
        return
    import threading

    def alive() -> bool:
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, PermissionError):  # gone, or the number now is another user's process
            return False
        return True

    def watch() -> None:
        while alive():
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="mrhnet-parent-watch", daemon=True).start()


def run(args: argparse.Namespace) -> int:
    exit_on_sigterm()
    path = Path(args.spec)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MRHNetError(f"{path}: cannot read the job file ({exc})") from None
    watch_parent(spec.get("parent_pid"))
    return execute(spec, emitter())
