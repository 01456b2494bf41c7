"""Import of the original MATLAB MRH-Net networks, checked against computations independent of PyTorch."""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from MRHNetLib.errors import MRHNetError
from MRHNetLib.network.matlab import import_matlab, match_mrhnet, read_dag_network, read_linear_model, to_mrhnet
from MRHNetLib.network.modelfile import load_model
from MRHNetLib.resources import resource

NET4 = "net_5layerV3Res_HRJG_allMRIs_Fluo.mat"
NET9 = "net_10layerV3Res_HRJG_allMRIs_Fluo.mat"


@pytest.fixture(scope="module")
def net4(shared_data) -> Path:
    return shared_data / "networks" / NET4


@pytest.fixture(scope="module")
def dag4(net4):
    return read_dag_network(net4)


@pytest.fixture(scope="module")
def imported4(net4, tmp_path_factory) -> Path:
    return import_matlab(net4, tmp_path_factory.mktemp("imp") / "af4.mrhnet")


# --- independent reference: numpy cross-correlation and a forward pass from the connection table ----
def xcorr_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MATLAB convolution layer on (N, H, W, C) with weights (h, w, C, F): cross-correlation, zero
    'same' padding, written directly (no flip, no PyTorch)."""
    fh, fw = w.shape[:2]
    ph, pw = fh // 2, fw // 2
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = np.zeros(x.shape[:3] + (w.shape[3],))
    for i in range(fh):
        for j in range(fw):
            out += np.einsum("nhwc,cf->nhwf", xp[:, i:i + x.shape[1], j:j + x.shape[2], :], w[i, j].astype(float))
    return out + b.astype(float)


def numpy_dag_forward(dag, x: np.ndarray) -> np.ndarray:
    """Evaluate the DAG layer by layer in the order its connection table allows, from the MATLAB arrays."""
    preds: dict[str, list[str]] = {lay.name: [] for lay in dag.layers}
    for src, dst in dag.connections:
        preds[dst.split("/")[0]].append(src.split("/")[0])
    values: dict[str, np.ndarray] = {}
    pending = list(dag.layers)
    while pending:
        for lay in pending:
            if all(p in values for p in preds[lay.name]):
                break
        else:
            raise AssertionError("connection table has a cycle")
        pending.remove(lay)
        ins = [values[p] for p in preds[lay.name]]
        if lay.kind == "input":
            values[lay.name] = x.astype(float)
        elif lay.kind == "conv":
            values[lay.name] = xcorr_same(ins[0], *lay.conv_arrays())
        elif lay.kind == "relu":
            values[lay.name] = np.maximum(ins[0], 0.0)
        elif lay.kind == "add":
            values[lay.name] = sum(ins)
        elif lay.kind == "output":
            values[lay.name] = ins[0]
        else:
            raise AssertionError(f"unexpected layer {lay.name}")
    return values[dag.layers[-1].name]


def torch_forward(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).float())
    return y.numpy().transpose(0, 2, 3, 1)


# --- tests -----------------------------------------------------------------------------------
def test_first_convolution_is_matlab_cross_correlation(dag4, imported4):
    rng = np.random.default_rng(0)
    x = rng.random((300, 3, 3, 67)).astype(np.float32)
    w, b = dag4.layer("Conv1").conv_arrays()
    assert w.shape == (3, 3, 67, 64)
    ref = xcorr_same(x, w, b)
    net = load_model(imported4).net
    with torch.no_grad():
        got = net.Conv1(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # a flipped kernel would give another answer: the check can tell the two apart
    flipped = xcorr_same(x, w[::-1, ::-1], b)
    assert np.abs(flipped - ref).max() > 100 * np.abs(got - ref).max()


@pytest.mark.parametrize("name, depth", [(NET4, 4), (NET9, 9)])
def test_whole_network_equals_numpy_forward_from_connection_table(shared_data, name, depth):
    dag = read_dag_network(shared_data / "networks" / name)
    net = to_mrhnet(dag)
    assert net.depth == depth and net.in_channels == 67
    rng = np.random.default_rng(1)
    x = (rng.random((300, 3, 3, 67)) * rng.random((300, 1, 1, 1))).astype(np.float32)  # global-max scaled
    ref = numpy_dag_forward(dag, x)
    got = torch_forward(net, x)
    assert got.shape == ref.shape == (300, 3, 3, 1)
    assert np.std(ref) > 1e-3  # the outputs vary: a real comparison
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_shipped_networks_are_the_imported_files(shared_data):
    for name, short, depth in ((NET4, "mrh-af-original-4blocks.mrhnet", 4), (NET9, "mrh-af-original-9blocks.mrhnet", 9)):
        src = shared_data / "networks" / name
        model = load_model(resource("networks", "original", short))
        info = model.info
        assert info.depth == depth and info.target == "af" and info.protocol.n_channels == 67
        assert info.provenance["source_file"] == name
        assert info.provenance["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert "original authors" in info.provenance["trained_by"]
        assert info.protocol.normalisation.method == "global_max"
        assert info.protocol.voxel_size_mm == 0.0625 and info.protocol.patch_plane == "coronal"
        # the original code's order: cat(4, dwi2000, dwi5000, t2MTONOFF), one "t2/MTON/MTOFF" file
        assert [c.role for c in info.protocol.channels[-3:]] == ["t2w", "mt_on", "mt_off"]
        assert info.provenance["acquisition"]["t2_mt_order"] == ["t2w", "mt_on", "mt_off"]
        assert "T2w, MT-on, MT-off RARE" in info.description
        assert json.loads(resource("protocols", "original.json").read_text()) == info.protocol.to_dict()
        fresh = to_mrhnet(read_dag_network(src)).state_dict()
        for k, v in model.net.state_dict().items():
            assert torch.equal(v, fresh[k]), k


def test_import_twice_gives_identical_weights(net4, imported4, tmp_path):
    again = import_matlab(net4, tmp_path / "again.mrhnet")
    assert (again / "weights.safetensors").read_bytes() == (imported4 / "weights.safetensors").read_bytes()
    a, b = (json.loads((p / "model.json").read_text()) for p in (again, imported4))
    assert a == b


def test_import_defaults_to_the_original_codes_order(net4, imported4, tmp_path, capsys):
    from MRHNetLib.cli import main

    assert [c.role for c in load_model(imported4).info.protocol.channels[-3:]] == ["t2w", "mt_on", "mt_off"]
    out = tmp_path / "default.mrhnet"
    assert main(["import-matlab", str(net4), "--out", str(out)]) == 0
    assert (out / "model.json").read_text() == (imported4 / "model.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["import-matlab", "--help"])
    assert "t2w,mt_on,mt_off (default;" in " ".join(capsys.readouterr().out.split())


def test_mt_order_and_cli(net4, tmp_path, capsys):
    from MRHNetLib.cli import main

    out = tmp_path / "swapped.mrhnet"  # the original README's order, for data that say so
    assert main(["import-matlab", str(net4), "--out", str(out), "--mt-order", "t2w,mt_off,mt_on"]) == 0
    info = load_model(out).info
    assert [c.role for c in info.protocol.channels[-3:]] == ["t2w", "mt_off", "mt_on"]
    assert info.provenance["acquisition"]["t2_mt_order"] == ["t2w", "mt_off", "mt_on"]
    assert "T2w, MT-off, MT-on RARE" in info.description
    assert main(["protocol", str(out)]) == 0
    assert "67 channels" in capsys.readouterr().out
    assert main(["import-matlab", str(net4), "--out", str(tmp_path / "bad.mrhnet"), "--mt-order", "t2w,mt_on"]) == 2
    assert "--mt-order" in capsys.readouterr().err and not (tmp_path / "bad.mrhnet").exists()


def _refused(src: Path, tmp_path: Path, pattern: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(MRHNetError, match=pattern) as exc:
        import_matlab(src, out_dir / "model.mrhnet")
    assert str(src.name) in str(exc.value)
    assert "\n" not in str(exc.value)
    assert list(out_dir.iterdir()) == []  # nothing written, no temporary left behind


def test_truncated_file_refused(net4, tmp_path):
    data = net4.read_bytes()
    bad = tmp_path / "truncated.mat"
    bad.write_bytes(data[: len(data) // 2])
    _refused(bad, tmp_path, "damaged or truncated")


def test_mat_without_network_refused(tmp_path):
    from scipy.io import savemat

    bad = tmp_path / "weights_only.mat"
    savemat(bad, {"W": np.ones((3, 3, 67, 64), np.float32), "note": "not a network"})
    _refused(bad, tmp_path, "contains no MATLAB network")


def _craft_foreign_layer(src: Path, dst: Path) -> None:
    """A real MAT-file whose ReLU layers are tanh layers: the class-name table in the MAT-file's
    subsystem (a zlib-compressed data element) names 'ReLULayer'; replace it by the same-length
    'TanhLayer' (a genuine MATLAB class) and re-compress, adjusting the element's size field."""
    data = src.read_bytes()
    out, pos, done = bytearray(data[:128]), 128, False
    while pos + 8 <= len(data):
        kind, size = np.frombuffer(data[pos:pos + 8], "<u4")
        body = data[pos + 8:pos + 8 + int(size)]
        if kind == 15:  # miCOMPRESSED
            raw = zlib.decompress(body)
            if b"ReLULayer" in raw:
                body, done = zlib.compress(raw.replace(b"ReLULayer", b"TanhLayer")), True
        out += np.array([kind, len(body)], "<u4").tobytes() + body
        pos += 8 + int(size)
    assert done, "class table not found"
    dst.write_bytes(bytes(out))


def test_foreign_layer_refused(net4, tmp_path):
    bad = tmp_path / "tanh_net.mat"
    _craft_foreign_layer(net4, bad)
    dag = read_dag_network(bad)  # the crafted file is readable: only the class names changed
    assert {lay.cls for lay in dag.layers if lay.name.startswith("ReLU")} == {"nnet.cnn.layer.TanhLayer"}
    _refused(bad, tmp_path, r"layer 'ReLU1' \(nnet.cnn.layer.TanhLayer\) cannot be mapped")


def test_graph_check_names_the_connection_or_layer(dag4):
    import copy

    # the skip connection of the first residual block removed
    broken = copy.copy(dag4)
    broken.connections = [c for c in dag4.connections if c != ("ReLU_L11", "add_loop1/in2")]
    with pytest.raises(MRHNetError, match="add_loop1"):
        match_mrhnet(broken)
    # an extra layer that hangs off the graph
    extra = copy.copy(dag4)
    stray = copy.copy(dag4.layer("ReLU4"))
    stray.name = "ReLU_extra"
    extra.layers = dag4.layers + [stray]
    extra.connections = dag4.connections + [("Conv4", "ReLU_extra")]
    with pytest.raises(MRHNetError, match=r"connection Conv4 -> ReLU_extra"):
        match_mrhnet(extra)
    # a convolution with another filter size
    wide = copy.copy(dag4)
    conv = copy.copy(dag4.layer("Conv2"))
    conv.props = dict(conv.props, FilterSize=np.array([[5.0, 5.0]]))
    wide.layers = [conv if lay.name == "Conv2" else lay for lay in dag4.layers]
    with pytest.raises(MRHNetError, match=r"convolution 'Conv2'.*\[5, 5\]"):
        match_mrhnet(wide)


def test_linear_baselines_decoded(shared_data):
    for name, n_coef in (("linear_model_MK_normed_tabled_goodsubjs.mat", 6),
                         ("poly_model_MK_normed_tabled_goodsubjs.mat", 21)):
        m = read_linear_model(shared_data / "networks" / name)
        assert len(m.coefficients) == len(m.coefficient_names) == len(m.terms) == n_coef
        assert m.predictors == [f"data_tog{k}" for k in range(1, 6)] and m.response == "data_tog6"
        assert m.data is not None and len(m.data) == m.n_observations
        # the decoded terms and coefficients reproduce the stored fit: residual sum of squares and R^2
        resid = m.data[:, 5] - m.predict(m.data[:, :5])
        sst = ((m.data[:, 5] - m.data[:, 5].mean()) ** 2).sum()
        assert 1 - (resid ** 2).sum() / sst == pytest.approx(m.r_squared, abs=1e-6)
        assert (resid ** 2).mean() * m.n_observations / (m.n_observations - n_coef) == pytest.approx(m.mse, rel=1e-6)
