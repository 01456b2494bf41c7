"""MRHNet in 3D Slicer: widgets over the engine MRHNetLib, whose controller runs every job in a child process."""
import os
import sys
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import (vtkMRMLDiffusionWeightedVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSegmentationNode, vtkMRMLSequenceNode, vtkMRMLVectorVolumeNode)
from slicer.i18n import tr as _, translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def ensureLibraryPath():
    """MRHNetLib lies beside this file when packaged and one folder up in the source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "MRHNetLib")) and folder not in sys.path:
            sys.path.insert(0, folder)


ensureLibraryPath()
from MRHNetLib.gui import panel  # noqa: E402 (framework-free, imports no torch)
from MRHNetLib.network.config import gui_defaults, option_help  # noqa: E402

README_URL = "https://github.com/SlicerMRHNet/SlicerMRHNet#readme"
SAMPLE_NAME = "MRHNet phantom brain"
SAMPLE_FILE_TYPE = "MRHNetSampleBrain"
TRAIN = gui_defaults("train")
# Union types: the parameterNodeWrapper sets each selector's nodeTypes from these (overriding the .ui)
DwiNode = Union[vtkMRMLDiffusionWeightedVolumeNode, vtkMRMLVectorVolumeNode, vtkMRMLSequenceNode]
MaskNode = Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
PATHS = {"dwiB2000Gradients": "dwiB2000GradientsPath", "dwiB5000Gradients": "dwiB5000GradientsPath",
         "fineTuneFile": "fineTuneFilePath", "modelOutput": "modelOutputPath"}  # bound by hand: no "."


class MRHNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MRHNet")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
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
    """'MRHNet phantom brain' in Sample Data (MRHNetFileReader simulates it: nothing is downloaded)."""
    import SampleData

    resources = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**panel.sample_source(resources, SAMPLE_NAME,
                                                                                   SAMPLE_FILE_TYPE))


class MRHNetFileReader:
    """Reads ``*.mrhsample`` (JSON: brain size and seed) by simulating that brain into the scene."""

    def __init__(self, parent):
        self.parent = parent

    def description(self):
        return _("MRHNet simulated brain")

    def fileType(self):
        return SAMPLE_FILE_TYPE

    def extensions(self):
        return ["MRHNet simulated brain (*.mrhsample)"]

    def canLoadFile(self, filePath):
        return filePath.endswith(".mrhsample")

    def load(self, properties):
        try:  # tryWithErrorDisplay shows the error and raises it again: False tells Slicer that nothing loaded
            with slicer.util.tryWithErrorDisplay(_("Could not create the MRHNet phantom brain."), waitCursor=True):
                nodes = MRHNetLogic().loadPhantom(**panel.sample_options(properties["fileName"]),
                                                  name=properties.get("name", SAMPLE_NAME))
        except Exception:  # noqa: BLE001 - shown above
            return False
        self.parent.loadedNodes = [n.GetID() for n in nodes.values()]
        return True


@parameterNodeWrapper
class MRHNetParameterNode:
    t2w: Optional[vtkMRMLScalarVolumeNode]
    mtOn: Optional[vtkMRMLScalarVolumeNode]
    mtOff: Optional[vtkMRMLScalarVolumeNode]
    dwiB2000: Optional[DwiNode]
    dwiB5000: Optional[DwiNode]
    dwiB2000Gradients: str = ""  # .bval/.bvec or gx gy gz b table for a 4D volume or sequence
    dwiB5000Gradients: str = ""
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
    depth: Annotated[int, WithinRange(0, 40)] = TRAIN["depth"]
    epochs: Annotated[int, WithinRange(1, 2000)] = TRAIN["epochs"]
    learningRate: Annotated[float, WithinRange(0.0, 1.0)] = 0.0  # 0: the command's own default
    fineTuneFrom: Annotated[str, Choice(["", "af", "nf", "mbp"])] = ""  # shipped model; "": a new network
    fineTuneFile: str = ""  # or any model folder
    modelOutput: str = ""


class MRHNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._guiTag = None
        self._timer = qt.QTimer()
        self._timer.setInterval(50)
        self._timer.connect("timeout()", self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRHNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MRHNetLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for name in ("apply", "cancel", "addModel", "clearModels", "train", "sample"):
            getattr(self.ui, name + "Button").connect("clicked(bool)", getattr(self, "on" + name[0].upper() + name[1:]))
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacity)
        for name, widget in PATHS.items():
            getattr(self.ui, widget).connect("currentPathChanged(QString)", lambda path, n=name: self.onPath(n, path))
        for option, widget in (("depth", "depthSpinBox"), ("epochs", "epochsSpinBox"), ("lr", "learningRateSpinBox")):
            getattr(self.ui, widget).toolTip = option_help("train", option)
        self.ui.learningRateSpinBox.toolTip += "; " + _("fine-tuning: ") + option_help("finetune", "lr")
        self.ui.trainingCollapsibleButton.collapsed = True
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.logic.controller.cancel()
        self.removeObservers()
        self._timer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event) -> None:  # a training run goes on (its plot comes back)
        if self.logic.controller.scene_closing():
            self.ui.statusLabel.text = _("cancelled: the scene was closed")
        if self._guiTag is not None:  # Slicer 5.8 gives no tag to unbind with: the same node comes back at EndClose
            self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.logic.controller.scene_closed()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.t2w:
            self._parameterNode.t2w = panel.default_t2w(slicer.mrmlScene)

    def setParameterNode(self, node) -> None:
        """Bound once: Slicer 5.8's connectGui returns no tag to unbind, and a second binding resets choices."""
        old = self._parameterNode
        if node is not None and old is not None and node.parameterNode is old.parameterNode:
            return
        if old:
            if self._guiTag is not None:
                old.disconnectGui(self._guiTag)
            self.removeObserver(old, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
        self._parameterNode, self._guiTag = node, node.connectGui(self.ui) if node else None
        if node:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.onParameterChanged)
            self.onParameterChanged()

    def onParameterChanged(self, caller=None, event=None) -> None:
        p = self._parameterNode
        for name, widget in PATHS.items():
            if p and getattr(self.ui, widget).currentPath != getattr(p, name):
                getattr(self.ui, widget).currentPath = getattr(p, name)
        self.ui.extraModelsList.clear()
        self.ui.extraModelsList.addItems(panel.extra_models(p))
        self._updateButtons()
        self.updateModelInfo()  # from node headers, cached: reruns only when the inputs or models changed

    def onPath(self, name, path) -> None:
        if self._parameterNode and getattr(self._parameterNode, name) != path:
            setattr(self._parameterNode, name, path)

    def updateModelInfo(self) -> None:
        """Each chosen model's protocol and training, and the engine's check of the inputs against it."""
        p = self._parameterNode
        info, warnings = self.logic.controller.summary(panel.inputs(p), panel.models(p)) if p else ("", [])
        self.ui.modelInfoText.setPlainText(info)
        self.ui.checkLabel.text = "\n".join(warnings)
        self.ui.checkLabel.visible = bool(warnings)

    def _updateButtons(self, starting=False) -> None:
        kind, p = self.logic.controller.kind, self._parameterNode
        idle = kind is None and not starting
        self.ui.applyButton.enabled = bool(p and idle and panel.inputs(p).chosen())
        self.ui.trainButton.enabled = self.ui.sampleButton.enabled = idle
        self.ui.cancelButton.enabled = kind is not None
        label = self.logic.controller.task.label if kind else ""
        self.ui.cancelButton.text = _("Cancel: {what}").format(what=label) if kind else _("Cancel")

    # --- actions: each starts one job of the controller, followed by onPoll ----------------------
    def _start(self, message, start) -> None:
        self._updateButtons(starting=True)  # no second click while pip installs (Slicer processes events then)
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to start MRHNet."), waitCursor=True):
                self.logic.ensureDependencies()
                start()
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = message
                self._timer.start()
        finally:
            self._updateButtons()

    def onSample(self) -> None:
        self._start(_("simulating the sample brain..."), lambda: self.logic.controller.load_sample())

    def onApply(self) -> None:
        self._start(_("running..."), lambda: self.logic.startRun(self._parameterNode))

    def onTrain(self) -> None:
        out = self._parameterNode.modelOutput
        if panel.replaces_model(out) and not slicer.util.confirmOkCancelDisplay(
                _("{path} holds an earlier model. Replace it when training ends?").format(path=out)):
            return
        self._start(_("training..."), lambda: (self.logic.startTraining(self._parameterNode), slicer.modules.plots
                                               .logic().ShowChartInLayout(self.logic.controller.plot.chart)))

    def onCancel(self) -> None:
        if self.logic.controller.cancel():
            self._finished(_("cancelled: the scene is unchanged"))

    def onAddModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Choose a model folder (NAME.mrhnet)"))
        if folder:
            self._parameterNode.extraModels = ";".join(panel.extra_models(self._parameterNode) + [folder])

    def onClearModels(self) -> None:
        self._parameterNode.extraModels = ""

    def onOpacity(self, value) -> None:
        """Only views that show one of MRHNet's maps (Slicer's other views keep their own opacity)."""
        for view in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            shown = slicer.mrmlScene.GetNodeByID(view.GetForegroundVolumeID() or "")
            if shown is not None and shown.GetAttribute("MRHNet.Output"):
                view.SetForegroundOpacity(value)

    def onPoll(self) -> None:
        """Advance the job by one step; show its progress; report its end."""
        for event in self.logic.controller.poll():
            if event.kind == "progress":
                self.ui.progressBar.value = int(100 * event.fraction)
                self.ui.statusLabel.text = event.message
            elif event.kind == "data":
                self.ui.statusLabel.text = event.message
            elif event.kind == "done":
                self._done(event.payload)
            elif event.kind == "failed":
                self._finished(_("failed: {message}").format(message=event.message))
                if event.payload:
                    print(event.payload)  # the engine's traceback, in the Python console
                slicer.util.errorDisplay(event.message)
            elif event.kind == "cancelled":
                self._finished(_("cancelled"))

    def _done(self, result) -> None:
        if self.logic.controller.last == "sample":
            self.logic.selectInputs(self._parameterNode, result)
            slicer.util.resetSliceViews()
        self._finished(self.logic.controller.result_text(result))
        self.ui.progressBar.value = 100

    def _finished(self, message) -> None:
        self._timer.stop()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = message
        self._updateButtons()


class MRHNetLogic(ScriptedLoadableModuleLogic):
    """Console API (see the README): ``loadPhantom``, ``run`` and ``train`` wait for their job while the
    GUI keeps refreshing; ``controller`` is the shared GUI controller (``MRHNetLib.gui.controller``)."""

    _controller = None  # one per application: its scene is slicer.mrmlScene

    @property
    def controller(self):
        from MRHNetLib.gui.controller import Controller

        if MRHNetLogic._controller is None:
            MRHNetLogic._controller = Controller(slicer.mrmlScene)
        return MRHNetLogic._controller

    def getParameterNode(self):
        return MRHNetParameterNode(super().getParameterNode())

    def ensureDependencies(self) -> None:
        """Install what the engine needs, after one question, without touching Slicer's own packages."""
        from MRHNetLib.gui import install

        requirements = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")
        if install.missing_requirements(install.read_requirements(requirements)):
            install.install_requirements(requirements)

    def startRun(self, p) -> None:
        self.controller.predict(panel.inputs(p), panel.models(p), device=p.device, opacity=p.opacity)

    def startTraining(self, p) -> None:
        self.controller.train(panel.inputs(p), **panel.training(p))

    def selectInputs(self, p, nodes: dict) -> None:
        with slicer.util.NodeModify(p.parameterNode):
            panel.select(p, nodes)

    # --- console API -----------------------------------------------------------------------
    def _wait(self):
        return self.controller.wait(tick=slicer.app.processEvents)

    def loadPhantom(self, size: str = "medium", seed: int = 0, name: str = SAMPLE_NAME) -> dict:
        """Simulate the sample brain in the background, add it to the scene, choose it as the panel's inputs."""
        self.ensureDependencies()
        self.controller.load_sample(size=size, seed=seed, name=name)
        nodes = self._wait()
        self.selectInputs(self.getParameterNode(), nodes)
        slicer.util.resetSliceViews()
        return nodes

    def run(self, models=panel.SHIPPED, device="auto", mask=None, gradients: Optional[dict] = None, **nodes) -> dict:
        """Run the models on input nodes by role (``t2w=``, ``mt_on=``, ..., ``dwi_b5000=``, ``fa=``); returns
        {target: output volume node}."""
        self.ensureDependencies()
        self.controller.predict(panel.Inputs(nodes, dict(gradients or {}), mask), list(models), device=device)
        return self._wait()

    def train(self, target, stain: str, out: str, base_model=None, mask=None, gradients=None, **nodesAndOptions) -> str:
        """Train (or fine-tune ``base_model``) on input nodes by role and a histology ``target`` node; writes
        ``out`` (NAME.mrhnet) and returns its path. Options: those of ``mrhnet train`` (epochs, lr, device, ...)."""
        self.ensureDependencies()
        nodes = {k: nodesAndOptions.pop(k) for k in panel.NODE_ROLES if k in nodesAndOptions}
        self.controller.train(panel.Inputs(nodes, dict(gradients or {}), mask), target, stain, out,
                              base_model=base_model, options=nodesAndOptions)
        return self._wait()


class MRHNetTest(ScriptedLoadableModuleTest):
    """The whole flow on the sample (phantom) brain inside Slicer: load, run, overlays, re-run, cancel."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_WholeFlowOnPhantom()

    def test_WholeFlowOnPhantom(self):
        from MRHNetLib.gui import install
        from MRHNetLib.gui import scene as sc

        if install.selftest_skip_reason():  # the Extensions Index build machines have no torch
            return self.delayDisplay(install.selftest_skip_reason())
        logic = MRHNetLogic()
        self.delayDisplay("Simulating the sample brain in a child process")
        nodes = logic.loadPhantom(size="small")
        inputs = {k: nodes[k] for k in ("t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000")}
        outputs = logic.run(models=panel.SHIPPED, device="cpu", **inputs)
        self.assertEqual(set(outputs), set(panel.SHIPPED))
        for key, node in outputs.items():
            self.assertEqual(node.GetName(), f"{nodes['t2w'].GetName()} MRH-{key.upper()}")
            self.assertTrue((abs(sc.node_affine(node) - sc.node_affine(nodes["t2w"])) < 1e-6).all())
        count = slicer.mrmlScene.GetNumberOfNodes()
        self.assertIs(logic.run(models=["af"], device="cpu", **inputs)["af"], outputs["af"])  # the same node again
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("Cancel leaves the scene unchanged")
        before = sc.scene_signature(slicer.mrmlScene)
        logic.controller.predict(panel.Inputs(inputs), list(panel.SHIPPED), device="cpu")
        logic.controller.poll()
        self.assertTrue(logic.controller.cancel() and not logic.controller.busy)
        self.assertEqual(sc.scene_signature(slicer.mrmlScene), before)
        self.delayDisplay("Test passed")
