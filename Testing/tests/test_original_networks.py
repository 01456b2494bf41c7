"""The original authors' MRH-AF networks through the product's own paths (``mrhnet predict``, the API and
the Slicer scene) on a small simulated brain made with the original acquisition protocol."""
from __future__ import annotations

import numpy as np
import pytest

from MRHNetLib.network.catalog import resolve
from MRHNetLib.cli import main
from MRHNetLib.errors import MRHNetError
from MRHNetLib.network.infer import check_subject, predict
from MRHNetLib.data.io import Gradients, read_volume
from MRHNetLib.network.modelfile import read_info
from MRHNetLib.simulation.phantom import simulate_subject
from MRHNetLib.data.protocol import Protocol
from MRHNetLib.resources import resource
from MRHNetLib.data.subject import DWI, load_subject

MODEL = "af-original-4blocks"
INPUT_ROLES = ("t2w", "mt_on", "mt_off", "dwi_b2000", "dwi_b5000", "mask")


def original_protocol_from_json() -> Protocol:
    return Protocol.from_json(resource("protocols", "original.json").read_text())


@pytest.fixture(scope="module")
def original_subject(tmp_path_factory):
    """Small simulated brain (24 x 24 x 12 at 0.125 mm) with exactly the original protocol, as a folder,
    and the map ``mrhnet predict`` wrote for it with the default options."""
    proto = original_protocol_from_json()
    folder = simulate_subject("C1", size="small", protocol=proto).save(tmp_path_factory.mktemp("orig") / "brain")
    out = tmp_path_factory.mktemp("pred")
    assert main(["predict", str(folder), "--model", MODEL, "--out", str(out)]) == 0
    return folder, read_volume(out / "af.nii.gz")


def test_shipped_originals_take_the_original_codes_t2_mt_order():
    """The original code appends one T2/MTON/MTOFF file after the DWI shells: T2w, MT-on, MT-off."""
    for name in ("af-original-4blocks", "af-original-9blocks"):
        info = read_info(resolve(name))
        assert [c.role for c in info.protocol.channels[-3:]] == ["t2w", "mt_on", "mt_off"]
        assert info.provenance["acquisition"]["t2_mt_order"] == ["t2w", "mt_on", "mt_off"]
    assert [c.role for c in original_protocol_from_json().channels[-3:]] == ["t2w", "mt_on", "mt_off"]


def test_simulated_subject_has_the_original_protocol(original_subject):
    folder, _ = original_subject
    subject = load_subject(folder)
    proto = original_protocol_from_json()
    assert subject.protocol().n_channels == proto.n_channels == 67
    for role in ("dwi_b2000", "dwi_b5000"):
        mb, mg = proto.shell(role)
        got = subject.dwi[role].gradients
        np.testing.assert_allclose(got.bvals, mb, rtol=1e-5)
        dw = mb > 100
        np.testing.assert_allclose(np.abs((got.bvecs[dw] * mg[dw]).sum(axis=1)), 1.0, atol=1e-5)
    check_subject(subject, MODEL)  # the original network accepts it (voxel size aside: resampled)


def test_cli_predict_resamples_to_the_models_voxel_size_and_matches_the_api(original_subject, tmp_path, capsys):
    folder, cli_map = original_subject
    subject = load_subject(folder)
    mask = subject.mask
    # the map is on the subject's own grid (0.125 mm) although the model works at 0.0625 mm
    assert cli_map.shape3 == subject.shape
    np.testing.assert_allclose(cli_map.affine, subject.affine, atol=1e-6)
    assert np.allclose(subject.reference.spacing, 0.125) and read_info(resolve(MODEL)).protocol.voxel_size_mm == 0.0625
    data = cli_map.data
    assert np.isfinite(data).all()
    assert np.all(data[~mask] == 0)
    assert data[mask].std() > 1e-3 and len(np.unique(data[mask])) > mask.sum() // 2
    # the same as the API with its default (resample when the voxel sizes differ), and as --resample
    api = predict(subject, [MODEL], device="cpu")
    assert set(api) == {"af"}
    np.testing.assert_allclose(api["af"].data, data, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(api["af"].affine, cli_map.affine, atol=1e-6)
    forced = tmp_path / "forced"
    assert main(["predict", str(folder), "--model", MODEL, "--out", str(forced), "--resample"]) == 0
    np.testing.assert_allclose(read_volume(forced / "af.nii.gz").data, data, rtol=1e-5, atol=1e-3)
    # --no-resample refuses the 0.125 mm subject with the voxel-size message and writes nothing
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main(["predict", str(folder), "--model", MODEL, "--out", str(refused), "--no-resample"]) == 2
    err = capsys.readouterr().err
    assert "voxel size" in err and "0.0625" in err and "--resample" in err
    assert not refused.exists() or not any(refused.iterdir())


def test_slicer_scene_inference_gives_the_cli_map(original_subject):
    slicer = pytest.importorskip("slicer")
    from MRHNetLib.gui import scene as sc

    folder, cli_map = original_subject
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    from MRHNetLib.gui.controller import Controller, Inputs

    nodes = sc.add_subject_nodes(scene, load_subject(folder), "brainO")
    controller = Controller(scene)
    controller.predict(Inputs({r: nodes[r] for r in INPUT_ROLES}), [MODEL], device="cpu")  # in a child process
    outputs = controller.wait(timeout=180)
    assert set(outputs) == {"af"}
    node = scene.GetFirstNodeByName("brainO MRH-AF")
    assert node is not None and node is outputs["af"]
    np.testing.assert_allclose(sc.node_affine(node), sc.node_affine(nodes["t2w"]), atol=1e-9)
    got = sc.volume_from_node(node).data
    assert got.shape == cli_map.shape3
    np.testing.assert_allclose(got, cli_map.data, rtol=1e-5, atol=1e-3)


def test_default_protocol_subject_is_refused_by_the_original_network(tmp_path, capsys):
    subject = simulate_subject("C1", size="small")  # default 67 channels: b=2000/5000, other directions
    with pytest.raises(MRHNetError, match=r"dwi_b2000: gradient directions differ.*--adapt-protocol") as refused:
        check_subject(subject, MODEL)
    message = str(refused.value)
    folder = subject.save(tmp_path / "default")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", MODEL, "--out", str(out)]) == 2
    assert message.split(": ", 1)[1] in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    slicer = pytest.importorskip("slicer")
    from MRHNetLib.gui import scene as sc

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    nodes = sc.add_subject_nodes(scene, subject, "brainD")
    before = sc.scene_signature(scene)
    from MRHNetLib.gui.controller import Controller, Inputs

    controller = Controller(scene)
    with pytest.raises(MRHNetError, match=r"dwi_b2000: gradient directions differ.*--adapt-protocol"):
        controller.predict(Inputs({r: nodes[r] for r in INPUT_ROLES}), [MODEL], device="cpu")
    assert sc.scene_signature(scene) == before and not controller.busy


def test_original_protocol_with_b0_written_as_zero_is_accepted(original_subject):
    """Most converters write b0 as 0; the method files record an effective b0 of 43.5 s/mm^2."""
    folder, _ = original_subject
    subject = load_subject(folder)
    for role, dwi in list(subject.dwi.items()):
        b = np.where(dwi.gradients.bvals < 100, 0.0, dwi.gradients.bvals)
        subject.dwi[role] = DWI(dwi.volume, Gradients(b, dwi.gradients.bvecs))
    check_subject(subject, MODEL)
