"""Scene logic against the real MRML scene of slicer-core (no mocks): files into nodes through storage
nodes, nodes <-> engine volumes and gradients, subjects from nodes, output nodes and their display (jobs on them: test_controller.py)."""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MRHNetLib.gui import scene as sc  # noqa: E402
from MRHNetLib.errors import MRHNetError  # noqa: E402
from MRHNetLib.data.io import Gradients, Volume, read_dwi, read_volume, write_dwi_nrrd, write_volume  # noqa: E402
from MRHNetLib.data.subject import DWI  # noqa: E402


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", [ax, ay, az], degrees=True).as_matrix()


def rotated_affine() -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = rotation(10, -25, 40) @ np.diag([0.1, 0.12, 0.15])
    aff[:3, 3] = [1.5, -2.0, 3.25]
    return aff


def test_volume_files_load_through_storage_nodes(scene, tmp_path):
    rng = np.random.default_rng(1)
    vol = Volume(rng.random((6, 7, 5)).astype(np.float32) + 0.5, rotated_affine(), "x")
    for name in ("a.nii.gz", "b.nrrd"):
        path = write_volume(tmp_path / name, vol)
        node = scene_node = sc.load_volume_node(scene, path)
        assert scene_node.GetStorageNode().GetFileName() == str(path)
        got, ref = sc.volume_from_node(node), read_volume(path)
        np.testing.assert_allclose(got.data, ref.data, rtol=1e-6)
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-5)
        # slicer.util's (k, j, i) order is the transpose of the engine's (i, j, k)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), ref.data.transpose(2, 1, 0), rtol=1e-6)
    with pytest.raises(MRHNetError, match="does not exist"):
        sc.load_volume_node(scene, tmp_path / "missing.nii.gz")


def test_volume_node_round_trip_keeps_geometry(scene):
    vol = Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), rotated_affine(), "v")
    node = sc.add_volume_node(scene, vol)
    assert node.GetImageData().GetDimensions() == (4, 5, 6)
    back = sc.volume_from_node(node)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-12)
    ijk = sc.node_affine(node) @ np.array([3, 4, 5, 1.0])
    np.testing.assert_allclose(ijk, vol.affine @ np.array([3, 4, 5, 1.0]))


def _dwi(rng, affine) -> DWI:
    bvals = np.r_[0.0, np.full(6, 2000.0), 1000.0]
    bvecs = rng.normal(size=(8, 3))
    bvecs[0] = 0
    return DWI(Volume(rng.random((5, 6, 4, 8)).astype(np.float32) + 0.1, affine), Gradients(bvals, bvecs))


def test_dwi_nrrd_with_measurement_frame_and_rotated_grid(scene, tmp_path):
    """Gradients from a Slicer DWI NRRD whose grid is rotated and whose measurement frame is not the
    identity come out as the same RAS world vectors that were written."""
    import nrrd

    rng = np.random.default_rng(2)
    dwi = _dwi(rng, rotated_affine())
    plain = write_dwi_nrrd(tmp_path / "plain.nrrd", dwi.volume, dwi.gradients)
    data, header = nrrd.read(str(plain))
    frame = rotation(30, 15, -60)  # the header's vectors: columns of the frame -> LPS matrix
    for key in [k for k in header if k.startswith("DWMRI_gradient_")]:
        g = np.array([float(x) for x in header[key].split()])
        header[key] = " ".join(f"{x:.10f}" for x in frame @ g)  # = inverse(frame.T) @ g for a rotation
    header["measurement frame"] = frame  # pynrrd writes rows: vectors = frame rows = (frame.T) columns
    path = tmp_path / "framed.nrrd"
    nrrd.write(str(path), data, header,
               custom_field_map={k: "string" for k in header if k.startswith("DWMRI") or k == "modality"})

    node = sc.load_dwi_node(scene, path)
    assert node.IsA("vtkMRMLDiffusionWeightedVolumeNode")
    import vtk

    mf = vtk.vtkMatrix4x4()
    node.GetMeasurementFrameMatrix(mf)
    assert not np.allclose(slicer.util.arrayFromVTKMatrix(mf)[:3, :3], np.eye(3), atol=0.1)
    stored = np.array([node.GetDiffusionGradient(i) for i in range(node.GetNumberOfGradients())])
    assert not np.allclose(stored[1:], dwi.gradients.bvecs[1:], atol=0.1)  # stored in the frame, not RAS
    got = sc.dwi_from_node(node)
    np.testing.assert_allclose(got.gradients.bvecs, dwi.gradients.bvecs, atol=1e-6)
    np.testing.assert_allclose(got.gradients.bvals, dwi.gradients.bvals, rtol=1e-6)
    np.testing.assert_allclose(got.volume.affine, dwi.volume.affine, atol=1e-5)
    np.testing.assert_allclose(got.volume.data, dwi.volume.data, rtol=1e-6)
    # the engine's own file reader agrees
    np.testing.assert_allclose(read_dwi(path)[1].bvecs, got.gradients.bvecs, atol=1e-6)

    # engine -> node -> engine keeps the world gradients (identity frame written)
    again = sc.dwi_from_node(sc.add_dwi_node(scene, got, "copy"))
    np.testing.assert_allclose(again.gradients.bvecs, dwi.gradients.bvecs, atol=1e-6)
    np.testing.assert_array_equal(again.volume.data, got.volume.data)


def test_dwi_nifti_with_fsl_gradients_and_4d_volume_with_gradient_file(scene, tmp_path):
    from MRHNetLib.data.io import write_fsl_gradients

    rng = np.random.default_rng(3)
    dwi = _dwi(rng, rotated_affine())
    write_volume(tmp_path / "dwi.nii.gz", dwi.volume)
    bval, bvec = write_fsl_gradients(tmp_path / "dwi", dwi.gradients, dwi.volume.affine)
    node = sc.load_dwi_node(scene, tmp_path / "dwi.nii.gz", bval=bval, bvec=bvec)
    got = sc.dwi_from_node(node)
    np.testing.assert_allclose(got.gradients.bvecs, dwi.gradients.bvecs, atol=1e-5)

    # a 4D (vector) volume node needs a gradient file
    vec = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "dwi4d")
    sc.update_node_from_volume(vec, dwi.volume)
    with pytest.raises(MRHNetError, match="'dwi4d': has no gradients"):
        sc.dwi_from_node(vec)
    grads = sc.gradients_from_files(sc.node_affine(vec), bval=bval, bvec=bvec)
    np.testing.assert_allclose(sc.dwi_from_node(vec, grads).gradients.bvecs, dwi.gradients.bvecs, atol=1e-5)

    # a sequence of 3D volumes is stacked in order
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "dwiseq")
    for t in range(dwi.volume.data.shape[3]):
        frame = slicer.vtkMRMLScalarVolumeNode()
        sc.update_node_from_volume(frame, dwi.volume.with_data(dwi.volume.data[..., t]))
        seq.SetDataNodeAtValue(frame, str(t))
    stacked = sc.dwi_from_node(seq, dwi.gradients)
    np.testing.assert_array_equal(stacked.volume.data, dwi.volume.data)


def _phantom_nodes(scene, phantom, with_targets: bool = False) -> dict:
    nodes = {role: sc.add_volume_node(scene, phantom.images[role], f"brain1 {role}")
             for role in ("t2w", "mt_on", "mt_off")}
    for role, dwi in phantom.dwi.items():
        nodes[role] = sc.add_dwi_node(scene, dwi, f"brain1 {role}")
    nodes["t2w"].SetName("brain1")
    return nodes


def test_subject_from_nodes_matches_the_engine_subject(scene, phantom):
    nodes = _phantom_nodes(scene, phantom)
    label = sc.add_volume_node(scene, phantom.images["mask"], "mask", "vtkMRMLLabelMapVolumeNode")
    subject = sc.subject_from_nodes(**nodes, mask=label)
    assert subject.name == "brain1"
    for role in ("t2w", "mt_on", "mt_off"):
        np.testing.assert_array_equal(subject.images[role].data, phantom.images[role].data)
    for role in phantom.dwi:
        np.testing.assert_allclose(subject.dwi[role].gradients.bvecs, phantom.dwi[role].gradients.bvecs, atol=1e-6)
    np.testing.assert_array_equal(subject.mask, phantom.mask)
    protocol, expected = subject.protocol(), phantom.protocol()
    assert [c.role for c in protocol.channels] == [c.role for c in expected.channels]
    np.testing.assert_allclose(protocol.shell("dwi_b5000")[0], expected.shell("dwi_b5000")[0])

    # the same mask as a segmentation node
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain seg")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, seg)
    before = sc.scene_signature(scene)
    from_seg = sc.subject_from_nodes(**nodes, mask=seg)
    np.testing.assert_array_equal(from_seg.mask, phantom.mask)
    assert sc.scene_signature(scene) == before  # reading inputs never changes the scene


def test_inputs_are_written_off_the_gui_thread_one_at_a_time(scene, phantom, tmp_path, monkeypatch):
    """A step copies one node's voxels; a background thread writes the file, and while it does the steps
    report it instead of waiting (a GUI tick never blocks on the disk). The folder is the engine's subject;
    closing the steps early (cancel) ends the write in flight and starts no other."""
    import threading

    from MRHNetLib.data import io
    from MRHNetLib.data.subject import load_subject

    nodes = _phantom_nodes(scene, phantom)
    release, threads, real = threading.Event(), [], io.write_volume

    def slow_disk(path, volume, *args, **kwargs):
        threads.append(threading.current_thread().name)
        release.wait(10)
        return real(path, volume, *args, **kwargs)

    monkeypatch.setattr(io, "write_volume", slow_disk)
    steps = sc.write_subject_steps(tmp_path / "s", nodes)
    assert next(steps) == "prepared t2w"
    assert [next(steps) for _ in range(3)] == ["writing t2w"] * 3  # held by the disk, the GUI is not
    release.set()
    assert "prepared dwi_b5000" in list(steps)
    assert len(threads) == 5 and all(name.startswith("mrhnet-inputs") for name in threads), threads
    subject = load_subject(tmp_path / "s")
    for role in ("t2w", "mt_on", "mt_off"):
        np.testing.assert_array_equal(subject.images[role].data, phantom.images[role].data)
    for role, dwi in phantom.dwi.items():
        np.testing.assert_allclose(subject.dwi[role].volume.data, dwi.volume.data)

    release.clear()
    steps = sc.write_subject_steps(tmp_path / "c", nodes)
    assert next(steps) == "prepared t2w"
    release.set()
    steps.close()  # cancel: waits for the file in flight only
    assert not any(t.name.startswith("mrhnet-inputs") and t.is_alive() for t in threading.enumerate())
    assert sorted(f.name for f in (tmp_path / "c").iterdir()) == ["t2w.nii"]


def test_bad_selections_give_clear_errors(scene, phantom):
    nodes = _phantom_nodes(scene, phantom)
    with pytest.raises(MRHNetError, match="no input volumes selected"):
        sc.subject_from_nodes()
    with pytest.raises(MRHNetError, match="'brain1': is a 3D volume; a diffusion-weighted"):
        sc.subject_from_nodes(t2w=nodes["t2w"], dwi_b2000=nodes["t2w"])
    small = sc.add_volume_node(scene, Volume(np.ones((5, 5, 5), np.float32), np.eye(4)), "tiny")
    with pytest.raises(MRHNetError, match="tiny: shape"):
        sc.subject_from_nodes(t2w=nodes["t2w"], mt_on=small)
    zeros = sc.add_volume_node(scene, phantom.images["t2w"].with_data(np.zeros(phantom.shape, np.float32)), "blank")
    with pytest.raises(MRHNetError, match="'blank' \\(mt_off\\): image is all zeros"):
        sc.subject_from_nodes(t2w=nodes["t2w"], mt_off=zeros)
    empty = sc.add_volume_node(scene, phantom.images["t2w"].with_data(np.zeros(phantom.shape, np.float32)), "m0")
    with pytest.raises(MRHNetError, match="'m0': brain mask is empty"):
        sc.subject_from_nodes(t2w=nodes["t2w"], mask=empty)


def test_outputs_styled_shown_and_replaced(scene, phantom):
    nodes = _phantom_nodes(scene, phantom)
    source = nodes["t2w"]
    rng = np.random.default_rng(4)
    maps = {"af": phantom.images["t2w"].with_data(rng.random(phantom.shape).astype(np.float32) * phantom.mask),
            "af_std": phantom.images["t2w"].with_data(rng.random(phantom.shape).astype(np.float32) * 0.1)}
    out = sc.publish_outputs(scene, maps, source)
    assert {k: n.GetName() for k, n in out.items()} == {"af": "brain1 MRH-AF", "af_std": "brain1 MRH-AF-SD"}
    af = out["af"]
    np.testing.assert_allclose(sc.node_affine(af), sc.node_affine(source))
    assert af.GetImageData().GetDimensions() == source.GetImageData().GetDimensions()
    np.testing.assert_array_equal(sc.volume_from_node(af).data, maps["af"].data)
    display = af.GetDisplayNode()
    colours = scene.GetNodeByID(display.GetColorNodeID())
    assert colours.GetName() == "MRHNet AF" and colours.GetNumberOfColors() == 256
    rgba = [0.0] * 4
    colours.GetColor(255, rgba)
    assert rgba[1] > 0.9 and rgba[2] < 0.6  # AF ends in fluorescent yellow-green
    assert display.GetApplyThreshold() and 0 < display.GetLowerThreshold() < maps["af"].data[phantom.mask].max()
    assert not display.GetAutoWindowLevel()
    assert display.GetWindow() == pytest.approx(np.percentile(maps["af"].data[maps["af"].data > 0], 99.5), rel=1e-4)
    for i in range(3):
        view = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert view.GetForegroundVolumeID() == af.GetID() and view.GetBackgroundVolumeID() == source.GetID()
        assert view.GetForegroundOpacity() == pytest.approx(sc.DEFAULT_OPACITY)
    other = sc.publish_outputs(scene, {"nf": maps["af"], "mbp": maps["af"]}, source, show=False)
    assert scene.GetNodeByID(other["nf"].GetDisplayNode().GetColorNodeID()).GetName() == "MRHNet NF"
    assert scene.GetNodeByID(other["mbp"].GetDisplayNode().GetColorNodeID()).GetName() == "MRHNet MBP"

    # a second run replaces its own outputs: same nodes, new voxels, nothing added
    count = scene.GetNumberOfNodes()
    again = sc.publish_outputs(scene, {"af": maps["af"].with_data(maps["af"].data * 2)}, source)
    assert again["af"] is af and scene.GetNumberOfNodes() == count
    np.testing.assert_allclose(sc.volume_from_node(af).data, maps["af"].data * 2)
    assert sc.remove_outputs(scene, source) == 4 and sc.find_outputs(scene, source) == {}


def test_loss_plot_table_series_chart(scene):
    plot = sc.LossPlot(scene)
    for epoch, (tr, va) in enumerate([(1.0, 1.2), (0.5, 0.7), (0.25, 0.4)], 1):
        plot.append(epoch, train=tr, validation=va)
    np.testing.assert_allclose(plot.values("train"), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(plot.values("epoch"), [1, 2, 3])
    assert plot.chart.GetNumberOfPlotSeriesNodes() == 2
    series = scene.GetNodeByID(plot.chart.GetNthPlotSeriesNodeID(0))
    assert series.GetTableNodeID() == plot.table.GetID() and series.GetYColumnName() == "train"
    again = sc.LossPlot(scene)  # a new training run reuses the nodes, rows cleared
    assert again.table is plot.table and len(again.values("train")) == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2


def test_overlay_figure_colours_the_brain_only(phantom, tmp_path):
    from PIL import Image

    maps = {"af": phantom.images["af"]}
    from MRHNetLib.display import overlay_figure

    path = overlay_figure(phantom.images["t2w"], maps, tmp_path / "fig.png", title="brain1")
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    assert (spread > 60).sum() > 200  # coloured (overlay) pixels exist
    greyish = spread < 8
    assert greyish.sum() > 0.5 * greyish.size  # background, border and outside the brain stay grey/white


def test_gui_steps_give_a_worker_thread_the_gil_while_it_works():
    """Inside Slicer the GUI thread keeps the GIL between timer ticks (PythonQt), so a worker thread (the
    input writer, the subject reader) runs only while a tick lets it. Simulated here: between steps the
    caller sleeps 20 ms *holding the GIL* (a libc sleep called through ctypes.PyDLL). A pure-Python task of
    about 0.2 s must finish within a dozen or so ticks; without the waits it takes about four times as many."""
    import ctypes
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    try:
        hold_gil_sleep = ctypes.PyDLL(None).usleep  # PyDLL: the GIL is not released during the call
    except (AttributeError, OSError):
        pytest.skip("no usleep in this process (not a POSIX libc)")

    def work(n: int) -> int:
        total = 0
        for i in range(n):
            total += i % 7
        return total

    n = 1
    while True:  # size the task to about 0.2 s on this machine
        start = time.perf_counter()
        work(n)
        if time.perf_counter() - start > 0.05:
            break
        n *= 2
    n *= 4
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # a worker that asks for the GIL gets it for 1 ms slices between ticks
    with ThreadPoolExecutor(max_workers=1) as pool:
        steps = sc.until_done(pool.submit(work, n), "working")
        ticks = 0
        try:
            while ticks < 400:
                next(steps)
                ticks += 1
                hold_gil_sleep(20_000)  # the GUI thread idles in Qt, keeping the GIL
        except StopIteration as stop:
            assert stop.value == work(n)
        else:
            pytest.fail("the worker starved: not done after 400 ticks")
        finally:
            sys.setswitchinterval(switch)
    assert ticks < 25, ticks  # about 13 here; without the waits about 50
