"""Import the original authors' MATLAB MRH-Net networks (``DAGNetwork`` in a .mat file) and read their
``LinearModel`` baselines.

The .mat files hold MATLAB objects (MCOS) that :func:`scipy.io.loadmat` cannot open; they are read with
``mat-io`` (``matio``). A ``DAGNetwork`` holds ``Layers`` (a heterogeneous object array) and
``Connections`` (a source -> destination table, ``name`` or ``name/in1``). :func:`read_dag_network` reads
both as they are (each layer's MATLAB class, name and saved fields); :func:`match_mrhnet` walks the
connection table from the input layer and checks that the graph is an MRH-Net of some depth::

    input (P x P x C) -> conv -> relu -> conv -> relu(=a) -> conv -> relu -> conv -> add(., a)
    [ -> relu(=r) -> conv -> relu -> conv -> add(., r) ]  x depth
    -> relu -> conv (64) -> relu -> conv (1) -> regression output

Every convolution 3 x 3, stride 1, dilation 1, 'same' zero padding, with bias; the first layer or
connection that does not fit is named in an :class:`MRHNetError`. Layer names are not relied on (they
are recorded as provenance). Weights are converted from MATLAB's height x width x in x out to PyTorch's
out x in x height x width; MATLAB's convolution layer is a cross-correlation like PyTorch's, so no kernel
is flipped. The patch's first axis (MATLAB's height) is the first in-plane array axis of the original
coronal slices (left-right), the second the inferior-superior axis.
"""
from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import MRHNetError, Progress, ProgressCallback, as_progress
from ..files import check_writable_folder, sha256_file
from ..data.bruker import DEFAULT_MT_ORDER
from ..data.protocol import Normalisation, Protocol

ORIGINAL_VOXEL_MM = 0.0625
ORIGINAL_TARGET_SCALE = 255.0
CITATION = ("Liang Z, Lee CH, Arefin TM, Dong Z, Walczak P, Lai SH, et al. Virtual mouse brain histology "
            "from multi-contrast MRI via deep learning. eLife 2022;11:e72331. doi:10.7554/eLife.72331")
LICENSE = "MIT License, Copyright (c) 2021 liangzifei (github.com/liangzifei/MRH-net)"
TRAINED_BY = "trained by the original authors (Liang et al. 2022) on real ex vivo mouse MRI"

LAYER_CLASSES = {
    "nnet.cnn.layer.ImageInputLayer": "input",
    "nnet.cnn.layer.Convolution2DLayer": "conv",
    "nnet.cnn.layer.ReLULayer": "relu",
    "nnet.cnn.layer.AdditionLayer": "add",
    "nnet.cnn.layer.RegressionOutputLayer": "output",
}
KIND_TEXT = {"input": "image input layer", "conv": "3x3 convolution", "relu": "ReLU", "add": "addition",
             "output": "regression output layer"}
CONV_FIELDS = {"Version", "Name", "FilterSize", "NumChannels", "NumFilters", "Stride", "DilationFactor",
               "PaddingMode", "PaddingSize", "Weights", "Bias"}
NETWORK_CLASSES = ("DAGNetwork", "SeriesNetwork", "dlnetwork")


# --- reading ---------------------------------------------------------------------------------
@dataclass
class MatLayer:
    """One layer as saved: name, MATLAB class ('' when the file does not say), kind, saved fields."""

    name: str
    cls: str
    kind: str | None
    props: dict[str, Any]

    def describe(self) -> str:
        return f"'{self.name}' ({self.cls or 'class not recorded'})"

    def conv_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights h x w x in x out float32, bias (out,) float32) in MATLAB order."""
        fh, fw = (int(v) for v in np.ravel(self.props["FilterSize"]))
        c_in, c_out = int(_num(self.props["NumChannels"])), int(_num(self.props["NumFilters"]))
        w = np.asarray(_learnable(self.props["Weights"]), dtype=np.float32)
        b = np.asarray(_learnable(self.props["Bias"]), dtype=np.float32)
        if w.size != fh * fw * c_in * c_out or b.size != c_out:
            raise MRHNetError(f"convolution '{self.name}': weights {w.shape} / bias {b.shape} do not fit "
                              f"{fh}x{fw} filters, {c_in} channels, {c_out} filters")
        # MATLAB drops trailing singleton dimensions (Conv5: 3x3x64); column-major reshape restores them
        return w.reshape((fh, fw, c_in, c_out), order="F"), b.reshape(c_out, order="F")


@dataclass
class DAGFile:
    """A MATLAB ``DAGNetwork`` read from a .mat file, uninterpreted beyond each layer's kind."""

    path: Path
    layers: list[MatLayer]
    connections: list[tuple[str, str]]
    training: dict[str, Any] = field(default_factory=dict)
    variable: str = "net"

    def layer(self, name: str) -> MatLayer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(name)


def _num(v: Any) -> float:
    return float(np.ravel(np.asarray(v, dtype=float))[0])


def _str(v: Any) -> str:
    if isinstance(v, np.ndarray):
        if v.size == 0:
            return ""
        v = v.ravel()[0]
        if isinstance(v, np.ndarray):
            return _str(v)
    return str(v)


def _learnable(v: Any) -> np.ndarray:
    """The ``Value`` of a saved learnable parameter struct (or the array itself)."""
    if isinstance(v, np.ndarray) and v.dtype.names and "Value" in v.dtype.names:
        return v.ravel()[0]["Value"]
    return np.asarray(v)


def _struct_fields(s: Any) -> dict[str, Any]:
    if isinstance(s, np.ndarray) and s.dtype.names:
        rec = s.ravel()[0]
        return {n: rec[n] for n in s.dtype.names}
    if isinstance(s, dict):
        return dict(s)
    return {}


def _load_mat(path: Path) -> tuple[dict[str, Any], dict[int, str]]:
    """Variables of a MAT-file and, for MAT v5 files, the MATLAB class of every object (by ``id``).

    ``matio.load_from_mat`` labels the elements of a heterogeneous object array (such as ``Layers``)
    with the array's base class; the per-object classes are in the file's subsystem, read here with
    mat-io's own v5 reader. Other versions fall back to ``load_from_mat`` without per-object classes."""
    from matio import load_from_mat

    try:
        from matio.utils.matheaders import MAT_FILE_VERSIONS, read_mat_header
        from matio.v5.matreader5 import MatFile5Reader, read_subsystem

        offset, ver, byte_order = read_mat_header(str(path))
        if ver == MAT_FILE_VERSIONS.V5:
            with open(path, "rb") as f:
                sub = read_subsystem(f, offset, byte_order, raw_data=False, add_table_attrs=False)
                variables = MatFile5Reader(f, byte_order=byte_order, subsystem=sub).get_variables(None)
            classes: dict[int, str] = {}
            if sub is not None:
                for oid, obj in sub.mcos_object_cache.items():
                    classes[id(obj)] = sub.get_classname(sub.get_object_metadata(oid)[0])
            return variables, classes
    except (ImportError, AttributeError, TypeError):  # a mat-io whose internals moved: classes unknown
        pass
    return load_from_mat(str(path)), {}


def _infer_kind(fields: set[str]) -> str | None:
    """Layer kind from the saved fields alone (used only when the file does not give the class)."""
    if "InputSize" in fields:
        return "input"
    if CONV_FIELDS <= fields <= CONV_FIELDS | {"PaddingValue"}:
        return "conv"
    if fields == {"Version", "Name", "NumInputs"}:
        return "add"
    if "ResponseNames" in fields:
        return "output"
    if fields == {"Version", "Name"}:
        return "relu"  # parameterless layers (tanh, sigmoid...) save the same fields: unverified
    return None


def read_dag_network(mat_path: str | os.PathLike) -> DAGFile:
    """Read the network of a .mat file: its layers (class, name, saved fields) and connection table.

    Raises :class:`MRHNetError` for an unreadable or truncated file, a file without a network, or a
    network that is not a ``DAGNetwork``."""
    path = Path(mat_path)
    if not path.is_file():
        raise MRHNetError(f"{path}: file does not exist")
    with open(path, "rb") as f:
        head = f.read(128)
    if len(head) < 128 or not (head.startswith(b"MATLAB") or head[:8] == b"\x89HDF\r\n\x1a\n"):
        raise MRHNetError(f"{path}: not a MATLAB .mat file (no MAT-file header)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variables, classes = _load_mat(path)
    except Exception as exc:  # mat-io raises many kinds on damaged input (zlib, EOF, struct, ...)
        raise MRHNetError(f"{path}: cannot read the MAT-file, it is damaged or truncated "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    nets = {k: v for k, v in variables.items() if getattr(v, "classname", None) in NETWORK_CLASSES}
    if not nets:
        names = ", ".join(k for k in variables if not k.startswith("__")) or "none"
        raise MRHNetError(f"{path}: contains no MATLAB network (variables: {names}); expected a DAGNetwork")
    var, net = next(iter(nets.items()))
    if net.classname != "DAGNetwork":
        raise MRHNetError(f"{path}: variable '{var}' is a {net.classname}; an MRH-Net is saved as a DAGNetwork")
    props = _struct_fields(net.properties.get("any")) if isinstance(net.properties, dict) else {}
    if "Layers" not in props or "Connections" not in props:
        raise MRHNetError(f"{path}: DAGNetwork '{var}' has no Layers / Connections (unsupported MATLAB version?)")
    layers = [_read_layer(obj, classes, path) for obj in np.ravel(np.asarray(props["Layers"], dtype=object), order="F")]
    conns = _read_connections(props["Connections"], path)
    return DAGFile(path, layers, conns, _training_info(variables), var)


def _read_layer(obj: Any, classes: dict[int, str], where: Path) -> MatLayer:
    if not hasattr(obj, "properties") or not isinstance(obj.properties, dict):
        raise MRHNetError(f"{where}: a layer of the network could not be read")
    fields = _struct_fields(obj.properties.get("any"))
    for k, v in obj.properties.items():
        if k not in ("any", "Version"):
            fields.setdefault(k, v)
    name = _str(fields.get("Name", "")) or "?"
    cls = classes.get(id(obj), "")
    if cls in ("", "nnet.cnn.layer.Layer"):
        cls, kind = "", _infer_kind(set(fields) - {"LossFunction"})
    else:
        kind = LAYER_CLASSES.get(cls)
    if kind == "conv" and not CONV_FIELDS <= set(fields):
        kind = None
    return MatLayer(name, cls, kind, fields)


def _read_connections(table: Any, where: Path) -> list[tuple[str, str]]:
    try:
        cols = {str(c).lower(): c for c in table.columns}
        src, dst = table[cols["source"]], table[cols["destination"]]
        return [(_str(s), _str(d)) for s, d in zip(src, dst)]
    except (AttributeError, KeyError, TypeError) as exc:
        raise MRHNetError(f"{where}: the network's connection table is unreadable ({exc})") from None


def _training_info(variables: dict[str, Any]) -> dict[str, Any]:
    """Summary of the training record the original code saved beside the network (``info``), if any."""
    fields = _struct_fields(variables.get("info"))
    out: dict[str, Any] = {}
    for key, name in (("TrainingLoss", "training_loss"), ("TrainingRMSE", "training_rmse")):
        v = np.ravel(np.asarray(fields.get(key, []), dtype=float)) if key in fields else np.array([])
        v = v[np.isfinite(v)]
        if v.size:
            out["iterations"] = int(v.size)
            out[f"final_{name}"] = round(float(v[-1]), 6)
            out[f"final_{name}_mean_last_1pct"] = round(float(v[-max(1, v.size // 100):].mean()), 6)
    if out:
        out["note"] = ("from the 'info' variable saved by the original MATLAB training (per-iteration values; "
                       "MATLAB's regression loss is half the mean squared error, on targets / their global max)")
    return out


# --- graph check -----------------------------------------------------------------------------
@dataclass
class MRHNetPlan:
    """How a DAGNetwork maps onto :class:`MRHNetLib.network.model.MRHNet`."""

    in_channels: int
    depth: int
    width: int
    patch: int
    convs: list[MatLayer]  # in the order of MRHNet.convs()

    def layer_map(self) -> dict[str, str]:
        names = ["Conv1", "Conv2", "Conv3", "Conv3_1"]
        names += [f"blocks.{k}.conv{j}" for k in range(self.depth) for j in (1, 2)]
        names += ["Conv4", "Conv5"]
        return {lay.name: n for lay, n in zip(self.convs, names)}


def match_mrhnet(dag: DAGFile) -> MRHNetPlan:
    """Check that ``dag`` is an MRH-Net of some depth, following its connection table from the input.

    Raises :class:`MRHNetError` naming the first layer or connection that cannot be mapped."""
    where = dag.path.name
    by_name: dict[str, MatLayer] = {}
    for lay in dag.layers:
        if lay.name in by_name:
            raise MRHNetError(f"{where}: two layers are named '{lay.name}'")
        by_name[lay.name] = lay
    for lay in dag.layers:
        if lay.kind is None:
            raise MRHNetError(f"{where}: layer {lay.describe()} cannot be mapped: an MRH-Net has only image "
                              f"input, 3x3 convolution, ReLU, addition and regression output layers")
    succ: dict[str, list[tuple[str, tuple[str, str]]]] = defaultdict(list)
    pred: dict[str, list[tuple[str, tuple[str, str]]]] = defaultdict(list)
    for conn in dag.connections:
        s, d = conn[0].split("/")[0], conn[1].split("/")[0]
        for end in (s, d):
            if end not in by_name:
                raise MRHNetError(f"{where}: connection {conn[0]} -> {conn[1]} names '{end}', which is not a layer")
        succ[s].append((d, conn))
        pred[d].append((s, conn))
    inputs = [lay for lay in dag.layers if lay.kind == "input"]
    if len(inputs) != 1:
        raise MRHNetError(f"{where}: expected one image input layer, found {len(inputs)}")
    used: set[tuple[str, str]] = set()
    visited: list[str] = [inputs[0].name]

    def fail_conn(conn: tuple[str, str], why: str) -> MRHNetError:
        return MRHNetError(f"{where}: connection {conn[0]} -> {conn[1]} cannot be mapped: {why}")

    def step(cur: str, kind: str, branch: bool = False) -> tuple[str, tuple[str, str] | None]:
        outs = succ.get(cur, [])
        if not outs:
            raise MRHNetError(f"{where}: layer {by_name[cur].describe()} has no outgoing connection; an MRH-Net "
                              f"has a {KIND_TEXT[kind]} after it")
        skip = None
        if branch:
            adds = [o for o in outs if by_name[o[0]].kind == "add"]
            mains = [o for o in outs if by_name[o[0]].kind != "add"]
            if len(outs) != 2 or len(adds) != 1:
                extra = next((o for o in outs if o not in mains[:1] and o not in adds[:1]), outs[0])
                raise fail_conn(extra[1], f"'{cur}' should feed one {KIND_TEXT[kind]} and one addition "
                                          f"(the skip connection); it feeds {', '.join(o[0] for o in outs)}")
            skip = adds[0][1]
        else:
            if len(outs) != 1:
                raise fail_conn(outs[1][1], f"'{cur}' feeds {len(outs)} layers "
                                            f"({', '.join(o[0] for o in outs)}); here an MRH-Net feeds only a "
                                            f"{KIND_TEXT[kind]}")
            mains = outs
        nxt, conn = mains[0]
        if by_name[nxt].kind != kind:
            raise MRHNetError(f"{where}: layer {by_name[nxt].describe()} after '{cur}' cannot be mapped: an MRH-Net "
                              f"has a {KIND_TEXT[kind]} there, not a {KIND_TEXT.get(by_name[nxt].kind or '', 'layer')}")
        if kind != "add" and len(pred[nxt]) != 1:
            other = next(p for p in pred[nxt] if p[1] != conn)
            raise fail_conn(other[1], f"'{nxt}' has {len(pred[nxt])} inputs; in an MRH-Net it has one")
        if nxt in visited:
            raise fail_conn(conn, f"it leads back to '{nxt}' (a cycle)")
        used.add(conn)
        visited.append(nxt)
        return nxt, skip

    def add(cur: str, skip: tuple[str, str]) -> str:
        nxt, _ = step(cur, "add")
        if nxt != skip[1].split("/")[0]:
            raise fail_conn(skip, f"the skip connection should end at the addition '{nxt}' that follows '{cur}'")
        srcs = pred[nxt]
        if len(srcs) != 2:
            raise MRHNetError(f"{where}: addition '{nxt}' has {len(srcs)} inputs ({', '.join(s for s, _ in srcs)}); "
                              f"an MRH-Net adds the residual branch and its skip connection")
        used.add(skip)
        return nxt

    convs: list[MatLayer] = []

    def conv(cur: str, branch: bool = False) -> tuple[str, tuple[str, str] | None]:
        nxt, skip = step(cur, "conv", branch)
        convs.append(by_name[nxt])
        return nxt, skip

    x, _ = conv(inputs[0].name)                       # Conv1
    x, _ = step(x, "relu")
    x, _ = conv(x)                                    # Conv2
    a, _ = step(x, "relu")
    x, skip = conv(a, branch=True)                    # Conv3
    x, _ = step(x, "relu")
    x, _ = conv(x)                                    # Conv3_1
    x = add(x, skip)
    depth = 0
    while True:
        r, _ = step(x, "relu")
        if len(succ.get(r, [])) == 2:                # a residual block
            x, skip = conv(r, branch=True)
            x, _ = step(x, "relu")
            x, _ = conv(x)
            x = add(x, skip)
            depth += 1
            continue
        x, _ = conv(r)                                # Conv4
        x, _ = step(x, "relu")
        x, _ = conv(x)                                # Conv5
        out, _ = step(x, "output")
        break
    if succ.get(out):
        raise fail_conn(succ[out][0][1], f"nothing follows the regression output '{out}' in an MRH-Net")
    for lay in dag.layers:
        if lay.name not in visited:
            raise MRHNetError(f"{where}: layer {lay.describe()} is not on the MRH-Net path from the input")
    for conn in dag.connections:
        if conn not in used:
            raise fail_conn(conn, "it is not part of an MRH-Net")
    return _check_layers(inputs[0], convs, depth, where)


def _check_layers(inp: MatLayer, convs: list[MatLayer], depth: int, where: str) -> MRHNetPlan:
    size = [int(v) for v in np.ravel(np.asarray(inp.props.get("InputSize", []), dtype=float))]
    if len(size) != 3 or size[0] != size[1] or size[0] % 2 == 0:
        raise MRHNetError(f"{where}: input layer {inp.describe()} takes {size}; an MRH-Net takes P x P x C patches "
                          f"with odd P")
    norm = _str(inp.props.get("Normalization", "")).lower()
    if norm not in ("", "none"):
        raise MRHNetError(f"{where}: input layer {inp.describe()} applies '{norm}' normalisation, which the "
                          f"importer does not reproduce (the original networks use none)")
    width = int(_num(convs[0].props["NumFilters"]))
    for k, lay in enumerate(convs):
        p = lay.props
        fs = [int(v) for v in np.ravel(p["FilterSize"])]
        stride = [int(v) for v in np.ravel(p["Stride"])]
        dil = [int(v) for v in np.ravel(p["DilationFactor"])]
        mode = _str(p.get("PaddingMode", "")).lower()
        pad = [int(v) for v in np.ravel(np.asarray(p.get("PaddingSize", []), dtype=float))]
        if fs != [3, 3] or stride != [1, 1] or dil != [1, 1] or not (mode == "same" or pad == [1, 1, 1, 1]) \
                or (pad and pad != [1, 1, 1, 1]):
            raise MRHNetError(f"{where}: convolution {lay.describe()} is {fs} with stride {stride}, dilation {dil}, "
                              f"padding {mode or pad}; an MRH-Net uses 3x3, stride 1, dilation 1, 'same' padding")
        c_in = size[2] if k == 0 else width
        c_out = 1 if k == len(convs) - 1 else width
        got_in, got_out = int(_num(p["NumChannels"])), int(_num(p["NumFilters"]))
        if (got_in, got_out) != (c_in, c_out):
            raise MRHNetError(f"{where}: convolution {lay.describe()} maps {got_in} -> {got_out} channels; "
                              f"an MRH-Net maps {c_in} -> {c_out} there")
        lay.conv_arrays()  # checks that the weight and bias sizes fit
    return MRHNetPlan(size[2], depth, width, size[0], convs)


# --- conversion ------------------------------------------------------------------------------
def to_mrhnet(dag: DAGFile, plan: MRHNetPlan | None = None):
    """The :class:`~MRHNetLib.network.model.MRHNet` with ``dag``'s weights (checked with :func:`match_mrhnet`)."""
    import torch

    from .model import MRHNet

    plan = plan or match_mrhnet(dag)
    net = MRHNet(plan.in_channels, plan.depth, plan.width)
    with torch.no_grad():
        if len(plan.convs) != len(net.convs()):
            raise MRHNetError(f"{len(plan.convs)} convolutions in the file but {len(net.convs())} in the network")
        for lay, conv in zip(plan.convs, net.convs()):
            w, b = lay.conv_arrays()
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))))
            conv.bias.copy_(torch.from_numpy(b))
    return net.eval()


def original_protocol(mt_order: str = DEFAULT_MT_ORDER, method_files: Iterable[str | os.PathLike] | None = None,
                      half_patch: int = 1) -> tuple[Protocol, dict[str, Any]]:
    """The original networks' input protocol and the acquisition it came from.

    Channels and directions from the Bruker method files (the shipped copies by default; see
    :mod:`MRHNetLib.data.bruker`), T2/MT order ``mt_order`` (default the original code's: T2w, MT-on,
    MT-off), coronal 3x3 patches, the original data's
    0.0625 mm voxels and the original normalisation: every input divided by the subject's global
    maximum; targets were divided by their global maximum (uint8 AF, so at most 255), hence
    ``target_scale`` 255 puts predictions on the 0-255 scale of the original AF maps."""
    from ..data.bruker import acquisition_summary, classify_method_files, parse_mt_order, protocol_from_method_files
    from ..resources import resource

    files = list(method_files) if method_files is not None else [resource("protocols", "original_method_files")]
    roles = classify_method_files(files)
    for role in ("dwi_b2000", "dwi_b5000"):
        if role not in roles:
            raise MRHNetError(f"{', '.join(map(str, files))}: no {role} diffusion method file found")
    order = parse_mt_order(mt_order)
    proto = protocol_from_method_files(
        roles["dwi_b2000"].path, roles["dwi_b5000"].path, ",".join(order), voxel_size_mm=ORIGINAL_VOXEL_MM,
        normalisation=Normalisation("global_max", target_scale=ORIGINAL_TARGET_SCALE), patch_plane="coronal",
        half_patch=half_patch)
    acq = {"method_files": acquisition_summary(roles), "t2_mt_order": order,
           "direction_frame": "Bruker gradient frame (read, phase, slice) recorded as RAS (R=read, A=slice, "
                              "S=phase); see MRHNetLib.data.bruker"}
    return proto, acq


def import_matlab(mat_path: str | os.PathLike, out_path: str | os.PathLike, mt_order: str = DEFAULT_MT_ORDER,
                  method_files: Iterable[str | os.PathLike] | None = None, target: str = "af",
                  description: str | None = None,
                  progress: Progress | ProgressCallback | None = None) -> Path:
    """Convert an MRH-Net ``DAGNetwork`` .mat file into the project's model folder ``out_path``.

    The model records its provenance (file name, SHA-256, who trained it), the target, depth, the
    original voxel size (0.0625 mm), coronal patches, the original global-maximum normalisation and the
    67-channel protocol from the method files with the T2/MT order ``mt_order``. Nothing is written
    when anything fails (:func:`~MRHNetLib.network.modelfile.save_model` is atomic)."""
    from .modelfile import ModelInfo, save_model

    prog = as_progress(progress)
    mat_path = Path(mat_path)
    check_writable_folder(Path(out_path).parent)
    prog.update(0.0, f"reading {mat_path.name}")
    dag = read_dag_network(mat_path)
    prog.update(0.5, "checking the network graph")
    plan = match_mrhnet(dag)
    protocol, acquisition = original_protocol(mt_order, method_files, half_patch=plan.patch // 2)
    if protocol.n_channels != plan.in_channels:
        raise MRHNetError(f"{mat_path}: the network takes {plan.in_channels} input channels but the protocol "
                          f"from the method files has {protocol.n_channels}")
    prog.update(0.7, "converting weights")
    net = to_mrhnet(dag, plan)
    depth_text = f"{plan.depth} residual block{'s' if plan.depth != 1 else ''}"
    info = ModelInfo(
        protocol=protocol, depth=plan.depth, target=target,
        target_units="a.u. (0-255 scale of the original uint8 autofluorescence maps)" if target == "af" else "a.u.",
        width=plan.width,
        description=description or (f"MRH-{target.upper()} {depth_text}, {TRAINED_BY}. Expects the original "
                                     f"protocol: 3D DW-GRASE b~1900 and b~4800 s/mm^2 (2 b0 + 30 directions each), "
                                     f"{_order_text(acquisition['t2_mt_order'])} RARE (in this channel order), "
                                     f"data resampled to {ORIGINAL_VOXEL_MM} mm, inputs divided by the subject's "
                                     f"global maximum."),
        training={"summary": "by the original authors (Liang et al. 2022) in MATLAB on real ex vivo mouse MRI "
                             "and Allen autofluorescence" + (f"; {dag.training['iterations']} iterations, final "
                                                             f"training RMSE {dag.training['final_training_rmse']:.3f} (MATLAB's, over 3x3 "
                                                             f"patches of targets / their maximum)"
                                                             if "final_training_rmse" in dag.training else ""),
                  **dag.training},
        provenance={"source_file": mat_path.name, "source_sha256": sha256_file(mat_path), "trained_by": TRAINED_BY,
                    "license": LICENSE, "citation": CITATION, "matlab_variable": dag.variable,
                    "matlab_layers": len(dag.layers), "layer_map": plan.layer_map(),
                    "conversion": "weights h x w x in x out -> out x in x h x w, no flip (MATLAB convolution "
                                  "is cross-correlation); patch axis 0 = MATLAB height (left-right of coronal slices)",
                    "acquisition": acquisition, "imported_with": "mrhnet import-matlab"})
    prog.update(0.9, "writing the model")
    out = save_model(out_path, net, info)
    prog.update(1.0, f"wrote {out}")
    return out


def _order_text(order: list[str]) -> str:
    """``['t2w', 'mt_on', 'mt_off']`` -> ``'T2w, MT-on, MT-off'``."""
    names = {"t2w": "T2w", "mt_on": "MT-on", "mt_off": "MT-off"}
    return ", ".join(names[r] for r in order)


# --- linear baselines ------------------------------------------------------------------------
@dataclass
class LinearModelFile:
    """A MATLAB ``LinearModel`` (fitlm) as stored: formula, terms, coefficients and fit statistics.

    ``terms`` is MATLAB's terms matrix (one row per coefficient, one exponent column per variable,
    the response's column included); :meth:`predict` evaluates the fit on predictor values given in
    the model's own units (as they were in the fitted table).

    What the original baseline files (``linear_model_MK_normed_tabled_goodsubjs.mat``,
    ``poly_model_..._goodsubjs.mat``) hold: a first-order fit (intercept + 5 terms, R^2 0.42) and a
    second-order fit (21 terms with all pairwise products and squares, R^2 0.56) of ``data_tog6`` on
    ``data_tog1`` ... ``data_tog5``, from 32,536 voxels, with the fitted table itself. What they do not
    hold: which parameter map each ``data_togK`` is (the "MK" set is T2, MTR, FA, MD, MK, but the order is
    not recorded) and how each map was normalised before the fit ("normed": values are mostly
    multiples of 1/255, i.e. 8-bit images scaled to 0..1 with unknown windows). Without these the fits
    cannot be applied to new parameter maps, so the project does not offer them as comparators."""

    path: Path
    formula: str
    predictors: list[str]
    response: str
    coefficient_names: list[str]
    coefficients: np.ndarray
    terms: np.ndarray
    pred_columns: list[int]
    n_observations: int
    r_squared: float
    mse: float
    predictor_ranges: dict[str, tuple[float, float]]
    data: np.ndarray | None = None  # the fitted table (predictors then response), when stored

    def design(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(self.predictors):
            raise MRHNetError(f"{self.path.name}: expects (n, {len(self.predictors)}) predictor values "
                              f"({', '.join(self.predictors)}), got {x.shape}")
        full = np.zeros((len(x), self.terms.shape[1]))
        full[:, self.pred_columns] = x
        return np.prod(full[:, None, :] ** self.terms[None, :, :], axis=2)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.design(x) @ self.coefficients


def read_linear_model(mat_path: str | os.PathLike) -> LinearModelFile:
    """Read a MATLAB ``LinearModel`` saved in a .mat file (the original's linear / polynomial baselines)."""
    path = Path(mat_path)
    if not path.is_file():
        raise MRHNetError(f"{path}: file does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from matio import load_from_mat

            variables = load_from_mat(str(path))
    except Exception as exc:
        raise MRHNetError(f"{path}: cannot read the MAT-file ({type(exc).__name__}: {exc})") from None
    models = [v for v in variables.values() if getattr(v, "classname", None) == "LinearModel"]
    if not models:
        raise MRHNetError(f"{path}: contains no MATLAB LinearModel")
    p = models[0].properties
    try:
        fp = models[0].properties["Formula"].properties
        var_names = [_str(v) for v in np.ravel(fp["varNames"])]
        terms = np.asarray(fp["terms"], dtype=float)
        pred_cols = [int(v) - 1 for v in np.ravel(p["PredLocs"])]
        resp = int(_num(p["RespLoc"])) - 1
        vi = p["VariableInfo"]
        ranges = {}
        for name in (var_names[c] for c in pred_cols):
            r = np.ravel(np.asarray(vi.loc[name, "Range"], dtype=float)) if name in vi.index else np.array([])
            ranges[name] = (float(r[0]), float(r[1])) if r.size == 2 else (float("nan"), float("nan"))
        data = p.get("Data")
        data = np.asarray(data.to_numpy(dtype=float)) if hasattr(data, "to_numpy") else None
        sse, sst = _num(p["SSE"]), _num(p["SST"])
        return LinearModelFile(path, _str(fp["str"]), [var_names[c] for c in pred_cols], var_names[resp],
                               [_str(v) for v in np.ravel(p["CoefficientNames"])],
                               np.ravel(np.asarray(p["Coefs"], dtype=float)), terms, pred_cols,
                               int(_num(p["NumObservations_"])), 1.0 - sse / sst, _num(p["MSE"]), ranges, data)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise MRHNetError(f"{path}: LinearModel lacks a field this reader needs ({exc})") from None
