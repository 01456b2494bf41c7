"""MRHNet in the browser: a trame-slicer web app with real Slicer slice views (``mrhnet app``).

The page has a panel like the Slicer module's (subject, models, device, Run / Cancel with progress, the
protocol check's errors, overlay choice and opacity, evaluation, save) next to axial, coronal and
sagittal slice views of a real MRML scene (T2w background, virtual stain as coloured overlay) and an
optional 3D view. What the panel does goes through the GUI controller the Slicer module uses
(:class:`MRHNetLib.gui.controller.Controller`): the model checks, the sample brain, the run and its
evaluation, each as ``mrhnet job`` in a child process, and the outputs as overlay volumes. An asyncio task
on the server loop polls the controller every :data:`POLL_S` seconds and updates the page, so the page
never freezes and the server process never runs the engine.

Security: every HTTP request (the page, its files, the websocket that carries the state and the views)
must carry the app's secret token (``?token=``, a cookie set by the first visit with it, or an
``Authorization: token ...`` header); an aiohttp middleware on the server trame builds refuses the rest with
403 (:func:`require_token`). The app serves 127.0.0.1 unless told otherwise, never another address
without a token (:func:`access_token`), and it reads and writes files only inside the data folder it was
started with: every path that comes from the page goes through :func:`resolve_in`, which refuses absolute
paths, ``..`` and symlinks that leave the folder.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import MRHNetError

SIMULATED = "@simulated"  # subject choice value of the built-in simulated brain
SIMULATED_TITLE = "Simulated brain (built in)"
SIMULATED_NAME = "simulated brain"  # its node names in the scene (and of its maps)
SHIPPED_PREFIX = "shipped:"
DATA_PREFIX = "data:"
MAPS_FOLDER = "maps"  # saved maps go into <subject folder>/maps/<target>.nii.gz, as `mrhnet predict --out` names them
SIM_FOLDER = "simulated_brain"  # stands for the subject folder of the simulated brain, under the data folder
MAX_DEPTH = 3  # how deep subject / model folders are searched under the data folder
POLL_S = 0.1  # how often the server loop polls the controller
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # the addresses served without a token on --no-token
TOKEN_ENV = "MRHNET_APP_TOKEN"  # the token from the environment (does not show in ps, unlike --token)
TOKEN_PARAM = "token"  # ?token=... in the printed URL


# --- files: everything the page asks for stays inside the data folder ----------------------------------
def resolve_in(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """The real path of ``relative`` inside the data folder ``root``; :class:`MRHNetError` for anything that
    would leave it (absolute paths, ``..`` components, symlinks pointing outside)."""
    base = Path(root).resolve()
    text = str(relative).strip()
    rel = Path(text)
    if text.startswith(("/", "\\", "~")) or rel.is_absolute() or rel.drive:
        raise MRHNetError(f"{text}: refused, only paths inside the data folder are allowed")
    if any(part == ".." for part in rel.parts):
        raise MRHNetError(f"{text}: refused, '..' is not allowed (only paths inside the data folder)")
    path = (base / rel).resolve()
    if path != base and base not in path.parents:
        raise MRHNetError(f"{text}: refused, it leads outside the data folder")
    return path


def _relative(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel or "."


def _walk(root: Path, depth: int = MAX_DEPTH):
    """Folders under ``root`` (root included), not following links that leave it, skipping hidden ones."""
    base = root.resolve()
    todo = [(base, 0)]
    while todo:
        folder, level = todo.pop()
        yield folder
        if level >= depth:
            continue
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for child in reversed(children):
            real = child.resolve()
            if real == base or base not in real.parents or child.name.endswith(".mrhnet"):
                continue
            todo.append((real, level + 1))


def list_subjects(root: str | os.PathLike) -> list[str]:
    """Subject folders (holding a T2w image) under the data folder, as paths relative to it ('.' for itself)."""
    from ..data.subject import IMAGE_SUFFIXES

    base = Path(root).resolve()
    return [_relative(base, f) for f in _walk(base)
            if any((f / f"t2w{s}").is_file() for s in IMAGE_SUFFIXES)]


def list_model_folders(root: str | os.PathLike) -> list[str]:
    """User model folders (``*.mrhnet``) under the data folder, relative to it."""
    from ..network.modelfile import SUFFIX

    base = Path(root).resolve()
    found = []
    for folder in _walk(base):
        for p in sorted(folder.glob(f"*{SUFFIX}")):
            real = p.resolve()
            if p.is_dir() and base in real.parents:
                found.append(_relative(base, real))
    return found


def maps_folder(root: str | os.PathLike, subject_folder: Path | None) -> Path:
    """Where the maps of a subject are saved: ``maps/`` in its folder (the simulated brain's in
    ``simulated_brain/maps/``), refused when that leads outside the data folder ``root``."""
    base = Path(root).resolve()
    subject = SIM_FOLDER if subject_folder is None else _relative(base, Path(subject_folder).resolve())
    folder = resolve_in(base, f"{subject}/{MAPS_FOLDER}")
    if folder != resolve_in(base, subject) / MAPS_FOLDER:  # a link to another subject's folder: its files are not guarded
        raise MRHNetError(f"{subject}/{MAPS_FOLDER}: refused, it is a link to another folder; remove the link to save")
    return folder


def save_maps(folder: str | os.PathLike, maps: dict[str, Any], inputs: set[Path] = frozenset()) -> list[Path]:
    """Write each map as ``folder/<key>.nii.gz``, the names ``mrhnet predict`` writes, atomically
    (:func:`MRHNetLib.network.checks.write_maps`); refuse to replace any of ``inputs``. Every path is checked
    before the first file is written."""
    from ..network.checks import write_maps

    return list(write_maps(maps, Path(folder), protect=list(inputs)).values())


def subject_files(folder: Path) -> set[Path]:
    """The image / gradient files a subject folder provides (never overwritten by a save)."""
    from ..data.subject import IMAGE_SUFFIXES, SCALAR_ROLES
    from ..data.protocol import DWI_ROLES

    names = {f"{r}{s}" for r in SCALAR_ROLES + DWI_ROLES for s in IMAGE_SUFFIXES}
    names |= {f"{r}.{k}" for r in DWI_ROLES for k in ("bval", "bvec")}
    return {p.resolve() for p in folder.iterdir() if p.name in names}


def available_devices() -> list[str]:
    """``cpu``, and ``cuda`` where an NVIDIA driver is present: seen without loading torch in the server (the
    job's child process refuses ``cuda`` in one line when its torch cannot use the GPU)."""
    import shutil

    gpu = Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None
    return ["cpu"] + (["cuda"] if gpu else [])


def evaluation_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The page's evaluation table from an evaluation summary (:func:`MRHNetLib.evaluation.evaluate.evaluate`):
    SSIM, r and AUC of each network map and of each baseline fit (when the evaluation trained them), r and
    AUC of each single marker."""
    from ..evaluation.baselines import BASELINE_NAMES

    rows = [["map", "SSIM", "r", "AUC"]]
    for target, entry in summary.get("targets", {}).items():
        n = entry["network"]
        rows.append([f"{target.upper()} network", _fmt(n["ssim"]), _fmt(n["pearson_r"]), _fmt(n["auc"])])
        for kind, b in entry.get("baselines", {}).items():
            rows.append([f"{target.upper()} {BASELINE_NAMES.get(kind, kind)} (baseline)", _fmt(b.get("ssim")),
                         _fmt(b.get("pearson_r")), _fmt(b.get("auc"))])
        for name, m in entry["markers"].items():
            rows.append([f"{name} alone ({m['sign']})", "", _fmt(m["pearson_r"]), _fmt(m["auc"])])
    return rows


def _fmt(x: float | str | None, digits: int = 3) -> str:
    return "-" if not isinstance(x, (int, float)) or x != x else f"{x:.{digits}f}"


def figure_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- the app ---------------------------------------------------------------------------------------------
class WebApp:
    """One trame server with a Slicer scene, the MRHNet panel and the slice views, serving ``data_dir``;
    its work goes through one :class:`~MRHNetLib.gui.controller.Controller` on that scene."""

    def __init__(self, data_dir: str | os.PathLike, subject: str | None = None, server=None,
                 simulated_size: str = "small"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        from .controller import Controller

        self.root = Path(data_dir).resolve()
        if not self.root.is_dir():
            raise MRHNetError(f"{data_dir}: data folder does not exist")
        self.simulated_size = simulated_size
        self.server = server or get_server(None, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server, rca_encoder="png")
        self.layouts = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        slices = [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
                  ViewLayoutDefinition.sagittal_view()]
        self.layouts.register_layout("slices", Layout(LayoutDirection.Horizontal, slices))
        self.layouts.register_layout("slices+3d", Layout(LayoutDirection.Vertical, [
            Layout(LayoutDirection.Horizontal, slices),
            Layout(LayoutDirection.Horizontal, [ViewLayoutDefinition.threed_view()])]), lazy_initialization=True)
        self.layouts.set_layout("slices")

        self.controller = Controller(self.slicer.scene)
        self._inputs = None  # the controller Inputs of the subject shown
        self._subject_folder: Path | None = None  # its folder (None: the simulated brain)
        self._background = None  # its T2w volume node
        self._sample: dict[str, Any] = {}  # the simulated brain's nodes, once loaded
        self._outputs: dict[str, Any] = {}  # map key -> output volume node
        self._watcher = None  # the asyncio task that polls the controller
        self._choice: str | None = None  # the subject choice being loaded or shown
        self._shown: str | None = None  # the subject choice shown

        self._init_state(subject)
        self._build_ui()
        self.ctrl.on_client_connected.add(self.render_views)
        # trame calls every state.change callback once when the server starts: that loads the subject

    # --- state ------------------------------------------------------------------------------------------
    def _init_state(self, subject: str | None) -> None:
        from .scene import DEFAULT_OPACITY

        s = self.state
        s.trame__title = "MRHNet"
        subjects = list_subjects(self.root)
        s.subjects = [{"title": SIMULATED_TITLE, "value": SIMULATED}] + [
            {"title": name if name != "." else f"{self.root.name} (data folder)", "value": name} for name in subjects]
        if subject is not None:
            resolve_in(self.root, subject)
        s.subject = subject if subject is not None else (subjects[0] if subjects else SIMULATED)
        s.models, s.selected_models = self._model_items()
        s.devices = available_devices()
        s.device = s.devices[-1]
        s.check_errors, s.error, s.status = [], "", "starting"
        s.running = s.loading = False
        s.runs = 0  # completed runs (outputs on show)
        s.progress = 0.0
        s.overlays, s.overlay, s.opacity, s.show_3d = [], None, DEFAULT_OPACITY, False
        s.eval_rows, s.eval_figure, s.saved, s.saving = [], "", "", False
        s.change("subject")(lambda subject, **_: self._on_subject(subject))
        s.change("selected_models")(lambda **_: self._check_models())
        s.change("overlay", "opacity")(lambda **_: self._show_overlay())
        s.change("show_3d")(lambda show_3d, **_: self._set_3d(bool(show_3d)))

    def _model_items(self) -> tuple[list[dict], list[str]]:
        items, default = [], []
        for e in self.controller.catalogue():
            value = SHIPPED_PREFIX + e.name
            items.append({"title": f"{e.name} ({e.target.upper()}, {e.kind})", "value": value})
            if e.kind == "demo":
                default.append(value)
        for rel in list_model_folders(self.root):
            items.append({"title": f"{rel} (data folder)", "value": DATA_PREFIX + rel})
        if not default and items:
            default = [i["value"] for i in items if i["value"].startswith(DATA_PREFIX)][:3]
        return items, default

    def model_path(self, value: str) -> Path:
        """Path of a model choice; data-folder models are resolved inside the data folder only."""
        if value.startswith(SHIPPED_PREFIX):  # only the catalog's own names, never a path
            for entry in self.controller.catalogue():
                if entry.name == value[len(SHIPPED_PREFIX):]:
                    return entry.path
            raise MRHNetError(f"{value[len(SHIPPED_PREFIX):]}: no such shipped model")
        if value.startswith(DATA_PREFIX):
            path = resolve_in(self.root, value[len(DATA_PREFIX):])
            if not path.is_dir():
                raise MRHNetError(f"{value[len(DATA_PREFIX):]}: no such model folder in the data folder")
            return path
        raise MRHNetError(f"{value}: unknown model choice")

    # --- page -------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageWithDrawerLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        with SinglePageWithDrawerLayout(self.server, theme="dark") as layout:
            layout.title.set_text("MRHNet: virtual histology from MRI")
            layout.drawer.width = 380
            with layout.toolbar:
                v3.VSpacer()
                html.Div("data folder: " + str(self.root), classes="text-caption mr-4", id="data-folder")
            with layout.drawer, html.Div(classes="pa-3 d-flex flex-column ga-2", id="panel"):
                v3.VSelect(label="Subject", items=("subjects",), v_model=("subject",), density="compact",
                           hide_details=True, disabled=("running || loading",), id="subject-select")
                v3.VSelect(label="Models", items=("models",), v_model=("selected_models",), multiple=True,
                           chips=True, density="compact", hide_details=True, disabled=("running",),
                           id="model-select")
                v3.VSelect(label="Device", items=("devices",), v_model=("device",), density="compact",
                           hide_details=True, disabled=("running",), id="device-select")
                with html.Div(id="check-errors"):
                    v3.VAlert("{{ e }}", v_for="(e, i) in check_errors", key="i", type="warning",
                              density="compact", classes="my-1 text-caption")
                with html.Div(classes="d-flex ga-2"):
                    v3.VBtn("Run", click=self.run, color="primary", id="run-button",
                            disabled=("running || loading || !selected_models.length || check_errors.length",))
                    v3.VBtn("Cancel", click=self.cancel, id="cancel-button", disabled=("!running && !loading",))
                v3.VProgressLinear(model_value=("100 * progress",), height=8, color="primary", id="progress")
                html.Div("{{ status }}", classes="text-caption", id="status")
                v3.VAlert("{{ error }}", v_if="error", type="error", density="compact", classes="text-caption",
                          id="error")
                v3.VDivider()
                v3.VSelect(label="Overlay", items=("overlays",), v_model=("overlay",), density="compact",
                           hide_details=True, id="overlay-select")
                v3.VSlider(label="Opacity", v_model=("opacity",), min=0, max=1, step=0.05, hide_details=True,
                           density="compact", id="opacity-slider")
                v3.VSwitch(label="3D view", v_model=("show_3d",), density="compact", hide_details=True,
                           id="show-3d")
                v3.VBtn("Save maps to the subject folder", click=self.save, id="save-button",
                        disabled=("running || saving || !overlays.length",), variant="tonal")
                html.Div("{{ saved }}", classes="text-caption", id="saved")
                with html.Div(v_if="eval_rows.length", id="evaluation"):
                    html.Div("Evaluation against the subject's histology", classes="text-subtitle-2 mt-2")
                    with v3.VTable(density="compact", classes="text-caption"):
                        with html.Tbody():
                            with html.Tr(v_for="(row, i) in eval_rows", key="i"):
                                html.Td("{{ cell }}", v_for="(cell, j) in row", key="j")
                    html.Img(v_if="eval_figure", src=("eval_figure",), style="width: 100%", id="eval-figure")
            with layout.content:
                with html.Div(style="height: calc(100vh - 92px); display: flex;", id="views"):
                    self.layouts.initialize_layout_grid(layout)
        self.ui = layout


    # --- the controller's job, followed from the server loop ---------------------------------------------
    def _follow(self) -> None:
        """Poll the controller from an asyncio task on the server loop until its job ends (one task)."""
        from trame_server.utils.asynchronous import create_task

        if self._watcher is None or self._watcher.done():
            self._watcher = create_task(self._watch())

    async def _watch(self) -> None:
        import asyncio

        while self.controller.busy:
            events = self.controller.poll()
            if events:
                with self.state:
                    for event in events:
                        self._on_event(event)
            await asyncio.sleep(POLL_S)

    def _on_event(self, event) -> None:
        """Show one event of the controller's job on the page; the final one ends the job there."""
        if event.kind == "progress":
            self.state.progress, self.state.status = event.fraction, event.message or self.state.status
            return
        if event.kind not in ("done", "failed", "cancelled"):
            return
        kind = self.controller.last
        self.state.running = self.state.loading = False
        if event.kind == "done":
            self.state.progress = 1.0
            try:
                (self._sample_loaded if kind == "sample" else self._show_outputs)(event.payload)
            except Exception as exc:  # noqa: BLE001 - shown on the page, the server goes on
                from ..errors import error_message

                self.state.status, self.state.error = "failed", error_message(exc)
            return
        self.state.progress = 0.0
        self.state.status = "cancelled" if event.kind == "cancelled" else "failed"
        if event.kind == "failed":
            self.state.error = event.message
        if kind == "sample":
            self._back_to_shown()

    def cancel(self) -> None:
        """Cancel the controller's job (its child ends within a second; nothing is published)."""
        kind = self.controller.kind
        if not self.controller.cancel():
            return
        self.state.running = self.state.loading = False
        self.state.status, self.state.progress = "cancelled", 0.0
        if kind == "sample":
            self._back_to_shown()

    # --- subject ----------------------------------------------------------------------------------------
    def _on_subject(self, choice: str) -> None:
        """Show the chosen subject: a folder's T2w at once, the simulated brain once the controller's child
        has simulated it."""
        if choice == self._choice:
            return
        try:
            if self.state.running:
                raise MRHNetError("a run is in progress; cancel it before choosing another subject")
            folder = None if choice == SIMULATED else resolve_in(self.root, choice)
            if folder is not None and not folder.is_dir():
                raise MRHNetError(f"{choice}: no such subject folder in the data folder")
        except MRHNetError as exc:
            self.state.error = str(exc)
            self.state.subject = self._choice  # back to the subject that is shown
            return
        if self.controller.kind == "sample":  # superseded
            self.controller.cancel()
            self.state.loading = False
        self._choice = choice
        if folder is None:
            self._load_sample()
            return
        try:
            self._show_folder(folder)
        except MRHNetError as exc:
            self.state.error = str(exc)
            self._back_to_shown()

    def _back_to_shown(self) -> None:
        self._choice = self._shown
        self.state.subject = self._shown

    def _load_sample(self) -> None:
        """The simulated brain: simulated once by the controller's child, its nodes reused afterwards."""
        if self._sample and all(node.GetScene() is not None for node in self._sample.values()):
            self._sample_loaded(self._sample)
            return
        self.state.error, self.state.progress = "", 0.0
        self.state.status, self.state.loading = "loading the simulated brain...", True
        self.controller.load_sample(size=self.simulated_size, name=SIMULATED_NAME)
        self._follow()

    def _sample_loaded(self, nodes: dict[str, Any]) -> None:
        from ..data.protocol import TARGET_ROLES
        from .controller import INPUT_ROLES, Inputs

        self._sample = dict(nodes)
        inputs = Inputs({r: nodes[r] for r in INPUT_ROLES if r in nodes}, mask=nodes.get("mask"),
                        targets={t: nodes[t] for t in TARGET_ROLES if t in nodes})
        self._set_subject(inputs, None, nodes["t2w"], SIMULATED)

    def _show_folder(self, folder: Path) -> None:
        """A subject folder: its T2w (the one file read here) as the background; the controller checks and
        runs the folder itself."""
        from ..data.io import read_volume
        from ..data.subject import Subject, _find
        from .controller import Inputs
        from .scene import show_subject

        path = _find(folder, "t2w")
        if path is None:
            raise MRHNetError(f"{_relative(self.root, folder)}: no t2w image in this folder")
        node = show_subject(self.slicer.scene, Subject({"t2w": read_volume(path, allow_4d=False)}, name=folder.name))
        self._set_subject(Inputs(folder=str(folder), source=node), folder, node, _relative(self.root, folder))

    def _set_subject(self, inputs, folder: Path | None, background, choice: str) -> None:
        from .scene import show_overlay

        self._inputs, self._subject_folder, self._background = inputs, folder, background
        self._shown, self.state.error = choice, ""
        self._clear_outputs()
        show_overlay(self.slicer.scene, None, background, float(self.state.opacity))
        self.slicer.display_manager.reset_views()
        self.state.status = f"{background.GetName()}: loaded"
        self._check_models()
        self.render_views()

    def _chosen_models(self) -> tuple[list[str], list[str]]:
        """(paths of the chosen models, problems with the choices)."""
        models, problems = [], []
        for value in self.state.selected_models or []:
            try:
                models.append(str(self.model_path(value)))
            except MRHNetError as exc:
                problems.append(str(exc))
        return models, problems

    def _check_models(self) -> None:
        """The protocol check of every chosen model against the subject (the controller's, from headers),
        shown before running."""
        if self._inputs is None:
            self.state.check_errors = []
            return
        models, problems = self._chosen_models()
        self.state.check_errors = problems + self.controller.summary(self._inputs, models)[1]

    # --- run --------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run the chosen models on the subject in the controller's child process, evaluated against the
        subject's histology when it has some; outputs replace the previous ones."""
        if self._inputs is None or self.state.running or self.state.loading:
            return
        models, problems = self._chosen_models()
        try:
            if problems:
                raise MRHNetError(problems[0])
            if self.state.device not in self.state.devices:
                raise MRHNetError(f"{self.state.device}: device not available here")
            self.controller.predict(self._inputs, models, device=self.state.device, opacity=float(self.state.opacity),
                                    evaluate=True)
        except Exception as exc:  # noqa: BLE001 - e.g. a full /tmp: one line on the page, not only in the log
            from ..errors import error_message

            self.state.error = error_message(exc)
            self._check_models()
            return
        self.state.running, self.state.saved, self.state.error = True, "", ""
        self.state.progress, self.state.status = 0.0, f"running {len(models)} model(s)..."
        self._follow()

    def _show_outputs(self, outputs: dict[str, Any]) -> None:
        self._outputs = dict(outputs)
        targets = list(self._outputs)
        self.state.overlays = [{"title": t.upper(), "value": t} for t in targets]
        if self.state.overlay not in targets:
            self.state.overlay = targets[0] if targets else None
        self._show_overlay()
        report = self.controller.evaluation
        self.state.eval_rows = evaluation_rows(report.summary) if report and report.summary else []
        self.state.eval_figure = figure_data_url(report.figure) if report and report.figure else ""
        if report and report.problem:
            self.state.error = report.problem
        self.state.status = f"done: {', '.join(t.upper() for t in targets)}"
        self.state.runs += 1

    def _clear_outputs(self) -> None:
        from .scene import remove_outputs

        remove_outputs(self.slicer.scene)
        self._outputs = {}
        self.state.overlays, self.state.overlay = [], None
        self.state.eval_rows, self.state.eval_figure, self.state.saved = [], "", ""

    def _show_overlay(self) -> None:
        from .scene import show_overlay

        if self._background is None:
            return
        show_overlay(self.slicer.scene, self._outputs.get(self.state.overlay), self._background,
                     float(self.state.opacity))
        self.render_views()

    # --- save -------------------------------------------------------------------------------------------
    def save(self):
        """Write the maps as ``<target>.nii.gz`` into ``maps/`` of the subject folder (the simulated brain's
        into ``simulated_brain/maps/``), never over an input file. The maps are copied from the scene here;
        the files are written by a worker thread (about a second per whole-brain map), so the page stays live.
        Returns the asyncio task (None when nothing is saved)."""
        from trame_server.utils.asynchronous import create_task

        from .scene import volume_from_node

        if not self._outputs or self.state.saving:
            return None
        try:
            folder = maps_folder(self.root, self._subject_folder)
            inputs = subject_files(self._subject_folder) if self._subject_folder is not None else set()
            maps = {key: volume_from_node(node) for key, node in self._outputs.items()}  # the scene: loop only
        except (MRHNetError, OSError) as exc:
            self.state.error = str(exc)
            return None
        self.state.saving, self.state.saved = True, "saving..."
        return create_task(self._save(folder, maps, inputs))

    async def _save(self, folder: Path, maps: dict[str, Any], inputs: set[Path]) -> None:
        import asyncio

        try:
            paths = await asyncio.get_running_loop().run_in_executor(None, save_maps, folder, maps, inputs)
        except (MRHNetError, OSError) as exc:
            with self.state:
                self.state.error, self.state.saved, self.state.saving = str(exc), "", False
            return
        with self.state:
            self.state.saved = "saved " + ", ".join(_relative(self.root, p) for p in paths)
            self.state.saving = False

    # --- views ------------------------------------------------------------------------------------------
    def _set_3d(self, show: bool) -> None:
        self.layouts.set_layout("slices+3d" if show else "slices")
        for view in self.slicer.view_manager.get_slice_views():
            view.set_visible_in_3d(show)
        if show:
            for view in self.slicer.view_manager.get_threed_views():
                view.reset_view()
                camera = view.get_camera_node().GetCamera()  # an oblique look at the three slice planes
                camera.Azimuth(35)
                camera.Elevation(25)
                camera.OrthogonalizeViewUp()
                view.reset_camera()
        self.render_views()

    def render_views(self, **_) -> None:
        """Render every view (views rendered before a browser connects come up black otherwise)."""
        for view in self.slicer.view_manager.get_views():
            view.render()

    def start(self, host: str = "127.0.0.1", port: int = 8080, token: str | None = None, **kwargs) -> None:
        """Serve on ``host:port`` (blocks). With ``token`` every request must carry it (:func:`require_token`);
        without one only a loopback address is served."""
        start_server(self.server, host, port, token, **kwargs)


def serve(data_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8080, subject: str | None = None,
          simulated_size: str = "small", token: str | None = None, no_token: bool = False) -> None:
    """Start the web app on ``host:port`` serving ``data_dir`` (blocks until stopped); prints the URL with the
    token (a new random one unless ``token`` or $MRHNET_APP_TOKEN gives it)."""
    token = access_token(host, token, no_token)
    app = WebApp(data_dir, subject=subject, simulated_size=simulated_size)
    app.ctrl.on_server_ready.add(lambda **_: print(f"MRHNet app serving {app.root} at "
                                                   f"{access_url(host, app.server.port, token)}", flush=True))
    app.start(host=host, port=port, token=token)


# --- the server: who may use the app ---------------------------------------------------------------------
# The trame page, its script files and its websocket are all served by one aiohttp application that wslink
# builds inside ``server.start``. trame hands that wslink server to ``controller.on_server_bind`` before it
# starts listening: there an aiohttp middleware is put in front of every route, so a request without the
# token never reaches trame (no page, no file, no websocket upgrade, hence no state and no views).
def new_token() -> str:
    """A random token, as Jupyter makes them (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def access_token(host: str, token: str | None = None, no_token: bool = False,
                 environ: dict | None = None) -> str | None:
    """The token the app on ``host`` requires: ``token``, else $MRHNET_APP_TOKEN, else a new random one;
    None only for ``no_token`` on a loopback address. :class:`MRHNetError` for ``no_token`` on any other
    address, for an empty token, or for both a token and ``no_token``."""
    if no_token:
        if host not in LOOPBACK:
            raise MRHNetError(f"--no-token refused for --host {host}: an address other than "
                              f"{', '.join(LOOPBACK)} is only served with a token")
        if token is not None:
            raise MRHNetError("give either a token or --no-token, not both")
        return None  # an explicit --no-token wins over $MRHNET_APP_TOKEN
    if token is None:
        token = (os.environ if environ is None else environ).get(TOKEN_ENV)
    if token is None:
        return new_token()
    if not token.strip() or token != token.strip():
        raise MRHNetError("the token must not be empty or begin or end with a space")
    return token


def access_url(host: str, port: int, token: str | None) -> str:
    """The address to open: ``http://HOST:PORT/?token=TOKEN`` (no query without a token)."""
    from urllib.parse import urlencode

    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?{urlencode({TOKEN_PARAM: token})}" if token else "")


def token_cookie(token: str) -> str:
    """The cookie name for this token: cookies are shared by every port of a host, so two apps on one server
    (or two tunnels on one laptop) each get their own cookie; the name reveals nothing of the token."""
    return "mrhnet_" + hashlib.sha256(token.encode()).hexdigest()[:16]


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


REFUSED_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>MRHNet: token required</title></head>
<body style="font-family: sans-serif; margin: 3em"><h1 id="refused">MRHNet: access refused</h1>
<p>This MRHNet app needs its access token. Open the address with <code>?token=...</code> that
<code>mrhnet app</code> printed when it started.</p></body></html>"""


def token_middleware(token: str):
    """An aiohttp middleware that lets a request through only with the token: in the query (``?token=``, which
    also sets an HttpOnly, SameSite=Strict cookie so that reloads and the websocket work), in that cookie, or
    in an ``Authorization: token TOKEN`` header. Everything else gets 403 and the refusal page."""
    from aiohttp import web

    cookie = token_cookie(token)

    def authorized(request) -> tuple[bool, bool]:
        """(allowed, came with ?token=)"""
        if _same(request.query.get(TOKEN_PARAM), token):
            return True, True
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return _same(request.cookies.get(cookie), token) or (scheme.lower() == "token" and _same(value, token)), \
            False

    def remember(response) -> None:
        response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")

    @web.middleware
    async def check_token(request, handler):
        allowed, from_query = authorized(request)
        if not allowed:
            return web.Response(status=403, text=REFUSED_PAGE, content_type="text/html",
                                headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
        if from_query and request.method == "GET" and request.headers.get("Upgrade", "").lower() != "websocket":
            # the printed address: keep the token in the cookie, not in the address bar and the browser history
            clean = request.rel_url.with_query({k: v for k, v in request.rel_url.query.items() if k != TOKEN_PARAM})
            moved = web.HTTPFound(str(clean), headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
            remember(moved)
            raise moved
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # "/" redirects to index.html: the cookie goes with the redirect
            if from_query:
                remember(exc)
            raise
        if isinstance(response, web.StreamResponse) and not response.prepared:  # a websocket is prepared
            if from_query:
                remember(response)
            response.headers.setdefault("Referrer-Policy", "no-referrer")  # the token stays off Referer
        return response

    return check_token


def loopback_middleware(port: int):
    """Without a token (loopback addresses only): an aiohttp middleware that refuses requests whose ``Host`` is
    not this machine's loopback name and port, and requests (the websocket above all) from another ``Origin``,
    so that a web page the user visits cannot reach the app by DNS rebinding. 403 with the refusal page."""
    from aiohttp import web
    from yarl import URL

    def local(address: str) -> bool:
        try:
            url = URL(address if "://" in address else f"http://{address}")
        except ValueError:
            return False
        return url.host in LOOPBACK and (not port or url.port == port)

    @web.middleware
    async def check_host(request, handler):
        origin = request.headers.get("Origin")
        if not local(request.host) or (origin is not None and not local(origin)):
            return web.Response(status=403, text="MRHNet app: refused; it serves this machine's loopback address "
                                "only (open the address that mrhnet app printed)", headers={"Cache-Control": "no-store"})
        return await handler(request)

    return check_host


def install_middleware(server, middleware, what: str) -> None:
    """Put ``middleware`` first on the trame ``server``'s aiohttp application (call before it starts). Fails
    closed: if the web server trame builds is not an aiohttp application that takes it, the start raises
    instead of serving unprotected."""
    def bind(wslink_server) -> None:
        app = getattr(wslink_server, "app", None)
        middlewares = getattr(app, "middlewares", None)
        if middlewares is None or getattr(middlewares, "frozen", True):
            raise RuntimeError(f"MRHNet app: cannot install the {what} on this web server; not serving")
        middlewares.insert(0, middleware)  # first: outside any middleware wslink added

    server.controller.on_server_bind.add(bind)


def require_token(server, token: str) -> None:
    """Make the trame ``server`` refuse every request without ``token`` (call before it starts)."""
    install_middleware(server, token_middleware(token), "token check")


def start_server(server, host: str, port: int, token: str | None, **kwargs) -> None:
    """Start the trame ``server`` on ``host:port`` (blocks), requiring ``token`` when one is given; refuses a
    non-loopback address without a token before binding anything."""
    import sys

    if token is None and host not in LOOPBACK:
        raise MRHNetError(f"{host}: an address other than {', '.join(LOOPBACK)} is only served with a token")
    if token is not None:
        require_token(server, token)
    else:
        install_middleware(server, loopback_middleware(port), "loopback check")
    sys.argv[1:] = []  # trame parses the command line itself; ours was parsed already
    server.start(host=host, port=port, open_browser=False, timeout=0, show_connection_info=False,
                 backend="aiohttp", **kwargs)
