"""Slicer scene <-> engine: volume and DWI nodes as :class:`Volume` / :class:`DWI`, output nodes, overlays.

One display code path for the Slicer module and the web app (trame-slicer uses the same MRML): every
function takes the nodes or the scene it works on, never ``slicer.mrmlScene``. ``slicer`` and ``vtk`` are
imported inside the functions, so :mod:`MRHNetLib` imports without Slicer.

Conventions:

* A volume node's voxel array is (k, j, i) in VTK/slicer.util terms; the engine's is (i, j, k). The
  node's IJK-to-RAS matrix is the engine's ``affine``.
* A DWI node keeps unit gradients and b-values per volume plus a measurement frame that maps gradient
  coordinates to RAS (Slicer converts a NRRD file's LPS frame on reading). Engine gradients are unit
  vectors in RAS world coordinates, so ``world = MF @ g`` and the IJK-to-RAS matrix does not enter.
* Output nodes are tagged ``MRHNet.Output`` (target key, e.g. ``af`` or ``af_std``) and ``MRHNet.Source``
  (the input node's ID): a new run on the same input updates them in place instead of adding nodes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import MRHNetError
from ..data.io import Gradients, Volume, read_dwi, read_fsl_gradients, read_gradient_table, suffix_of
from ..data.subject import DWI, Subject
from ..display import DEFAULT_OPACITY, colour_ramp, display_range, output_name, stain_of

OUTPUT_ATTRIBUTE = "MRHNet.Output"
SOURCE_ATTRIBUTE = "MRHNet.Source"
COLOR_ATTRIBUTE = "MRHNet.Colors"
PLOT_ATTRIBUTE = "MRHNet.LossPlot"
SUBJECT_ATTRIBUTE = "MRHNet.Subject"
SCALAR_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode")


# ---------------------------------------------------------------------------------------------
# Matrices and arrays


def _to_array(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _to_vtk(array: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def node_affine(node) -> np.ndarray:
    """The node's IJK-to-RAS matrix as a 4 x 4 array (the engine's voxel-to-RAS affine)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _to_array(m)


def _node_label(node) -> str:
    return f"'{node.GetName()}'" if node is not None else "node"


def node_array(node) -> np.ndarray:
    """A float32 copy of the node's voxels as (i, j, k) or (i, j, k, components)."""
    from vtk.util import numpy_support

    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise MRHNetError(f"{_node_label(node)}: volume node has no image data")
    dims = image.GetDimensions()
    comps = image.GetNumberOfScalarComponents()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    arr = flat.reshape(tuple(reversed(dims)) + ((comps,) if comps > 1 else ()))  # (k, j, i[, c])
    arr = np.transpose(arr, (2, 1, 0, 3) if comps > 1 else (2, 1, 0))
    return np.array(arr, dtype=np.float32, order="C")  # always a copy: a worker thread may write it out


def _set_image(node, data: np.ndarray, affine: np.ndarray) -> None:
    """Replace the node's voxels (data (i, j, k[, c])) and IJK-to-RAS matrix."""
    import vtk
    from vtk.util import numpy_support

    data = np.asarray(data)
    comps = data.shape[3] if data.ndim == 4 else 1
    kji = np.ascontiguousarray(np.transpose(data, (2, 1, 0, 3) if data.ndim == 4 else (2, 1, 0)))
    image = vtk.vtkImageData()
    image.SetDimensions(int(data.shape[0]), int(data.shape[1]), int(data.shape[2]))
    scalars = numpy_support.numpy_to_vtk(kji.reshape(-1, comps) if comps > 1 else kji.reshape(-1), deep=True)
    image.GetPointData().SetScalars(scalars)
    node.SetIJKToRASMatrix(_to_vtk(np.asarray(affine, dtype=float)))
    node.SetAndObserveImageData(image)


def volume_from_node(node) -> Volume:
    """A scalar (or labelmap) volume node as a :class:`Volume` (float32, (i, j, k), IJK-to-RAS affine)."""
    if node is None:
        raise MRHNetError("no volume selected")
    data = node_array(node)
    if data.ndim != 3:
        raise MRHNetError(f"{_node_label(node)}: has {data.shape[3]} components per voxel; a scalar volume is needed")
    bad = ~np.isfinite(data)
    if bad.any():
        data = np.where(bad, 0.0, data).astype(np.float32)
    return Volume(data, node_affine(node), node.GetName() or "")


def update_node_from_volume(node, volume: Volume):
    """Put ``volume``'s voxels and geometry into an existing volume node; returns the node."""
    _set_image(node, np.asarray(volume.data, dtype=np.float32), volume.affine)
    return node


def add_volume_node(scene, volume: Volume, name: str | None = None,
                    class_name: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node (with a default display node) holding ``volume``."""
    node = scene.AddNewNodeByClass(class_name, name or volume.name or "volume")
    data = volume.data.astype(np.int16) if class_name == "vtkMRMLLabelMapVolumeNode" else volume.data
    _set_image(node, np.asarray(data), volume.affine)
    node.CreateDefaultDisplayNodes()
    return node


def load_volume_node(scene, path: str | os.PathLike, name: str | None = None, labelmap: bool = False):
    """Read a NIfTI / NRRD file into a new scalar (or labelmap) node through a storage node."""
    path = Path(path)
    if not path.is_file():
        raise MRHNetError(f"{path}: file does not exist")
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
                                   name or path.name.split(".")[0])
    return _read_into(scene, node, "vtkMRMLVolumeArchetypeStorageNode", path, "cannot be read as a volume")


def _read_into(scene, node, storage_class: str, path: Path, problem: str, valid=lambda node: True):
    """Fill ``node`` from ``path`` through a storage node of ``storage_class``; on failure remove both
    and raise ``MRHNetError("<path>: <problem>")``, leaving the scene as it was."""
    storage = scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or not valid(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise MRHNetError(f"{path}: {problem}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


# ---------------------------------------------------------------------------------------------
# Diffusion-weighted volumes


def node_gradients(node) -> Gradients:
    """Gradients of a DWI node as engine :class:`Gradients` (unit RAS world vectors, b-values)."""
    import vtk

    grads, bvals = node.GetDiffusionGradients(), node.GetBValues()
    n = node.GetNumberOfGradients()
    if n == 0 or grads is None or bvals is None:
        raise MRHNetError(f"{_node_label(node)}: DWI node has no gradients")
    g = np.array([grads.GetTuple3(i) for i in range(n)], dtype=float)
    b = np.array([bvals.GetValue(i) for i in range(n)], dtype=float)
    mf = vtk.vtkMatrix4x4()
    node.GetMeasurementFrameMatrix(mf)
    return Gradients(b, g @ _to_array(mf)[:3, :3].T)


def set_node_gradients(node, gradients: Gradients) -> None:
    """Store engine gradients in a DWI node (identity measurement frame: the vectors are RAS already)."""
    import vtk

    g = vtk.vtkDoubleArray()
    g.SetNumberOfComponents(3)
    b = vtk.vtkDoubleArray()
    for vec, bval in zip(gradients.bvecs, gradients.bvals):
        norm = float(np.linalg.norm(vec))
        g.InsertNextTuple3(*((vec / norm) if norm > 1e-6 else (0.0, 0.0, 0.0)))
        b.InsertNextValue(float(bval))
    node.SetMeasurementFrameMatrix(_to_vtk(np.eye(4)))
    node.SetDiffusionGradients(g)
    node.SetBValues(b)


def gradients_from_files(affine: np.ndarray, bval: str | os.PathLike | None = None,
                         bvec: str | os.PathLike | None = None, table: str | os.PathLike | None = None) -> Gradients:
    """Gradients for a 4D volume or sequence from FSL ``bval``/``bvec`` or a ``gx gy gz b`` ``table``."""
    if table is not None:
        return read_gradient_table(table, affine)
    if bval is None or bvec is None:
        raise MRHNetError("a 4D volume needs a gradient file: both .bval and .bvec, or a 'gx gy gz b' table")
    return read_fsl_gradients(bval, bvec, affine)


def _sequence_volume(node) -> Volume:
    """A sequence node of 3D scalar volumes stacked as one 4D :class:`Volume`."""
    n = node.GetNumberOfDataNodes()
    if n == 0:
        raise MRHNetError(f"{_node_label(node)}: sequence is empty")
    frames = [volume_from_node(node.GetNthDataNode(i)) for i in range(n)]
    first = frames[0]
    for i, f in enumerate(frames[1:], 1):
        if f.shape3 != first.shape3 or not np.allclose(f.affine, first.affine, atol=1e-4):
            raise MRHNetError(f"{_node_label(node)}: frame {i} has a different grid from frame 0")
    return Volume(np.stack([f.data for f in frames], axis=3), first.affine, node.GetName())


def dwi_from_node(node, gradients: Gradients | None = None) -> DWI:
    """A DWI node, a vector (4D) volume node or a sequence node as an engine :class:`DWI`.

    DWI nodes carry their own gradients; the others need ``gradients`` (see :func:`gradients_from_files`)."""
    if node is None:
        raise MRHNetError("no diffusion-weighted volume selected")
    cls = node.GetClassName()
    if cls == "vtkMRMLSequenceNode":
        volume = _sequence_volume(node)
    else:
        data = node_array(node)
        if data.ndim != 4:
            raise MRHNetError(f"{_node_label(node)}: is a 3D volume; a diffusion-weighted (4D) volume is needed")
        volume = Volume(data, node_affine(node), node.GetName())
    if gradients is None:
        if cls != "vtkMRMLDiffusionWeightedVolumeNode":
            raise MRHNetError(f"{_node_label(node)}: has no gradients; give a .bval/.bvec or gradient table file")
        gradients = node_gradients(node)
    if len(gradients) != volume.data.shape[3]:
        raise MRHNetError(f"{_node_label(node)}: has {volume.data.shape[3]} volumes but {len(gradients)} gradients")
    return DWI(volume, gradients)


def add_dwi_node(scene, dwi: DWI, name: str | None = None):
    """A new ``vtkMRMLDiffusionWeightedVolumeNode`` holding ``dwi``."""
    node = scene.AddNewNodeByClass("vtkMRMLDiffusionWeightedVolumeNode", name or dwi.volume.name or "dwi")
    _set_image(node, dwi.volume.data.astype(np.float32), dwi.volume.affine)
    set_node_gradients(node, dwi.gradients)
    node.CreateDefaultDisplayNodes()
    return node


def load_dwi_node(scene, path: str | os.PathLike, bval: str | os.PathLike | None = None,
                  bvec: str | os.PathLike | None = None, table: str | os.PathLike | None = None,
                  name: str | None = None):
    """Read a DWI file into a new DWI node.

    A Slicer DWI NRRD without separate gradient files goes through ``vtkMRMLNRRDStorageNode`` (which
    keeps its measurement frame); other files (4D NIfTI with .bval/.bvec or a table) are read by the engine."""
    path = Path(path)
    if not path.is_file():
        raise MRHNetError(f"{path}: file does not exist")
    if suffix_of(path) in (".nrrd", ".nhdr") and bval is None and bvec is None and table is None:
        node = scene.AddNewNodeByClass("vtkMRMLDiffusionWeightedVolumeNode", name or path.name.split(".")[0])
        return _read_into(scene, node, "vtkMRMLNRRDStorageNode", path,
                          "cannot be read as a diffusion-weighted NRRD (DWMRI keys missing?)",
                          valid=lambda n: n.GetNumberOfGradients() > 0)
    volume, grads = read_dwi(path, bval, bvec, table)
    return add_dwi_node(scene, DWI(volume, grads), name or path.name.split(".")[0])


# ---------------------------------------------------------------------------------------------
# Masks and subjects


def mask_from_node(node, reference: Volume) -> Volume:
    """A brain mask (0/1 on ``reference``'s grid) from a scalar, labelmap or segmentation node."""
    if node.IsA("vtkMRMLSegmentationNode"):
        import slicer
        from vtk.util import numpy_support

        if node.GetSegmentation().GetNumberOfSegments() == 0:
            raise MRHNetError(f"{_node_label(node)}: segmentation has no segments")
        geometry = slicer.vtkOrientedImageData()
        geometry.SetDimensions(*reference.shape3)
        geometry.SetImageToWorldMatrix(_to_vtk(reference.affine))
        merged = slicer.vtkOrientedImageData()
        if not node.GenerateMergedLabelmapForAllSegments(merged, 0, geometry):  # 0: reference extent
            raise MRHNetError(f"{_node_label(node)}: cannot convert the segmentation to a labelmap")
        dims = merged.GetDimensions()
        kji = numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(tuple(reversed(dims)))
        data = (np.transpose(kji, (2, 1, 0)) > 0).astype(np.float32)
        if data.shape != reference.shape3:
            raise MRHNetError(f"{_node_label(node)}: segmentation does not cover the reference grid")
        return reference.with_data(data, node.GetName())
    volume = volume_from_node(node)
    return volume.with_data((volume.data > 0).astype(np.float32), node.GetName())


def subject_from_nodes(*, t2w=None, mt_on=None, mt_off=None, dwi_b2000=None, dwi_b5000=None, fa=None,
                       mask=None, gradients: dict[str, Gradients] | None = None,
                       name: str | None = None, resample: bool = False) -> Subject:
    """An engine :class:`Subject` from scene nodes (any may be None; the engine says what a model lacks).

    ``dwi_*``: DWI nodes, or vector volume / sequence nodes with their ``gradients[role]``.
    ``mask``: scalar, labelmap or segmentation node. Nothing in the scene is modified."""
    gradients = gradients or {}
    nodes = {"t2w": t2w, "mt_on": mt_on, "mt_off": mt_off, "fa": fa}
    dwis = {"dwi_b2000": dwi_b2000, "dwi_b5000": dwi_b5000}
    chosen = [n for n in list(nodes.values()) + list(dwis.values()) + [mask] if n is not None]
    if not chosen:
        raise MRHNetError("no input volumes selected")
    transforms = {transform_id(n) for n in chosen}
    if len(transforms) > 1:
        raise MRHNetError("the input volumes are under different transforms; harden the transforms first")
    subject = Subject(name=name or next(n.GetName() for n in chosen if n is not None))
    for role, node in nodes.items():
        if node is not None:
            vol = volume_from_node(node)
            if not np.any(vol.data):
                raise MRHNetError(f"{_node_label(node)} ({role}): image is all zeros")
            subject.images[role] = vol
    for role, node in dwis.items():
        if node is not None:
            subject.dwi[role] = dwi_from_node(node, gradients.get(role))
    if mask is not None:
        subject.images["mask"] = mask_from_node(mask, subject.reference)
        if not np.any(subject.images["mask"].data):
            raise MRHNetError(f"{_node_label(mask)}: brain mask is empty")
    return subject.check_grid(resample=resample)


def transform_id(node) -> str | None:
    """The node's parent transform; None for nodes that cannot be transformed (a sequence node)."""
    get = getattr(node, "GetTransformNodeID", None)
    return get() if get is not None else None


def _frames(node) -> tuple[tuple[int, int, int], int, np.ndarray]:
    """(shape, volumes per voxel, IJK-to-RAS) of a scalar, 4D, DWI or sequence node, without its voxels."""
    if node.IsA("vtkMRMLSequenceNode"):
        if node.GetNumberOfDataNodes() == 0:
            raise MRHNetError(f"{_node_label(node)}: sequence is empty")
        shape, _, affine = _frames(node.GetNthDataNode(0))
        return shape, node.GetNumberOfDataNodes(), affine
    image = node.GetImageData()
    if image is None:
        raise MRHNetError(f"{_node_label(node)}: volume node has no image data")
    return tuple(image.GetDimensions()), image.GetNumberOfScalarComponents(), node_affine(node)


def dwi_gradients(node, path: str | os.PathLike | None) -> Gradients:
    """A diffusion input's gradients: a DWI node's own, else those of the file chosen for it."""
    if node.IsA("vtkMRMLDiffusionWeightedVolumeNode") and not path:
        return node_gradients(node)
    if not path:
        raise MRHNetError(f"{_node_label(node)}: has no gradients; give a .bval/.bvec or gradient table file")
    return gradients_from_path(path, _frames(node)[2])


def header_subject(nodes: dict[str, Any], gradients: dict[str, Any] | None = None, name: str | None = None) -> Subject:
    """A subject with the roles, grids and gradients of the input nodes but no voxels (read-only
    zero-stride arrays): what every model's protocol check needs, at once and without copying a volume."""
    from ..data.protocol import DWI_ROLES

    gradients = gradients or {}
    chosen = {role: node for role, node in nodes.items() if node is not None}
    if not chosen:
        raise MRHNetError("no input volumes selected")
    subject = Subject(name=name or next(iter(chosen.values())).GetName())
    for role, node in chosen.items():
        shape, count, affine = _frames(node)
        if role in DWI_ROLES:
            grads = dwi_gradients(node, gradients.get(role))
            if len(grads) != count:
                raise MRHNetError(f"{_node_label(node)}: has {count} volumes but {len(grads)} gradients")
            subject.dwi[role] = DWI(Volume(np.broadcast_to(np.float32(1), shape + (count,)), affine, node.GetName()),
                                    grads)
        elif count != 1:
            raise MRHNetError(f"{_node_label(node)} ({role}): has {count} components per voxel; a scalar volume "
                              "is needed")
        else:
            subject.images[role] = Volume(np.broadcast_to(np.float32(1), shape), affine, node.GetName())
    return subject.check_grid()


WORKER_SLICE_S = 0.02  # how long each GUI tick waits for a worker thread (giving it the GIL)


def until_done(future, step: Any, wait_s: float = WORKER_SLICE_S) -> Iterator[Any]:
    """Yield ``step`` (one per GUI tick) until the worker's ``future`` is done, then return its result (or
    raise its error): GUI steps wait for file I/O on a worker thread without blocking a tick for long.

    Each step first waits up to ``wait_s`` for the worker. Inside Slicer the GUI thread keeps the GIL while
    Qt is idle (PythonQt), so a worker thread runs almost only while a tick waits for it."""
    from concurrent.futures import wait

    while not future.done():
        if wait([future], timeout=wait_s).done:
            break
        yield step
    return future.result()


def write_subject_steps(folder: str | os.PathLike, nodes: dict[str, Any], gradients: dict[str, Any] | None = None,
                        mask=None, targets: dict[str, Any] | None = None) -> Iterator[str]:
    """Write input nodes as a subject folder (``<role>.nii``, DWI shells with ``.bval``/``.bvec``, the mask,
    histology ``targets``) in steps that a GUI timer runs one per tick. A step only copies one node's voxels
    (that must happen on the GUI thread); a background thread writes the file (seconds for a whole-brain DWI
    shell), and while it does the steps yield without waiting, so no tick waits for the disk. One copy is
    in flight at a time. Closing the steps early (cancel) waits only for the file being written."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.io import write_fsl_gradients, write_volume
    from ..data.protocol import DWI_ROLES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gradients = gradients or {}
    chosen = {role: node for role, node in nodes.items() if node is not None}
    if len({transform_id(n) for n in list(chosen.values()) + [mask] if n is not None}) > 1:
        raise MRHNetError("the input volumes are under different transforms; harden the transforms first")
    reference = header_subject(chosen, gradients).reference
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrhnet-inputs")
    writing: list[tuple[Any, str]] = []  # (future, role) of the file being written: at most one

    def write(role: str, volume: Volume) -> Iterator[str]:
        yield from written()
        writing.append((writer.submit(write_volume, folder / f"{role}.nii", volume), role))
        yield f"prepared {role}"

    def written() -> Iterator[str]:
        while writing:
            future, role = writing.pop()
            yield from until_done(future, f"writing {role}")  # a write error ends the job here

    try:
        for role, node in chosen.items():
            if role in DWI_ROLES:
                dwi = dwi_from_node(node, dwi_gradients(node, gradients.get(role)))
                write_fsl_gradients(folder / role, dwi.gradients, dwi.volume.affine)
                yield from write(role, dwi.volume)
            else:
                volume = volume_from_node(node)
                if not np.any(volume.data):
                    raise MRHNetError(f"{_node_label(node)} ({role}): image is all zeros")
                yield from write(role, volume)
        for role, node in (targets or {}).items():
            yield from write(role, volume_from_node(node))
        if mask is not None:
            m = mask_from_node(mask, reference)
            if not np.any(m.data):
                raise MRHNetError(f"{_node_label(mask)}: brain mask is empty")
            yield from write("mask", m)
        yield from written()
    finally:
        writer.shutdown(wait=True, cancel_futures=True)


def source_node_of(**inputs):
    """The node that names the outputs and gives their geometry: T2w if given, else the first input."""
    for role in ("t2w", "mt_off", "mt_on", "dwi_b2000", "dwi_b5000", "fa"):
        if inputs.get(role) is not None:
            return inputs[role]
    raise MRHNetError("no input volumes selected")


# ---------------------------------------------------------------------------------------------
# Colour tables and display


def color_node(scene, key: str):
    """The scene's colour table for an output key, created once (tagged ``MRHNet.Colors``)."""
    stain = stain_of(key)
    name = f"MRHNet {stain.label}"
    for node in _nodes(scene, "vtkMRMLColorTableNode"):
        if node.GetAttribute(COLOR_ATTRIBUTE) == stain.label:
            return node
    node = scene.CreateNodeByClass("vtkMRMLColorTableNode")
    node.SetName(name)
    node.SetTypeToUser()
    node.SetAttribute(COLOR_ATTRIBUTE, stain.label)
    ramp = colour_ramp(stain)
    node.SetNumberOfColors(len(ramp))
    for i, (r, g, b) in enumerate(ramp):
        node.SetColor(i, f"{stain.label} {i}", float(r), float(g), float(b), 1.0)
    scene.AddNode(node)
    node.UnRegister(None)  # the scene holds the reference
    return node


def style_output(scene, node, key: str) -> Any:
    """Colour table, window/level and transparent zero (threshold) for an output node; returns its display node."""
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_node(scene, key).GetID())
    low, high = display_range(node_array(node))
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(low, high)
    display.SetAutoThreshold(False)
    display.SetLowerThreshold(max(high * 1e-3, 1e-12))
    display.SetUpperThreshold(float(np.finfo(np.float32).max))
    display.SetApplyThreshold(True)
    return display


def show_overlay(scene, foreground, background=None, opacity: float = DEFAULT_OPACITY) -> int:
    """Show ``foreground`` over ``background`` in every slice view of the scene; returns the view count.

    Works on the slice composite nodes directly, so it serves Slicer (same as
    ``slicer.util.setSliceViewerLayers``) and trame-slicer alike."""
    views = list(_nodes(scene, "vtkMRMLSliceCompositeNode"))
    for view in views:
        if background is not None:
            view.SetBackgroundVolumeID(background.GetID())
        view.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        view.SetForegroundOpacity(float(opacity))
    return len(views)


# ---------------------------------------------------------------------------------------------
# Output nodes


def _source_tag(source) -> str:
    """What output nodes record as their source: the input node's ID, or ``name:<subject name>``."""
    return f"name:{source}" if isinstance(source, str) else source.GetID()


def output_nodes(scene, source=None) -> list[Any]:
    """This module's output nodes (of one source: an input node or a subject name; or all)."""
    return [node for node in _nodes(scene, "vtkMRMLScalarVolumeNode") if node.GetAttribute(OUTPUT_ATTRIBUTE)
            and (source is None or node.GetAttribute(SOURCE_ATTRIBUTE) == _source_tag(source))]


def find_outputs(scene, source) -> dict[str, Any]:
    """The output nodes of one source by key (``af``, ``af_std`` ...)."""
    return {node.GetAttribute(OUTPUT_ATTRIBUTE): node for node in output_nodes(scene, source)}


def publish_outputs(scene, results: dict[str, Volume], source, *, show: bool = True,
                    opacity: float = DEFAULT_OPACITY, shown_key: str | None = None) -> dict[str, Any]:
    """Create or update one scalar volume per result, styled, and (``show``) one of them as overlay.

    ``results``: key (``af``, ``af_std`` ...) -> Volume. ``source``: the input volume node (outputs get
    its geometry, parent transform and name, and it becomes the overlay's background) or, without a
    node, a subject name. Nodes from an earlier run on the same source are updated in place (same
    node and ID). Call from the thread that owns the scene, only after the work succeeded."""
    is_node = not isinstance(source, str)
    name = source.GetName() if is_node else source
    if is_node:
        ref_affine = node_affine(source)
        for key, vol in results.items():
            if not np.allclose(vol.affine, ref_affine, atol=1e-4):
                raise MRHNetError(f"result '{key}' is not on the grid of {_node_label(source)}")
    existing = find_outputs(scene, source)
    out: dict[str, Any] = {}
    for key, vol in results.items():
        node = existing.get(key)
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", output_name(name, key))
            node.SetAttribute(OUTPUT_ATTRIBUTE, key)
            node.SetAttribute(SOURCE_ATTRIBUTE, _source_tag(source))
        else:
            node.SetName(output_name(name, key))
        affine = node_affine(source) if is_node else vol.affine
        update_node_from_volume(node, Volume(np.asarray(vol.data, dtype=np.float32), affine, node.GetName()))
        if is_node:
            node.SetAndObserveTransformNodeID(transform_id(source))
        style_output(scene, node, key)
        out[key] = node
    if show and out:
        key = shown_key if shown_key in out else next((k for k in out if not k.endswith("_std")), next(iter(out)))
        show_overlay(scene, out[key], source if is_node else None, opacity)
    return out


def show_subject(scene, subject: Subject, role: str | None = None):
    """Put one of a subject's images (T2w by default: its reference) in the scene as a grey volume node,
    reusing the node shown earlier for the same subject name; returns the node (a background)."""
    volume = subject.get(role) if role else subject.reference
    if volume.data.ndim == 4:
        volume = volume.with_data(volume.data[..., 0])
    for node in _nodes(scene, "vtkMRMLScalarVolumeNode"):
        if node.GetAttribute(SUBJECT_ATTRIBUTE) == subject.name:
            update_node_from_volume(node, volume)
            return node
    node = add_volume_node(scene, volume, subject.name)
    node.SetAttribute(SUBJECT_ATTRIBUTE, subject.name)
    return node


def remove_node(scene, node) -> None:
    """Remove a volume node with its display and storage nodes."""
    if node is None or node.GetScene() is None:
        return
    for i in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(i)
        if display is not None:
            scene.RemoveNode(display)
    storage = node.GetStorageNode()
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(node)


def remove_outputs(scene, source=None) -> int:
    """Remove this module's output nodes (of one source, or all); returns how many."""
    nodes = output_nodes(scene, source)
    for node in nodes:
        remove_node(scene, node)
    return len(nodes)


def scene_signature(scene) -> list[tuple[str, str, str]]:
    """(ID, class, name) of every node: what a failed or cancelled run must leave as it was."""
    return [(n.GetID(), n.GetClassName(), n.GetName() or "") for n in _nodes(scene, "vtkMRMLNode")]


def _nodes(scene, class_name: str) -> Iterable[Any]:
    for i in range(scene.GetNumberOfNodesByClass(class_name)):
        yield scene.GetNthNodeByClass(i, class_name)


# ---------------------------------------------------------------------------------------------
# Training loss plot


class LossPlot:
    """A live loss curve: one table node (epoch + one column per curve), plot series and a chart node.

    ``LossPlot(scene)`` reuses the scene's MRHNet loss plot if there is one (its rows are replaced by
    ``rows``: none, or the rows of a plot whose scene was cleared)."""

    def __init__(self, scene, name: str = "MRHNet training loss", curves: tuple[str, ...] = ("train", "validation"),
                 rows: Iterable[tuple[float, ...]] = ()):
        self.scene, self.curves = scene, curves
        self.table = next((n for n in _nodes(scene, "vtkMRMLTableNode") if n.GetAttribute(PLOT_ATTRIBUTE)), None)
        if self.table is None:
            self.table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
            self.table.SetAttribute(PLOT_ATTRIBUTE, "table")
        self.chart = next((n for n in _nodes(scene, "vtkMRMLPlotChartNode") if n.GetAttribute(PLOT_ATTRIBUTE)), None)
        if self.chart is None:
            self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
            self.chart.SetAttribute(PLOT_ATTRIBUTE, "chart")
            self.chart.SetTitle(name)
            self.chart.SetXAxisTitle("epoch")
            self.chart.SetYAxisTitle("loss (MSE)")
        self.rows: list[tuple[float, ...]] = [tuple(r) for r in rows]
        self._write()
        self.series = {}
        colours = {"train": (0.1, 0.4, 0.9), "validation": (0.9, 0.4, 0.1)}
        for curve in curves:
            series = next((n for n in _nodes(scene, "vtkMRMLPlotSeriesNode")
                           if n.GetAttribute(PLOT_ATTRIBUTE) == curve), None)
            if series is None:
                series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {curve}")
                series.SetAttribute(PLOT_ATTRIBUTE, curve)
            series.SetAndObserveTableNodeID(self.table.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(curve)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetColor(*colours.get(curve, (0.3, 0.3, 0.3)))
            if not self.chart.HasPlotSeriesNodeID(series.GetID()):
                self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series[curve] = series

    def append(self, epoch: float, **values: float) -> None:
        """Add one row (missing curves get NaN) and refresh the table (the chart follows)."""
        self.rows.append((float(epoch),) + tuple(float(values.get(c, np.nan)) for c in self.curves))
        self._write()

    def set_history(self, history: list[dict[str, Any]]) -> None:
        """Replace the rows with a training log (``epoch``, ``train_loss``, ``val_loss`` per epoch)."""
        self.rows = [(float(h["epoch"]),) + tuple(
            float(h[f"{'val' if c == 'validation' else c}_loss"]) if h.get(f"{'val' if c == 'validation' else c}_loss")
            is not None else np.nan for c in self.curves) for h in history]
        self._write()

    def values(self, curve: str) -> np.ndarray:
        """A curve's values as stored in the table node."""
        table = self.table.GetTable()
        column = table.GetColumnByName(curve)
        return np.array([column.GetValue(i) for i in range(table.GetNumberOfRows())], dtype=float)

    def _write(self) -> None:
        import vtk

        table = vtk.vtkTable()
        for c, col_name in enumerate(("epoch",) + tuple(self.curves)):
            arr = vtk.vtkDoubleArray()
            arr.SetName(col_name)
            for row in self.rows:
                arr.InsertNextValue(row[c])
            table.AddColumn(arr)
        self.table.SetAndObserveTable(table)
        self.table.Modified()


# ---------------------------------------------------------------------------------------------
# Subjects as nodes, gradient files


def add_subject_nodes(scene, subject: Subject, name: str | None = None) -> dict[str, Any]:
    """Every image of an engine subject as scene nodes (DWI shells as DWI nodes, the mask as a labelmap),
    named ``<name> <role>`` with the T2w named just ``<name>``; returns role -> node."""
    name = name or subject.name
    return {role: add_role_node(scene, role, image, name)
            for role, image in list(subject.images.items()) + list(subject.dwi.items())}


def add_role_node(scene, role: str, image: Volume | DWI, name: str):
    """One image of a subject as a new node: a DWI node for a shell, a labelmap for the mask, else a scalar
    volume; named ``<name>`` for the T2w and ``<name> <role>`` for the others."""
    label = name if role == "t2w" else f"{name} {role}"
    if isinstance(image, DWI):
        return add_dwi_node(scene, image, label)
    return add_volume_node(scene, image, label,
                           "vtkMRMLLabelMapVolumeNode" if role == "mask" else "vtkMRMLScalarVolumeNode")


def gradients_from_path(path: str | os.PathLike, affine: np.ndarray) -> Gradients:
    """Gradients from one file chosen in a GUI: a ``.bval`` or ``.bvec`` (its sibling is found) or a
    ``gx gy gz b`` table."""
    path = Path(path)
    if path.suffix in (".bval", ".bvec"):
        return gradients_from_files(affine, bval=path.with_suffix(".bval"), bvec=path.with_suffix(".bvec"))
    return gradients_from_files(affine, table=path)
