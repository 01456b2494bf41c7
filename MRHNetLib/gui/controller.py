"""The GUI controller that the Slicer module and the web app share: framework-free, driven by a timer.

One :class:`Controller` per scene owns what a front-end does beyond its widgets:

* the **inputs** (:class:`Inputs`: scene nodes by role, or a subject folder) and the **model catalogue**
  with each model's description and its protocol check against the inputs (cached; from node or file
  headers, no voxel is read: :func:`MRHNetLib.data.headers.folder_header_subject`);
* **one job at a time** (prediction, training or the sample brain), run as ``mrhnet job`` in a child
  process (:mod:`MRHNetLib.gui.process`): the inputs are written to a private temporary folder one file
  per tick, the child is followed by :meth:`Controller.poll`, cancel ends it within a second and removes
  the folder;
* **publishing** results into the scene: maps as styled overlay volumes (a re-run updates them), the
  evaluation against the subject's histology when asked for (computed by the child), the sample brain's
  images, the training loss curve.

A front-end calls :meth:`Controller.poll` from its timer (Slicer: ``QTimer``; web app: an asyncio task)
and shows the returned :class:`~MRHNetLib.gui.jobs.Event` s; console code calls :meth:`Controller.wait`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator


from ..data.headers import folder_header_subject, folder_stamp
from ..display import DEFAULT_OPACITY
from ..errors import Cancelled, MRHNetError
from . import scene as sc
from .jobs import Event
from .process import ChildJob

INPUT_ROLES = ("t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000", "fa")
SAMPLE_NAME = "MRHNet phantom brain"


@dataclass
class Inputs:
    """What a job runs on: input nodes by role (with gradient files for 4D volumes and sequences, and an
    optional mask node), or a subject ``folder``; ``source`` is the node that outputs follow (default: the
    T2w node; for a folder it must be given: the folder's T2w shown in the scene). ``targets``: histology
    nodes by stain, written for the child only when a prediction is to be evaluated (a folder brings its own)."""

    nodes: dict[str, Any] = field(default_factory=dict)
    gradients: dict[str, str] = field(default_factory=dict)
    mask: Any = None
    folder: str | None = None
    source: Any = None
    targets: dict[str, Any] = field(default_factory=dict)

    def chosen(self) -> dict[str, Any]:
        return {role: node for role, node in self.nodes.items() if node is not None}

    @property
    def empty(self) -> bool:
        return not self.chosen() and self.folder is None

    def source_node(self) -> Any:
        return self.source if self.source is not None else sc.source_node_of(**self.chosen())

    def key(self) -> tuple:
        """Changes whenever the inputs (or their voxels) change: the cache key of the model checks."""
        def stamp(node):
            image = node.GetImageData() if hasattr(node, "GetImageData") else None
            return node.GetID(), node.GetMTime(), image.GetMTime() if image is not None else 0

        return (tuple((r, stamp(n)) for r, n in sorted(self.chosen().items())),
                tuple(sorted((r, str(p)) for r, p in self.gradients.items() if p)), self.folder,
                folder_stamp(self.folder) if self.folder is not None else (),
                self.source.GetName() if self.folder is not None and self.source is not None else None)


@dataclass
class _Task:
    """One job: prepare steps (GUI side), the child process, publish steps (GUI side)."""

    kind: str
    label: str
    workdir: Path
    spec: dict[str, Any]
    prepare: Iterator[str]
    publish: Callable[[dict[str, Any]], Iterator[str]]
    job: ChildJob | None = None
    stage: str = "prepare"
    steps: Iterator[str] | None = None
    result: Any = None


class Controller:
    """See the module docstring. ``workroot``: where private job folders are made (default: the system's
    temporary folder); ``python``: the command that runs the engine (default: :func:`process.python_command`)."""

    def __init__(self, scene, *, workroot: str | os.PathLike | None = None, python: list[str] | None = None):
        self.scene, self.workroot, self.python = scene, workroot, python
        self.task: _Task | None = None
        self.last: str | None = None  # the kind of the job that ended last
        self.outputs: dict[str, Any] = {}
        self.plot: sc.LossPlot | None = None
        self.evaluation: Report | None = None  # of the latest prediction run with ``evaluate``
        self._checks: dict[tuple, list[str]] = {}
        self._infos: dict[str, Any] = {}

    # --- models ------------------------------------------------------------------------------
    @staticmethod
    def catalogue() -> list[Any]:
        """The shipped models (:func:`MRHNetLib.network.catalog.list_models`)."""
        from ..network.catalog import list_models

        return list_models()

    def model_info(self, model: str):
        """A model's information (its model.json, read once)."""
        from ..network.catalog import resolve
        from ..network.modelfile import read_info

        key = str(model)
        if key not in self._infos:
            self._infos[key] = read_info(resolve(model))
        return self._infos[key]

    def describe(self, models: list[str]) -> tuple[str, list[str]]:
        """(each model's target, depth, description, protocol and training, problems reading them)."""
        lines, problems = [], []
        for name in models:
            try:
                info = self.model_info(name)
            except MRHNetError as exc:
                problems.append(str(exc))
                continue
            lines += [f"{name}: {info.target.upper()}, depth {info.depth}. {info.description}",
                      info.protocol.describe(), f"  trained: {info.training.get('summary', 'n/a')}", ""]
        return "\n".join(lines), problems

    def summary(self, inputs: Inputs | Any, models: list[str]) -> tuple[str, list[str]]:
        """What a panel shows: the models' description and every problem (reading them, or the inputs'
        check against them) as one line each; never raises."""
        from ..errors import error_message

        try:
            text, problems = self.describe(models)
            has_inputs = not inputs.empty if isinstance(inputs, Inputs) else inputs is not None
            return text, problems or (self.check(inputs, models) if has_inputs and models else [])
        except Exception as exc:  # noqa: BLE001 - shown in the panel, never as a traceback
            return "", [error_message(exc)]

    def check(self, inputs: Inputs | Any, models: list[str]) -> list[str]:
        """The engine's one-line problem for every model the inputs do not fit (empty: all fit). Node and
        folder inputs are checked from their headers; a loaded :class:`~MRHNetLib.data.subject.Subject` as it is."""
        from ..network.checks import check_subject

        key = (inputs.key() if isinstance(inputs, Inputs) else id(inputs), tuple(models))
        if key in self._checks:
            return self._checks[key]
        problems: list[str] = []
        try:
            subject = header_subject_of(inputs) if isinstance(inputs, Inputs) else inputs
        except MRHNetError as exc:
            problems.append(str(exc))
        else:
            for name in models:
                try:
                    check_subject(subject, self.model_info(name))
                except MRHNetError as exc:
                    problems.append(f"{Path(str(name)).name}: {exc}")
        self._checks = {key: problems}  # only the latest selection is worth keeping
        return problems

    # --- jobs --------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.task is not None

    @property
    def kind(self) -> str | None:
        """``predict``, ``train`` or ``sample`` while a job runs, else None."""
        return self.task.kind if self.task else None

    def predict(self, inputs: Inputs, models: list[str], *, device: str = "auto", opacity: float = DEFAULT_OPACITY,
                chunk_voxels: int | None = None, evaluate: bool = False) -> None:
        """Start the models on the inputs; on success the maps become overlay volumes beside the source.
        ``evaluate``: the child also evaluates the maps against the subject's histology (when it has some);
        the report is then in :attr:`evaluation`."""
        if not models:
            raise MRHNetError("choose at least one model")
        problems = self.check(inputs, list(models))
        if problems:
            raise MRHNetError(problems[0])
        source = inputs.source_node()
        work = self._workdir()
        subject = Path(inputs.folder) if inputs.folder else work / "subject"
        prepare = iter(()) if inputs.folder else sc.write_subject_steps(
            subject, inputs.chosen(), inputs.gradients, inputs.mask, targets=inputs.targets if evaluate else None)
        spec = {"kind": "predict", "subject": str(subject), "models": [str(m) for m in models], "out": str(work / "maps"),
                "device": device, "chunk_voxels": chunk_voxels, "name": source.GetName(), "evaluate": evaluate}

        def publish(outputs: dict[str, Any]) -> Iterator[str]:
            from ..data.io import read_volume

            outputs = dict(outputs)
            report = outputs.pop("evaluation", None)
            maps = {}
            for key, path in outputs.items():
                maps[key] = read_volume(path)
                yield f"reading {key}"
            self.outputs = sc.publish_outputs(self.scene, maps, source, opacity=opacity)
            self.evaluation = read_report(report) if report else None
            self.task.result = self.outputs
            yield "done"

        self._begin(_Task("predict", f"running {len(models)} model(s)", work, spec, prepare, publish))

    def train(self, inputs: Inputs, target, stain: str, out: str | os.PathLike, *, base_model: str | None = None,
              options: dict[str, Any] | None = None) -> None:
        """Start training (or fine-tuning ``base_model``) on the inputs and the histology node ``target``;
        the loss curve fills :attr:`plot` epoch by epoch; the model is written to ``out`` (``NAME.mrhnet``)."""
        if target is None:
            raise MRHNetError("choose the histology (target) volume to train on")
        from ..network.modelfile import check_model_path

        out = Path(out)
        check_model_path(out)  # NAME.mrhnet, and never a folder holding anything but an earlier model
        name = inputs.source_node().GetName()  # refuses missing inputs before a job folder exists
        work = self._workdir()
        prepare = sc.write_subject_steps(work / "subject", inputs.chosen(), inputs.gradients, inputs.mask,
                                         targets={stain: target})
        spec = {"kind": "train", "subject": str(work / "subject"), "target": stain, "out": str(out),
                "base_model": str(base_model) if base_model else None, "options": dict(options or {}),
                "run_dir": str(work / "run"), "name": name}
        self.plot = sc.LossPlot(self.scene)

        def publish(outputs: dict[str, Any]) -> Iterator[str]:
            self.task.result = outputs.get("model", str(out))
            yield "saved"

        self._begin(_Task("train", "training", work, spec, prepare, publish))

    def load_sample(self, *, size: str = "medium", seed: int = 0, name: str = SAMPLE_NAME) -> None:
        """Simulate the sample brain in the child and add its images and histology to the scene."""
        work = self._workdir()
        spec = {"kind": "phantom", "out": str(work / "subject"), "brain": "C1", "size": size, "seed": seed}

        def publish(outputs: dict[str, Any]) -> Iterator[str]:
            nodes: dict[str, Any] = {}
            try:
                for role, node in read_subject_nodes(self.scene, Path(outputs["subject"]), name):
                    if node is None:
                        yield f"reading {role}"
                        continue
                    nodes[role] = node
                    yield f"loading {role}"
            except GeneratorExit:  # cancelled while loading: the scene keeps none of it
                for node in nodes.values():
                    sc.remove_node(self.scene, node)
                raise
            sc.show_overlay(self.scene, None, nodes.get("t2w"), 0.0)
            self.task.result = nodes
            yield "done"

        self._begin(_Task("sample", "simulating the sample brain", work, spec, iter(()), publish))

    def poll(self) -> list[Event]:
        """Advance the current job by one small step; its events (the final one exactly once)."""
        task = self.task
        if task is None:
            return []
        try:
            if task.stage == "prepare":
                message = next(task.prepare, None)
                if message is not None:
                    return [Event("progress", 0.0, message)]
                task.job = ChildJob(task.spec, task.workdir, name=task.kind, python=self.python).start()
                task.stage = "run"
                return [Event("progress", 0.0, f"{task.label}...")]
            if task.stage == "run":
                return self._follow(task)
            message = next(task.steps, None)
            if message is not None:
                return [Event("progress", 1.0, message)]
            return [self._end(Event("done", 1.0, "done", task.result))]
        except MRHNetError as exc:
            return [self._end(Event("failed", 0.0, str(exc)))]
        except Exception as exc:  # noqa: BLE001 - an unexpected problem ends the job, shown as one line
            from ..errors import error_message

            return [self._end(Event("failed", 0.0, error_message(exc)))]

    def cancel(self) -> bool:
        """End the current job (the child within a second; its folder removed); False when none ran."""
        task = self.task
        if task is None:
            return False
        if task.job is not None:
            task.job.cancel()
        self._end(Event("cancelled", 0.0, "cancelled"))
        return True

    def scene_closing(self) -> bool:
        """The scene is about to be cleared: cancel the job if it needs the scene (a prediction, the sample
        brain, training still copying its inputs). A training run in its child goes on; :meth:`scene_closed`
        brings its loss plot back. True when a job was cancelled."""
        task = self.task
        if task is None or (task.kind == "train" and task.stage != "prepare"):
            return False
        return self.cancel()

    def scene_closed(self) -> None:
        """The scene was cleared: a running training's loss plot goes back into it, with the epochs so far."""
        if self.task is not None and self.task.kind == "train" and self.plot is not None:
            self.plot = sc.LossPlot(self.scene, rows=self.plot.rows)

    def wait(self, timeout: float | None = None, on_event: Callable[[Event], Any] | None = None,
             interval: float = 0.02, tick: Callable[[], Any] | None = None) -> Any:
        """Poll until the current job ends (console use); its result, or the engine's error raised.
        ``tick`` runs between polls (inside Slicer: ``slicer.app.processEvents`` keeps the GUI alive)."""
        import time

        start, final = time.monotonic(), None
        while self.task is not None:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
                if event.kind in ("done", "failed", "cancelled"):
                    final = event
            if timeout is not None and time.monotonic() - start > timeout and self.task is not None:
                self.cancel()
                raise MRHNetError(f"the job did not finish within {timeout:g} s")
            if tick is not None:
                tick()
            if self.task is not None:
                time.sleep(interval)
        if final is None or final.kind == "cancelled":
            raise Cancelled("the job was cancelled")
        if final.kind == "failed":
            raise MRHNetError(final.message)
        return final.payload

    def result_text(self, result: Any) -> str:
        """One status line for the result of the job that ended last."""
        if self.last == "train":
            return f"model saved: {result}"
        if self.last == "sample":
            return "sample brain loaded"
        return "done: " + ", ".join(node.GetName() for node in (result or {}).values())

    # --- internals ---------------------------------------------------------------------------
    def _workdir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="mrhnet-job-", dir=self.workroot))

    def _begin(self, task: _Task) -> None:
        if self.task is not None:
            shutil.rmtree(task.workdir, ignore_errors=True)
            raise MRHNetError(f"{self.task.label} is in progress: wait for it or cancel it first")
        self.task = task

    def _follow(self, task: _Task) -> list[Event]:
        events = []
        for event in task.job.poll():
            if event.kind == "data" and self.plot is not None and task.kind == "train":
                row = event.payload
                self.plot.append(row["epoch"], train=row.get("train_loss"), validation=row.get("val_loss"))
            if event.kind == "done":
                task.stage, task.steps = "publish", task.publish(event.payload or {})
                events.append(Event("progress", 1.0, "reading results"))
                break
            if event.kind in ("failed", "cancelled"):
                self.task, self.last = None, task.kind
                shutil.rmtree(task.workdir, ignore_errors=True)
                events.append(Event(event.kind, event.fraction, event.message, task.job.details))
                break
            events.append(event)
        return events

    def _end(self, event: Event) -> Event:
        task, self.task = self.task, None
        if task is not None:
            self.last = task.kind
            if task.job is not None and not task.job.finished:
                task.job.cancel()
            for steps in (task.prepare, task.steps):  # a background write ends first; a half-loaded sample goes
                getattr(steps, "close", lambda: None)()
            shutil.rmtree(task.workdir, ignore_errors=True)
        return event


@dataclass
class Report:
    """A prediction's evaluation against the subject's histology, as the child wrote it: the summary of
    :func:`MRHNetLib.evaluation.evaluate.evaluate` (report.json) and its figure (report.png); or, when the
    evaluation could not be made, the one-line ``problem``."""

    summary: dict[str, Any] = field(default_factory=dict)
    figure: bytes = b""
    problem: str = ""


def read_report(entry: dict[str, str]) -> Report:
    """The report the child's ``evaluation`` output names (``report`` and ``figure`` paths, or ``problem``)."""
    if entry.get("problem"):
        return Report(problem=entry["problem"])
    return Report(json.loads(Path(entry["report"]).read_text()), Path(entry["figure"]).read_bytes())


# --- subjects from headers only: what the model checks need ----------------------------------------
def header_subject_of(inputs: Inputs):
    """The inputs' roles, grids and gradients without their voxels: from the nodes, else from the folder's
    file headers (named as the child will name the subject: after the source node)."""
    if inputs.folder is not None and not inputs.chosen():
        return folder_header_subject(inputs.folder, name=inputs.source.GetName() if inputs.source else None)
    return sc.header_subject(inputs.chosen(), inputs.gradients)


def read_subject_nodes(scene, folder: Path, name: str) -> Iterator[tuple[str, Any]]:
    """A subject folder's images as new scene nodes, one per step, named as
    :func:`~MRHNetLib.gui.scene.add_subject_nodes` names them; nodes keep no link to the files. A worker thread
    reads each file (seconds for a whole-brain DWI shell) while the steps yield ``(role, None)``; the node is
    added on the calling (GUI) thread once its file is read. Closing the steps waits for the read in flight."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.io import read_dwi, read_volume
    from ..data.protocol import DWI_ROLES
    from ..data.subject import DWI, _find

    def read(role: str, path: Path):
        if role in DWI_ROLES:
            return DWI(*read_dwi(path, folder / f"{role}.bval", folder / f"{role}.bvec"))
        return read_volume(path, allow_4d=False)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrhnet-read") as reader:
        for role in list(INPUT_ROLES) + ["mask", "af", "nf", "mbp"]:
            path = _find(folder, role)
            if path is None:
                continue
            image = yield from sc.until_done(reader.submit(read, role, path), (role, None))
            yield role, sc.add_role_node(scene, role, image, name)
