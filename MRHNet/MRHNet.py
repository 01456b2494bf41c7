"""MRHNet: virtual mouse-brain histology (AF, NF, MBP) from multi-contrast MRI, in 3D Slicer.

The module is a thin GUI over the engine package MRHNetLib (scene conversion, background jobs,
inference, training); see the README for the console API.
"""
import logging
import os
import pathlib
import sys
import time
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import (vtkMRMLDiffusionWeightedVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSegmentationNode, vtkMRMLSequenceNode, vtkMRMLVectorVolumeNode)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

README_URL = "https://github.com/SlicerMRHNet/SlicerMRHNet#readme"
INPUT_ROLES = ("t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000", "fa")
SHIPPED = ("af", "nf", "mbp")
# Union types: the parameterNodeWrapper sets each selector's nodeTypes from these (overriding the .ui)
DwiNode = Union[vtkMRMLDiffusionWeightedVolumeNode, vtkMRMLVectorVolumeNode, vtkMRMLSequenceNode]
MaskNode = Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
# import names of the engine's requirements (Resources/requirements.txt) and torch
PACKAGES = ("torch", "safetensors", "nibabel", "nrrd", "dipy", "skimage", "sklearn", "tqdm", "matplotlib")


def ensureLibraryPath():
    """MRHNetLib lies beside this file when packaged and one folder up in the source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "MRHNetLib")) and folder not in sys.path:
            sys.path.insert(0, folder)


class MRHNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MRHNet")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerMRHNet developers"]
        self.parent.helpText = _(
            "Virtual histology maps (autofluorescence AF, neurofilament NF, myelin basic protein MBP) of ex vivo "
            "mouse brains from T2-weighted, magnetization-transfer and diffusion MRI with MRH-Net. "
            'See the <a href="{url}">README</a> for the workflow, the console API and training.').format(url=README_URL)
        self.parent.acknowledgementText = _(
            "MRH-Net was described in: Liang Z, Lee CH, Arefin TM, et al. Virtual mouse brain histology from "
            "multi-contrast MRI via deep learning. eLife 2022;11:e72331. doi:10.7554/eLife.72331. "
            "This extension re-implements the method; its demo networks are trained on simulated brains.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """'MRHNet phantom brain' in Sample Data: generated locally by the engine (nothing is downloaded)."""
    import SampleData

    # SampleData's button calls customDownloader(source) instead of downloading the (placeholder) uri
    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "MRHNet.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MRHNet", sampleName="MRHNet phantom brain", uris=["mrhnet:phantom"],
        fileNames=["MRHNetPhantomBrain"], nodeNames=["MRHNet phantom brain"], thumbnailFileName=icon,
        customDownloader=loadSampleBrain)


def loadSampleBrain(source=None) -> None:
    with slicer.util.tryWithErrorDisplay(_("Could not create the MRHNet phantom brain."), waitCursor=True):
        logic = MRHNetLogic()
        logic.ensureDependencies()
        logic.selectInputs(logic.getParameterNode(), logic.loadPhantom())


@parameterNodeWrapper
class MRHNetParameterNode:
    t2w: Optional[vtkMRMLScalarVolumeNode]
    mtOn: Optional[vtkMRMLScalarVolumeNode]
    mtOff: Optional[vtkMRMLScalarVolumeNode]
    dwiB2000: Optional[DwiNode]
    dwiB5000: Optional[DwiNode]
    dwiB2000Gradients: pathlib.Path = pathlib.Path("")  # .bval/.bvec or gx gy gz b table for a 4D volume
    dwiB5000Gradients: pathlib.Path = pathlib.Path("")
    fa: Optional[vtkMRMLScalarVolumeNode]
    mask: Optional[MaskNode]
    useAF: bool = True
    useNF: bool = True
    useMBP: bool = True
    originalModel: Annotated[str, Choice(["none", "af-original-4blocks", "af-original-9blocks"])] = "none"
    extraModels: str = ""  # model folders added by the user, separated by ';'
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    trainTarget: Optional[vtkMRMLScalarVolumeNode]
    trainStain: Annotated[str, Choice(["af", "nf", "mbp"])] = "af"
    depth: Annotated[int, WithinRange(0, 40)] = 5
    epochs: Annotated[int, WithinRange(1, 2000)] = 20
    learningRate: Annotated[float, WithinRange(1e-7, 1.0)] = 0.01
    fineTuneFrom: Annotated[str, Choice(["", "af", "nf", "mbp"])] = ""  # shipped model; "": a new network
    fineTuneFile: pathlib.Path = pathlib.Path("")  # or any model folder
    modelOutput: pathlib.Path = pathlib.Path("")


class MRHNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._training = None
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onPoll)
        self._checkTimer = qt.QTimer()
        self._checkTimer.setSingleShot(True)
        self._checkTimer.setInterval(400)
        self._checkTimer.connect("timeout()", self.updateModelInfo)
        self._checked = None  # inputs and models the model info was last computed for

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRHNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MRHNetLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        self.ui.clearModelsButton.connect("clicked(bool)", self.onClearModels)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.sampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacity)
        self.ui.cancelButton.enabled = False
        self.ui.trainingCollapsibleButton.collapsed = True
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancel()
        self.removeObservers()
        self._timer.stop()
        self._checkTimer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.t2w:  # a plain scalar volume, not a DWI/labelmap subclass or an output
            self._parameterNode.t2w = next((n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                                            if n.GetClassName() == "vtkMRMLScalarVolumeNode"
                                            and not n.GetAttribute("MRHNet.Output")), None)

    def setParameterNode(self, node) -> None:
        """The GUI stays bound while the module is hidden: Slicer 5.8's connectGui returns no tag (so
        disconnectGui cannot work), and binding twice would let the old combo-box connectors reset the
        choices when the new ones refill the boxes."""
        old = self._parameterNode
        if node is not None and old is not None and node.parameterNode is old.parameterNode:
            return
        if old:
            if self._parameterNodeGuiTag is not None:
                old.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(old, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
        self._parameterNode, self._parameterNodeGuiTag, self._checked = node, None, None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
            self.onParameterChanged()

    def onParameterChanged(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self._run is not None or self._training is not None
        self.ui.applyButton.enabled = bool(p and not busy and any(self.logic.inputNodes(p).values()))
        self.ui.extraModelsList.clear()
        for path in self.logic.extraModelPaths(p):
            self.ui.extraModelsList.addItem(path)
        key = p and (tuple(n.GetID() if n else "" for n in self.logic.inputNodes(p).values()),
                     str(p.dwiB2000Gradients), str(p.dwiB5000Gradients), p.mask and p.mask.GetID(),
                     tuple(self.logic.selectedModels(p)))
        if key != self._checked:  # reading the volumes again only when the selection changed
            self._checked = key
            self._checkTimer.start()

    def updateModelInfo(self) -> None:
        """Each chosen model's protocol and training, and the engine's check of the inputs against it."""
        p = self._parameterNode
        if p is None:
            return
        info, warnings = self.logic.describeModels(p)
        self.ui.modelInfoText.setPlainText(info)
        self.ui.checkLabel.text = "\n".join(warnings)
        self.ui.checkLabel.visible = bool(warnings)

    # --- actions ---------------------------------------------------------------------------
    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not create the phantom brain."), waitCursor=True):
            self.logic.ensureDependencies()
            nodes = self.logic.loadPhantom()
            self.logic.selectInputs(self._parameterNode, nodes)

    def onAddModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Choose a model folder (NAME.mrhnet)"))
        if folder:
            paths = self.logic.extraModelPaths(self._parameterNode) + [folder]
            self._parameterNode.extraModels = ";".join(paths)

    def onClearModels(self) -> None:
        self._parameterNode.extraModels = ""

    def onOpacity(self, value) -> None:
        for view in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            view.SetForegroundOpacity(value)

    def onApply(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start MRHNet."), waitCursor=True):
            self.logic.ensureDependencies()
            self._run = self.logic.startRun(self._parameterNode)
            self._setBusy(_("running {n} model(s)...").format(n=len(self._run.models)))

    def onTrain(self) -> None:
        if self._training is not None:
            self._training.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start training."), waitCursor=True):
            self.logic.ensureDependencies()
            self._training = self.logic.startTraining(self._parameterNode)
            slicer.modules.plots.logic().ShowChartInLayout(self._training.plot.chart)
            self.ui.trainButton.text = _("Stop training")
            self._setBusy(_("training..."))

    def onCancel(self) -> None:
        for work in (self._run, self._training):
            if work is not None:
                work.cancel()
        self.ui.statusLabel.text = _("cancelling...")

    def _setBusy(self, message) -> None:
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self.ui.cancelButton.enabled = True
        self.ui.applyButton.enabled = False
        self._timer.start()

    def onPoll(self) -> None:
        """Forward progress of the background work; publish or report when it ends."""
        work = self._run or self._training
        if work is None:
            self._timer.stop()
            return
        # PythonQt (no thread support) keeps the GIL on the idle main thread: let the worker run meanwhile
        time.sleep(0.06)
        for event in work.poll():
            if event.kind == "progress":
                self.ui.progressBar.value = int(100 * event.fraction)
                self.ui.statusLabel.text = event.message
            elif event.kind in ("done", "failed", "cancelled"):
                self._finish(work, event)

    def _finish(self, work, event) -> None:
        self._timer.stop()
        self._run = self._training = None
        self.ui.cancelButton.enabled = False
        self.ui.trainButton.text = _("Start training")
        self.onParameterChanged()
        if event.kind == "done":
            self.ui.progressBar.value = 100
            done = getattr(work, "outputs", None)
            self.ui.statusLabel.text = (_("done: ") + ", ".join(n.GetName() for n in done.values())) if done \
                else _("model saved: {path}").format(path=work.job.output)
        elif event.kind == "failed":
            self.ui.statusLabel.text = _("failed")
            logging.error(work.job.details or event.message)
            slicer.util.errorDisplay(event.message)
        else:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("cancelled: the scene is unchanged")


class MRHNetLogic(ScriptedLoadableModuleLogic):
    """Console API (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("MRHNet")   # or MRHNet.MRHNetLogic()
        nodes = logic.loadPhantom()                     # optional: the simulated sample brain
        outputs = logic.run(t2w=nodes["t2w"], mt_on=nodes["mt_on"], mt_off=nodes["mt_off"],
                            dwi_b2000=nodes["dwi_b2000"], dwi_b5000=nodes["dwi_b5000"],
                            models=["af", "nf", "mbp"], device="auto")
        outputs["af"]                                   # the "<input> MRH-AF" volume node
        logic.train(target=histologyNode, stain="af", out="/tmp/my-af.mrhnet", t2w=..., epochs=20)

    ``models``: shipped names (``af``, ``nf``, ``mbp``, ``mrhnetlib models`` lists more) or model folders.
    Both calls block (the GUI keeps refreshing); the module's panel runs the same work in the background.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ensureLibraryPath()

    def getParameterNode(self):
        return MRHNetParameterNode(super().getParameterNode())

    # --- dependencies ----------------------------------------------------------------------
    def ensureDependencies(self) -> None:
        """Install torch (via SlicerPyTorch when present) and the engine's requirements, after asking."""
        missing = [name for name in PACKAGES if not _importable(name)]
        if not missing:
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("MRHNet needs Python packages that are not installed yet ({names}). Install them now? "
                  "This downloads several hundred MB and may take minutes.").format(names=", ".join(missing))):
            raise RuntimeError(_("MRHNet cannot run without its Python packages."))
        requirements = self.resourcePath("requirements.txt")
        try:
            if "torch" in missing:
                try:
                    import PyTorchUtils  # the PyTorch extension: picks the CUDA build for the driver
                except ImportError:
                    slicer.util.pip_install("torch>=2.1")
                else:
                    PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.1")
            try:
                import slicer.packaging as packaging  # Slicer 5.11+
            except ImportError:
                slicer.util.pip_install(["-r", requirements])
            else:  # the user was asked above
                packaging.pip_ensure(packaging.load_requirements(requirements), prompt_install=False, requester="MRHNet")
        except Exception as exc:
            raise RuntimeError(_("Installing MRHNet's packages failed ({error}). Restart Slicer and try again, "
                               "or install them with slicer.util.pip_install from the Python console.").format(error=exc))

    def resourcePath(self, relativePath: str) -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", relativePath)

    # --- parameter node -> engine ----------------------------------------------------------
    def inputNodes(self, p) -> dict:
        return {"t2w": p.t2w, "mt_on": p.mtOn, "mt_off": p.mtOff, "dwi_b2000": p.dwiB2000,
                "dwi_b5000": p.dwiB5000, "fa": p.fa}

    def inputGradients(self, p) -> dict:
        from MRHNetLib.gui.scene import gradients_from_path, node_affine

        out = {}
        for role, node, path in (("dwi_b2000", p.dwiB2000, p.dwiB2000Gradients),
                                 ("dwi_b5000", p.dwiB5000, p.dwiB5000Gradients)):
            if node is not None and _given(path) and not node.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
                ref = node.GetNthDataNode(0) if node.IsA("vtkMRMLSequenceNode") else node
                out[role] = gradients_from_path(str(path), node_affine(ref))
        return out

    def extraModelPaths(self, p) -> list:
        return [x for x in (p.extraModels.split(";") if p and p.extraModels else []) if x]

    def selectedModels(self, p) -> list:
        chosen = [name for name, use in zip(SHIPPED, (p.useAF, p.useNF, p.useMBP)) if use]
        return chosen + ([p.originalModel] if p.originalModel != "none" else []) + self.extraModelPaths(p)

    def describeModels(self, p) -> tuple:
        """(text about each chosen model, the engine's warnings for inputs that do not fit)."""
        try:
            from MRHNetLib.network.catalog import resolve
            from MRHNetLib.network.modelfile import read_info
            from MRHNetLib.gui.scene import load_models, model_problems, subject_from_nodes
        except ImportError:
            return _("Python packages not installed yet: they are installed on the first Apply."), []
        from MRHNetLib.errors import MRHNetError

        lines, warnings = [], []
        for name in self.selectedModels(p):
            try:
                info = read_info(resolve(name))
                lines += [f"{name}: {info.target.upper()}, depth {info.depth}. {info.description}",
                          info.protocol.describe(), f"  trained: {info.training.get('summary', 'n/a')}", ""]
            except MRHNetError as exc:
                warnings.append(str(exc))
        nodes = {k: v for k, v in self.inputNodes(p).items() if v is not None}
        if nodes and not warnings:
            try:
                subject = subject_from_nodes(mask=p.mask, gradients=self.inputGradients(p), **nodes)
                warnings += model_problems(subject, load_models(self.selectedModels(p)))
            except MRHNetError as exc:
                warnings.append(str(exc))
        return "\n".join(lines), warnings

    def startRun(self, p):
        from MRHNetLib.gui.scene import SceneInference

        nodes = {k: v for k, v in self.inputNodes(p).items() if v is not None}
        return SceneInference(slicer.mrmlScene, self.selectedModels(p), device=p.device, opacity=p.opacity,
                              mask=p.mask, gradients=self.inputGradients(p), **nodes).start()

    def startTraining(self, p):
        from MRHNetLib.gui.scene import SceneTraining

        if not _given(p.modelOutput):
            raise ValueError(_("Choose where to save the trained model (a folder ending in .mrhnet)."))
        nodes = {k: v for k, v in self.inputNodes(p).items() if v is not None}
        options = {"depth": p.depth, "epochs": p.epochs, "lr": p.learningRate, "device": p.device}
        base = str(p.fineTuneFile) if _given(p.fineTuneFile) else (p.fineTuneFrom or None)
        return SceneTraining(slicer.mrmlScene, p.trainTarget, p.trainStain, str(p.modelOutput), base_model=base,
                             options=options, mask=p.mask, gradients=self.inputGradients(p), **nodes).start()

    def selectInputs(self, p, nodes: dict) -> None:
        with slicer.util.NodeModify(p.parameterNode):
            p.t2w, p.mtOn, p.mtOff = nodes.get("t2w"), nodes.get("mt_on"), nodes.get("mt_off")
            p.dwiB2000, p.dwiB5000, p.mask = nodes.get("dwi_b2000"), nodes.get("dwi_b5000"), nodes.get("mask")
            p.trainTarget = nodes.get(p.trainStain)

    # --- console API -----------------------------------------------------------------------
    def loadPhantom(self, size: str = "medium", seed: int = 0, name: str = "MRHNet phantom brain") -> dict:
        """Simulate the sample brain with the engine and add its images (and histology) to the scene."""
        from MRHNetLib.simulation.phantom import simulate_subject
        from MRHNetLib.gui.scene import add_subject_nodes, show_overlay

        nodes = add_subject_nodes(slicer.mrmlScene, simulate_subject("C1", seed=seed, size=size), name)
        show_overlay(slicer.mrmlScene, None, nodes["t2w"], 0.0)
        slicer.util.resetSliceViews()
        return nodes

    def run(self, t2w=None, mt_on=None, mt_off=None, dwi_b2000=None, dwi_b5000=None, fa=None, mask=None,
            models=("af", "nf", "mbp"), device: str = "auto", gradients: Optional[dict] = None) -> dict:
        """Run the models on the given volume nodes; returns {target: output volume node}."""
        from MRHNetLib.gui.scene import SceneInference

        inputs = {k: v for k, v in dict(t2w=t2w, mt_on=mt_on, mt_off=mt_off, dwi_b2000=dwi_b2000,
                                        dwi_b5000=dwi_b5000, fa=fa).items() if v is not None}
        run = SceneInference(slicer.mrmlScene, list(models), device=device, mask=mask, gradients=gradients,
                             **inputs).start()
        while not run.job.finished:
            run.poll()
            slicer.app.processEvents()
            time.sleep(0.02)
        run.job.result()  # raises the engine's error, or Cancelled
        return run.outputs

    def train(self, target, stain: str, out: str, base_model=None, mask=None, gradients=None,
              **inputsAndOptions) -> str:
        """Train (or fine-tune from ``base_model``) on input nodes and a histology ``target`` node; writes
        ``out`` and returns its path. Options: depth, epochs, lr, device (MRHNetLib.network.train.TrainConfig)."""
        from MRHNetLib.gui.scene import SceneTraining

        inputs = {k: inputsAndOptions.pop(k) for k in INPUT_ROLES if k in inputsAndOptions}
        training = SceneTraining(slicer.mrmlScene, target, stain, out, base_model=base_model,
                                 options=inputsAndOptions, mask=mask, gradients=gradients, **inputs).start()
        while not training.job.finished:
            training.poll()
            slicer.app.processEvents()
            time.sleep(0.02)
        training.refresh_plot()
        return str(training.job.result())


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _given(path) -> bool:
    return str(path or "") not in ("", ".")


class MRHNetTest(ScriptedLoadableModuleTest):
    """The whole flow on the sample (phantom) brain inside Slicer: load, run, overlays, re-run, cancel."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_WholeFlowOnPhantom()

    def test_WholeFlowOnPhantom(self):
        self.delayDisplay("Generating the phantom brain")
        logic = MRHNetLogic()
        nodes = logic.loadPhantom(size="small")
        inputs = {k: nodes[k] for k in ("t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000")}
        from MRHNetLib.network.catalog import list_models
        from MRHNetLib.gui.scene import SceneInference, node_affine, scene_signature

        shipped = [e.name for e in list_models() if e.kind == "demo" and e.name in SHIPPED]
        self.assertTrue(shipped, "no shipped demo models")
        self.delayDisplay("Running " + ", ".join(shipped))
        outputs = logic.run(models=shipped, device="cpu", **inputs)
        self.assertEqual(set(outputs), set(shipped))
        for key, node in outputs.items():
            self.assertEqual(node.GetName(), f"{nodes['t2w'].GetName()} MRH-{key.upper()}")
            self.assertEqual(node.GetImageData().GetDimensions(), nodes["t2w"].GetImageData().GetDimensions())
            self.assertTrue((abs(node_affine(node) - node_affine(nodes["t2w"])) < 1e-6).all())
            self.assertTrue(node.GetDisplayNode().GetColorNodeID())
        count = slicer.mrmlScene.GetNumberOfNodes()
        again = logic.run(models=shipped[:1], device="cpu", **inputs)
        self.assertIs(again[shipped[0]], outputs[shipped[0]])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Cancel leaves the scene unchanged")
        before = scene_signature(slicer.mrmlScene)
        run = SceneInference(slicer.mrmlScene, shipped, device="cpu", **inputs).start()
        run.cancel()
        while not run.job.finished:
            run.poll()
            slicer.app.processEvents()
        self.assertEqual(run.job.state, "cancelled")
        self.assertEqual(scene_signature(slicer.mrmlScene), before)
        self.delayDisplay("Test passed")
