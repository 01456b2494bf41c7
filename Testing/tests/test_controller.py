"""The GUI controller shared by the Slicer module and the web app, end to end on the real MRML scene of
slicer-core: inputs from scalar, DWI, 4D and sequence nodes, engine work in a child process (``mrhnet
job``) with progress, cancel, outputs as overlays, re-runs, training with its loss curve, the sample brain,
and a calling thread that stays responsive."""
from __future__ import annotations

import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MRHNetLib.data.io import write_fsl_gradients  # noqa: E402
from MRHNetLib.errors import MRHNetError  # noqa: E402
from MRHNetLib.gui import scene as sc  # noqa: E402
from MRHNetLib.gui.controller import Controller, Inputs  # noqa: E402

ROLES = ("t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, phantom):
    import torch

    from MRHNetLib.network.model import MRHNet
    from MRHNetLib.network.modelfile import ModelInfo, save_model

    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, target, seed in (("af", "af", 0), ("nf", "nf", 1), ("af2", "af", 2)):
        torch.manual_seed(seed)
        protocol = phantom.protocol()
        net = MRHNet(protocol.n_channels, depth=0, width=8)
        paths[name] = str(save_model(folder / f"tiny-{name}.mrhnet", net,
                                     ModelInfo(protocol, depth=0, target=target, width=8)))
    return paths


def _nodes(scene, phantom):
    nodes = sc.add_subject_nodes(scene, phantom, "brain1")
    return nodes, Inputs({r: nodes[r] for r in ROLES}, mask=nodes["mask"])


def _run(controller, timeout=120.0):
    events = []
    controller.wait(timeout=timeout, on_event=events.append)
    return events


def test_prediction_in_a_child_process_with_progress_overlays_and_rerun(scene, phantom, tiny_models, tmp_path):
    from MRHNetLib.network.infer import predict

    nodes, inputs = _nodes(scene, phantom)
    controller = Controller(scene, workroot=tmp_path)
    controller.predict(inputs, [tiny_models["af"], tiny_models["nf"]], device="cpu")
    assert controller.busy and controller.kind == "predict"
    events = []
    outputs = controller.wait(timeout=120, on_event=events.append)
    progress = [e.fraction for e in events if e.kind == "progress"]
    assert len(progress) >= 4 and 0 < max(progress) <= 1 and events[-1].kind == "done"
    assert any(e.message.startswith("tiny-") for e in events), [e.message for e in events]  # from the child
    assert set(outputs) == {"af", "nf"} and not controller.busy
    expected = predict(sc.subject_from_nodes(mask=nodes["mask"], **{r: nodes[r] for r in ROLES}),
                       [tiny_models["af"], tiny_models["nf"]], device="cpu")
    for key, node in outputs.items():
        assert node.GetName() == f"brain1 MRH-{key.upper()}"
        np.testing.assert_allclose(sc.node_affine(node), sc.node_affine(nodes["t2w"]))
        np.testing.assert_allclose(sc.volume_from_node(node).data, expected[key].data, rtol=1e-6, atol=1e-6)
    view = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert view.GetForegroundVolumeID() == outputs["af"].GetID()
    assert view.GetBackgroundVolumeID() == nodes["t2w"].GetID()
    assert list(tmp_path.iterdir()) == []  # the job's private folder is gone

    count = scene.GetNumberOfNodes()
    controller.predict(inputs, [tiny_models["af"]], device="cpu")
    again = controller.wait(timeout=120)
    assert again["af"] is outputs["af"] and scene.GetNumberOfNodes() == count
    controller.predict(inputs, [tiny_models["af"], tiny_models["af2"]], device="cpu")  # an ensemble adds SD
    assert set(controller.wait(timeout=120)) == {"af", "af_std"}


def test_sequence_and_4d_inputs_with_gradient_files(scene, phantom, tiny_models, tmp_path):
    nodes, inputs = _nodes(scene, phantom)
    controller = Controller(scene, workroot=tmp_path / "work")
    (tmp_path / "work").mkdir()
    reference = controller.predict(inputs, [tiny_models["af"]], device="cpu") or controller.wait(timeout=120)
    reference = sc.volume_from_node(reference["af"]).data

    b2000, b5000 = phantom.dwi["dwi_b2000"], phantom.dwi["dwi_b5000"]
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "b2000 frames")
    for i in range(b2000.volume.data.shape[3]):
        frame = sc.add_volume_node(scene, b2000.volume.with_data(b2000.volume.data[..., i]), f"f{i}")
        sequence.SetDataNodeAtValue(frame, str(i))
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "b5000 4D")
    sc.update_node_from_volume(vector, b5000.volume)
    bval, _ = write_fsl_gradients(tmp_path / "b2000", b2000.gradients, b2000.volume.affine)
    _, bvec = write_fsl_gradients(tmp_path / "b5000", b5000.gradients, b5000.volume.affine)
    mixed = Inputs({**inputs.nodes, "dwi_b2000": sequence, "dwi_b5000": vector},
                   gradients={"dwi_b2000": str(bval), "dwi_b5000": str(bvec)}, mask=nodes["mask"])
    assert controller.check(mixed, [tiny_models["af"]]) == []
    no_gradients = Inputs({**inputs.nodes, "dwi_b2000": sequence}, mask=nodes["mask"])
    assert "gradient" in controller.check(no_gradients, [tiny_models["af"]])[0]

    controller.predict(mixed, [tiny_models["af"]], device="cpu")
    got = controller.wait(timeout=120)
    np.testing.assert_allclose(sc.volume_from_node(got["af"]).data, reference, rtol=1e-5, atol=1e-5)


def test_cancel_ends_the_child_within_a_second_and_leaves_nothing(scene, phantom, tiny_models, tmp_path):
    nodes, inputs = _nodes(scene, phantom)
    controller = Controller(scene, workroot=tmp_path)
    before = sc.scene_signature(scene)
    controller.predict(inputs, [tiny_models["af"], tiny_models["nf"]], device="cpu")
    while controller.task.stage == "prepare":
        controller.poll()
    controller.poll()  # the child is started
    process = controller.task.job.process
    time.sleep(0.5)  # it is importing torch or computing
    start = time.monotonic()
    assert controller.cancel()
    assert time.monotonic() - start < 1.0
    assert process.poll() is not None  # no child process left
    assert list(tmp_path.iterdir()) == []  # no temporary folder
    assert sc.scene_signature(scene) == before  # no new node
    assert not controller.busy and controller.poll() == [] and not controller.cancel()


def test_a_model_that_does_not_fit_is_refused_before_anything_runs(scene, phantom, tiny_models, tmp_path,
                                                                  monkeypatch):
    nodes, inputs = _nodes(scene, phantom)
    controller = Controller(scene, workroot=tmp_path)
    partial = Inputs({r: nodes[r] for r in ("t2w", "mt_on", "mt_off")})
    # the check reads node headers only: no voxel array is copied
    monkeypatch.setattr(sc, "node_array", lambda node: pytest.fail("voxels were read for a model check"))
    problems = controller.check(partial, [tiny_models["af"]])
    assert len(problems) == 1 and "dwi_b2000" in problems[0]
    assert controller.check(inputs, [tiny_models["af"], tiny_models["nf"]]) == []
    before = sc.scene_signature(scene)
    with pytest.raises(MRHNetError, match="dwi_b2000"):
        controller.predict(partial, [tiny_models["af"]], device="cpu")
    assert sc.scene_signature(scene) == before and not controller.busy and list(tmp_path.iterdir()) == []


def test_calling_thread_stays_responsive_during_a_whole_prediction(scene, phantom, tiny_models, tmp_path):
    """A 50 Hz timer on the calling thread drives the job (as Slicer's QTimer does) and keeps >= 90 % of
    its nominal rate from Apply to the published maps: nothing on this thread waits for the engine."""
    _, inputs = _nodes(scene, phantom)
    controller = Controller(scene, workroot=tmp_path)
    period, ticks = 0.02, 0
    start = time.monotonic()
    controller.predict(inputs, [tiny_models["af"], tiny_models["nf"]], device="cpu")
    deadline = start
    while controller.busy:
        controller.poll()
        ticks += 1
        deadline += period
        time.sleep(max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - start
    assert controller.outputs and elapsed > 1.0  # a real run in a child process
    assert ticks >= 0.9 * elapsed / period, f"{ticks} ticks in {elapsed:.2f} s"


def test_training_through_the_controller_with_its_loss_curve(scene, phantom, tmp_path):
    from MRHNetLib.network.modelfile import read_info

    nodes, inputs = _nodes(scene, phantom)
    controller = Controller(scene, workroot=tmp_path / "work")
    (tmp_path / "work").mkdir()
    options = dict(depth=0, width=8, epochs=3, batch_size=64, val_samples=10, lr=0.01, device="cpu")
    with pytest.raises(MRHNetError, match="histology"):
        controller.train(inputs, None, "af", tmp_path / "x.mrhnet", options=options)
    with pytest.raises(MRHNetError, match=r"must end in \.mrhnet"):
        controller.train(inputs, nodes["af"], "af", tmp_path / "folder", options=options)
    users = tmp_path / "mine.mrhnet"  # a folder of the user's that happens to end in .mrhnet
    (users / "sub").mkdir(parents=True)
    (users / "notes.txt").write_text("mine")
    (users / "sub" / "data.txt").write_text("mine too")
    with pytest.raises(MRHNetError, match="notes.txt"):
        controller.train(inputs, nodes["af"], "af", users, options=options)
    assert (users / "notes.txt").read_text() == "mine" and (users / "sub" / "data.txt").read_text() == "mine too"
    controller.train(inputs, nodes["af"], "af", tmp_path / "af.mrhnet", options=options)
    with pytest.raises(MRHNetError, match="training is in progress"):  # one job at a time
        controller.predict(inputs, ["af"], device="cpu")
    events = _run(controller, timeout=180)
    epochs = [e.payload for e in events if e.kind == "data"]
    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    model = events[-1].payload
    assert read_info(model).target == "af"
    np.testing.assert_allclose(controller.plot.values("epoch"), [1, 2, 3])
    np.testing.assert_allclose(controller.plot.values("train"), [row["train_loss"] for row in epochs])
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert list((tmp_path / "work").iterdir()) == []  # the run folder went with the job's folder


def test_sample_brain_simulated_in_the_child_and_loaded(scene, tmp_path):
    controller = Controller(scene, workroot=tmp_path)
    controller.load_sample(size="small", name="sample")
    nodes = controller.wait(timeout=120)
    assert {"t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000", "mask", "af", "nf", "mbp"} <= set(nodes)
    assert nodes["t2w"].GetName() == "sample" and nodes["dwi_b2000"].GetNumberOfGradients() == 32
    assert nodes["mask"].IsA("vtkMRMLLabelMapVolumeNode")
    assert all(n.GetStorageNode() is None for n in nodes.values())  # nothing points at a deleted file
    assert list(tmp_path.iterdir()) == []
    view = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert view.GetBackgroundVolumeID() == nodes["t2w"].GetID()


def test_cancel_while_the_sample_loads_leaves_no_nodes(scene, tmp_path):
    """The sample's images are added one per tick after the child ends; a cancel (or a subject switch in the
    web app) in between removes the ones already added."""
    controller = Controller(scene, workroot=tmp_path)
    before = sc.scene_signature(scene)
    controller.load_sample(size="small", name="sample")
    loading = []
    while controller.busy and len(loading) < 2:
        loading += [e.message for e in controller.poll() if e.message.startswith("loading")]
    assert len(loading) == 2 and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") > 0
    assert controller.cancel()
    assert sc.scene_signature(scene) == before and list(tmp_path.iterdir()) == []


def test_subject_files_are_read_off_the_gui_thread(scene, phantom, tmp_path, monkeypatch):
    """The sample's (or a subject's) files are read by a worker thread while the steps report it: a tick
    never waits for the disk (seconds for a whole-brain DWI shell); each node is added once its file is read."""
    import threading

    from MRHNetLib.data import io
    from MRHNetLib.gui.controller import read_subject_nodes

    folder = phantom.save(tmp_path / "mouse")
    release, threads = threading.Event(), []
    real_volume, real_dwi = io.read_volume, io.read_dwi

    def slow(real):
        def read(*args, **kwargs):
            threads.append(threading.current_thread().name)
            release.wait(10)
            return real(*args, **kwargs)
        return read

    monkeypatch.setattr(io, "read_volume", slow(real_volume))
    monkeypatch.setattr(io, "read_dwi", slow(real_dwi))
    before = scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
    steps = read_subject_nodes(scene, folder, "mouse")
    assert [next(steps) for _ in range(3)] == [("t2w", None)] * 3  # held by the disk, the GUI is not
    release.set()
    nodes = dict(step for step in steps if step[1] is not None)
    assert {"t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000", "af"} <= set(nodes)
    assert threads and all(name.startswith("mrhnet-read") for name in threads), threads
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == before + len(nodes)


def test_a_failing_job_reports_one_line_and_cleans_up(scene, phantom, tmp_path):
    nodes, inputs = _nodes(scene, phantom)
    broken = tmp_path / "broken.mrhnet"
    broken.mkdir()
    (broken / "model.json").write_text("{}")
    controller = Controller(scene, workroot=tmp_path / "work")
    (tmp_path / "work").mkdir()
    assert controller.check(inputs, [str(broken)])  # unreadable model: a problem, no traceback
    zero = sc.add_volume_node(scene, phantom.images["t2w"].with_data(np.zeros(phantom.shape, np.float32)), "zero")
    before = sc.scene_signature(scene)
    controller.predict(Inputs({**inputs.nodes, "mt_on": zero}), ["af"], device="cpu")
    with pytest.raises(MRHNetError, match="zero.*all zeros"):
        controller.wait(timeout=60)
    assert sc.scene_signature(scene) == before and list((tmp_path / "work").iterdir()) == []


def test_the_slicer_panel_parameters_become_controller_requests(scene, phantom, tmp_path):
    """The module's parameter node as the panel functions read it: a fine-tune started from the panel runs
    at the fine-tune default (1e-4), not at a panel literal; the sample file and the T2w guess."""
    from types import SimpleNamespace

    from MRHNetLib.gui import panel
    from MRHNetLib.network.config import config_for, gui_defaults

    nodes, _ = _nodes(scene, phantom)
    p = SimpleNamespace(t2w=None, mtOn=None, mtOff=None, dwiB2000=None, dwiB5000=None, fa=None, mask=None,
                        dwiB2000Gradients="", dwiB5000Gradients="", useAF=True, useNF=False, useMBP=True,
                        originalModel="af-original-4blocks", extraModels="a.mrhnet;;b.mrhnet", device="cpu",
                        trainTarget=None, trainStain="nf", depth=gui_defaults("train")["depth"], epochs=4,
                        learningRate=0.0, fineTuneFrom="af", fineTuneFile="", modelOutput=str(tmp_path / "n.mrhnet"))
    panel.select(p, nodes)
    assert p.t2w is nodes["t2w"] and p.dwiB5000 is nodes["dwi_b5000"] and p.trainTarget is nodes["nf"]
    assert panel.models(p) == ["af", "mbp", "af-original-4blocks", "a.mrhnet", "b.mrhnet"]
    assert set(panel.inputs(p).chosen()) == {"t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000", "fa"}
    request = panel.training(p)
    assert request["base_model"] == "af" and "lr" not in request["options"] and "depth" not in request["options"]
    assert config_for("finetune", **request["options"]).lr == 1e-4
    p.fineTuneFrom, p.learningRate = "", 0.02
    request = panel.training(p)
    assert config_for("train", **request["options"]).lr == 0.02 and request["options"]["depth"] == p.depth
    assert panel.default_t2w(scene) is nodes["t2w"]
    sample = tmp_path / "x.mrhsample"
    sample.write_text('{"size": "small", "seed": 3}')
    assert panel.sample_options(str(sample)) == {"size": "small", "seed": 3}
    sample.write_text('{"size": "huge"}')
    with pytest.raises(MRHNetError, match="unknown size"):
        panel.sample_options(str(sample))
    shipped = panel.sample_source(str(__import__("pathlib").Path(panel.__file__).resolve().parents[2] / "MRHNet" /
                                      "Resources"), "MRHNet phantom brain", "MRHNetSampleBrain")
    assert shipped["uris"][0].startswith("file://")
    assert panel.sample_options(shipped["uris"][0][len("file://"):]) == {"size": "medium", "seed": 0}
    # training into an earlier model asks first; a new path or an empty folder does not
    from MRHNetLib.network.catalog import resolve

    assert panel.replaces_model(str(resolve("af"))) and not panel.replaces_model("")
    assert not panel.replaces_model(str(tmp_path / "new.mrhnet")) and not panel.replaces_model(str(tmp_path))


# --- subject folders: checked from their headers, run and evaluated by the child ---------------------------
def _engine_problem(folder, model) -> str:
    """What the engine says of a folder and a model: load_subject's or check_subject's one line ('' if it fits)."""
    from pathlib import Path

    from MRHNetLib.data.subject import load_subject
    from MRHNetLib.network.infer import check_subject
    from MRHNetLib.network.modelfile import read_info

    try:
        subject = load_subject(folder)
    except MRHNetError as exc:
        return str(exc)
    try:
        check_subject(subject, read_info(model))
    except MRHNetError as exc:
        return f"{Path(model).name}: {exc}"
    return ""


def _no_voxels_read(monkeypatch):
    """Make every way the engine reads voxels fail (nibabel's array proxy, SimpleITK's ReadImage)."""
    import SimpleITK
    from nibabel.arrayproxy import ArrayProxy

    from MRHNetLib.data import io

    def refuse(*args, **kwargs):
        pytest.fail("voxels were read for a model check")

    for owner, name in ((ArrayProxy, "__array__"), (ArrayProxy, "__getitem__"), (ArrayProxy, "get_unscaled"),
                        (SimpleITK, "ReadImage"), (io, "read_volume"), (io, "read_dwi")):
        monkeypatch.setattr(owner, name, refuse)


def test_folder_inputs_are_checked_from_headers_with_the_engines_messages(phantom, tiny_models, tmp_path,
                                                                           monkeypatch):
    import os
    import shutil

    from MRHNetLib.data.protocol import default_protocol
    from MRHNetLib.network.model import MRHNet
    from MRHNetLib.network.modelfile import ModelInfo, save_model

    folder = phantom.save(tmp_path / "mouse")
    other = default_protocol(n_dirs=10)
    other_model = str(save_model(tmp_path / "other.mrhnet", MRHNet(other.n_channels, depth=0, width=8),
                                 ModelInfo(other, depth=0, target="af", width=8)))
    no_b5000 = tmp_path / "no_b5000"
    shutil.copytree(folder, no_b5000)
    (no_b5000 / "dwi_b5000.nii.gz").unlink()
    off_grid = tmp_path / "off_grid"
    shutil.copytree(folder, off_grid)
    from MRHNetLib.data.io import write_volume

    write_volume(off_grid / "mt_on.nii.gz", phantom.images["mt_on"].with_data(phantom.images["mt_on"].data[:-2]))
    cases = [(folder, tiny_models["af"]), (folder, other_model), (no_b5000, tiny_models["af"]),
             (off_grid, tiny_models["af"])]
    expected = [_engine_problem(f, m) for f, m in cases]
    assert expected[0] == "" and all(expected[1:]), expected

    controller = Controller(None)
    _no_voxels_read(monkeypatch)
    for (f, model), problem in zip(cases, expected):
        assert controller.check(Inputs(folder=str(f)), [model]) == ([problem] if problem else []), f
    assert "dwi_b5000" in expected[2] and "mt_on.nii.gz" in expected[3]

    # cached like the node checks: the headers are read again only when a file changes
    from MRHNetLib.gui import controller as ctl

    calls = []
    real = ctl.folder_header_subject
    monkeypatch.setattr(ctl, "folder_header_subject", lambda *a, **k: calls.append(a) or real(*a, **k))
    inputs = Inputs(folder=str(folder))
    for _ in range(3):
        assert controller.check(inputs, [other_model]) == [expected[1]]
    assert len(calls) == 1
    stat = (folder / "t2w.nii.gz").stat()
    os.utime(folder / "t2w.nii.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    controller.check(inputs, [other_model])
    assert len(calls) == 2


def test_folder_header_subject_matches_the_loaded_subject(phantom, tmp_path, monkeypatch):
    """NIfTI with .bval/.bvec and a Slicer DWI NRRD with its own gradients: the header subject has the
    loaded subject's shapes, affines and gradients."""
    from MRHNetLib.data.io import write_dwi_nrrd
    from MRHNetLib.data.subject import load_subject
    from MRHNetLib.data.headers import folder_header_subject

    folder = phantom.save(tmp_path / "mouse")
    b5000 = phantom.dwi["dwi_b5000"]
    for name in ("dwi_b5000.nii.gz", "dwi_b5000.bval", "dwi_b5000.bvec"):
        (folder / name).unlink()
    write_dwi_nrrd(folder / "dwi_b5000.nrrd", b5000.volume, b5000.gradients)
    loaded = load_subject(folder)
    _no_voxels_read(monkeypatch)
    header = folder_header_subject(folder)
    assert set(header.images) == set(loaded.images) and set(header.dwi) == set(loaded.dwi)
    for role in list(loaded.images) + list(loaded.dwi):
        assert header.get(role).data.shape == loaded.get(role).data.shape, role
        np.testing.assert_allclose(header.get(role).affine, loaded.get(role).affine, atol=1e-6)
    for role, dwi in loaded.dwi.items():
        np.testing.assert_allclose(header.dwi[role].gradients.bvals, dwi.gradients.bvals, atol=1e-3)
        np.testing.assert_allclose(header.dwi[role].gradients.bvecs, dwi.gradients.bvecs, atol=1e-5)
    assert header.protocol().describe() == loaded.protocol().describe()


def test_folder_prediction_with_its_evaluation_from_the_child(scene, phantom, tiny_models, tmp_path):
    """A subject folder runs as it is (nothing written for it), outputs follow the T2w node shown, and the
    child's evaluation against the folder's histology comes back as the controller's report."""
    from MRHNetLib.data.subject import load_subject
    from MRHNetLib.network.infer import predict

    folder = phantom.save(tmp_path / "mouse")
    work = tmp_path / "work"
    work.mkdir()
    t2w = sc.add_volume_node(scene, load_subject(folder).images["t2w"], "mouse")
    controller = Controller(scene, workroot=work)
    controller.predict(Inputs(folder=str(folder), source=t2w), [tiny_models["af"], tiny_models["nf"]], device="cpu",
                       evaluate=True)
    assert controller.task.spec["subject"] == str(folder) and controller.task.spec["evaluate"] is True
    events = _run(controller, timeout=180)
    outputs = events[-1].payload
    assert set(outputs) == {"af", "nf"} and outputs["af"].GetName() == "mouse MRH-AF"
    expected = predict(load_subject(folder), [tiny_models["af"]], device="cpu")["af"]
    np.testing.assert_allclose(sc.volume_from_node(outputs["af"]).data, expected.data, rtol=1e-5, atol=1e-6)
    report = controller.evaluation
    assert set(report.summary["targets"]) == {"af", "nf"} and not report.problem
    assert "FA" in report.summary["targets"]["af"]["markers"]
    assert report.figure.startswith(b"\x89PNG")
    assert max(e.fraction for e in events if e.kind == "progress" and "evaluat" not in e.message) <= 1.0
    assert list(work.iterdir()) == [] and sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in phantom.save(tmp_path / "again").iterdir())  # nothing written into the folder

    controller.predict(Inputs(folder=str(folder), source=t2w), [tiny_models["af"]], device="cpu")
    controller.wait(timeout=120)
    assert controller.evaluation is None  # only when asked for


def test_closing_the_scene_keeps_a_training_run_and_brings_its_plot_back(scene, phantom, tiny_models, tmp_path):
    """File > Close Scene (or a self-test's ``mrmlScene.Clear()``) cancels what needs the scene (a prediction)
    but not a training run whose inputs are already written: it goes on, its loss plot returns to the new
    scene with the epochs so far, and the model is saved. A training request without inputs is refused
    before any job folder exists."""
    from MRHNetLib.network.modelfile import read_info

    work = tmp_path / "work"
    work.mkdir()
    nodes, inputs = _nodes(scene, phantom)
    controller = Controller(scene, workroot=work)
    with pytest.raises(MRHNetError, match="no input volumes"):
        controller.train(Inputs({}), nodes["af"], "af", tmp_path / "none.mrhnet")
    assert list(work.iterdir()) == []
    controller.predict(inputs, [tiny_models["af"]], device="cpu")
    controller.poll()
    assert controller.scene_closing() and controller.task is None  # a prediction needs the scene
    options = dict(depth=0, width=8, epochs=4, batch_size=64, val_samples=10, lr=0.01, device="cpu")
    controller.train(inputs, nodes["af"], "af", tmp_path / "af.mrhnet", options=options)
    events = []
    while controller.task is not None and controller.task.stage == "prepare":  # still copying the inputs
        events += controller.poll()
    while controller.task is not None and not any(e.kind == "data" for e in events):  # first epoch logged
        events += controller.poll()
        time.sleep(0.02)
    assert not controller.scene_closing()  # the run in the child goes on
    scene.Clear(0)
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 0
    controller.scene_closed()
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert len(controller.plot.values("epoch")) >= 1  # the epochs before the close are back
    controller.wait(timeout=180, on_event=events.append)
    assert read_info(events[-1].payload).target == "af"
    np.testing.assert_allclose(controller.plot.values("epoch"), [1, 2, 3, 4])
