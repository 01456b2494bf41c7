"""Named physics sets: the calibrated set stays inside its stated ranges, the default set changes nothing,
and the calibrated set reaches the simulation and phantom.json."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from MRHNetLib.errors import MRHNetError
from MRHNetLib.simulation import calibration
from MRHNetLib.simulation.phantom import SIZES, anatomy_tissue, simulate_subject, write_phantoms
from MRHNetLib.simulation.tissue import PHYSICS


def test_calibrated_parameters_inside_their_ranges():
    params = calibration.parameters("calibrated")
    assert params, "the calibrated set changes nothing"
    assert calibration.out_of_range("calibrated") == []
    for p in params:
        assert p.low <= p.value <= p.high, p
        assert p.source, p.name
        if not p.name.startswith("gain_"):
            assert (p.low, p.high) == calibration.CALIBRATION_RANGES[p.name][:2]
            assert p.low > 0 or p.name == "r2_cells"
    assert len(params) <= 10  # few parameters, no per-channel gains
    physics, gains = calibration.physics_set("calibrated")
    for name, value in calibration.CALIBRATED_PHYSICS.items():
        assert getattr(physics, name) == value
    assert set(gains) == {"t2w", "mt", "dwi"} and gains["t2w"] == 1.0


def test_extended_ranges_are_physics_constants_around_their_defaults():
    """``calibrate.py --extended`` searches these too: each names a constant of the simulator, its literature
    default lies inside the range, and it has a source; none is also in the shipped search."""
    assert calibration.EXTENDED_RANGES
    for name, (low, high, what, source) in calibration.EXTENDED_RANGES.items():
        assert name not in calibration.CALIBRATION_RANGES and name not in calibration.CALIBRATED_PHYSICS
        assert 0 < low < getattr(PHYSICS, name) < high, name
        assert what and source, name


@pytest.fixture(scope="module")
def c1_tissue():
    return anatomy_tissue("C1", SIZES["medium"])[0]


def test_calibrated_set_gives_published_contrasts(c1_tissue):
    """The guard against adversarial fits: grey / white T2, MTR and grey MD of brain C1 stay inside their
    published ex vivo ranges under the calibrated set (as under the default one)."""
    for name in ("default", "calibrated"):
        got = calibration.contrasts(c1_tissue, calibration.physics_set(name)[0])
        assert calibration.contrast_problems(got) == [], (name, got)
        assert got["t2_white_ms"] < got["t2_grey_ms"] and got["mtr_white"] > got["mtr_grey"]


def test_contrasts_follow_the_physics_they_name(c1_tissue):
    base = calibration.contrasts(c1_tissue, PHYSICS)
    faster_cells = calibration.contrasts(c1_tissue, dataclasses.replace(PHYSICS, d_cells=0.5e-3))
    assert faster_cells["md_cell_layer_over_neuropil"] > base["md_cell_layer_over_neuropil"] + 0.05
    more_myelin_r2 = calibration.contrasts(c1_tissue, dataclasses.replace(PHYSICS, r2_myelin=0.06))
    assert more_myelin_r2["t2_white_ms"] < base["t2_white_ms"] - 1.0
    assert abs(more_myelin_r2["md_grey_um2_ms"] - base["md_grey_um2_ms"]) < 0.02  # T2 barely touches MD
    faster_exchange = calibration.contrasts(c1_tissue, dataclasses.replace(PHYSICS, k_exchange=20.0))
    assert faster_exchange["mtr_white"] > base["mtr_white"] + 0.1
    assert faster_exchange["mtr_grey"] > base["mtr_grey"] + 0.1
    more_bound_myelin = calibration.contrasts(c1_tissue, dataclasses.replace(PHYSICS, bound_per_myelin=0.6))
    white, grey = (more_bound_myelin[k] - base[k] for k in ("mtr_white", "mtr_grey"))
    assert white > 3 * grey > 0  # bound pool per myelin: white matter far more than grey
    problems = calibration.contrast_problems({**base, "t2_white_ms": 50.0})
    assert len(problems) == 1 and problems[0].startswith("t2_white_ms = 50")


def test_default_set_is_the_literature_physics():
    physics, gains = calibration.physics_set("default")
    assert physics is PHYSICS and gains is None
    assert calibration.parameters("default") == []
    with pytest.raises(MRHNetError, match="unknown physics set"):
        calibration.physics_set("fitted")


def test_gains_scale_each_acquisition_only():
    plain = simulate_subject("C1", size="small", seed=3)
    same = simulate_subject("C1", size="small", seed=3, gains={"t2w": 1.0, "mt": 1.0, "dwi": 1.0})
    for role in ("t2w", "mt_on", "mt_off", "af"):
        np.testing.assert_array_equal(plain.images[role].data, same.images[role].data)
    scaled = simulate_subject("C1", size="small", seed=3, gains={"mt": 2.0, "dwi": 0.5})
    np.testing.assert_array_equal(scaled.images["t2w"].data, plain.images["t2w"].data)
    np.testing.assert_allclose(scaled.images["mt_on"].data, 2.0 * plain.images["mt_on"].data, rtol=1e-6)
    np.testing.assert_allclose(scaled.dwi["dwi_b2000"].volume.data, 0.5 * plain.dwi["dwi_b2000"].volume.data,
                               rtol=1e-6)
    np.testing.assert_allclose(scaled.images["fa"].data, plain.images["fa"].data, atol=1e-4)
    with pytest.raises(MRHNetError, match="receiver gains"):
        simulate_subject("C1", size="small", gains={"mt_on": 2.0})


def test_phantom_json_records_the_set(tmp_path):
    folder = write_phantoms(tmp_path / "cal", ["C1"], size="small", physics_set="calibrated")[0]
    info = json.loads((folder / "phantom.json").read_text())
    assert info["physics_set"]["name"] == "calibrated"
    folder = write_phantoms(tmp_path / "plain", ["C1"], size="small")[0]
    assert "physics_set" not in json.loads((folder / "phantom.json").read_text())


def _original_af(tissue, physics, gains, model, rng_seed=0, n=3000):
    """The original network's AF (0..255) and the truth at ``n`` brain voxels of ``tissue``: noise-free
    signals of the original protocol, scaled by each scan's receiver gain, divided by the global maximum
    of the brain, uniform 3 x 3 patches (the paper: uniform patches lose little)."""
    import torch

    from MRHNetLib.data.protocol import Protocol
    from MRHNetLib.resources import resource
    from MRHNetLib.simulation.tissue import dwi_signal, histology, mt_signals, t2w_signal

    proto = Protocol.from_json(resource("protocols", "original.json").read_text())
    gains = gains or {"t2w": 1.0, "mt": 1.0, "dwi": 1.0}
    on, off = mt_signals(tissue, physics)
    t2w = t2w_signal(tissue, physics) * gains["t2w"]
    b0 = dwi_signal(tissue, np.zeros(1), np.zeros((1, 3)), physics)[:, 0] * gains["dwi"]
    top = max(float(t2w.max()), float(on.max() * gains["mt"]), float(off.max() * gains["mt"]), float(b0.max()))
    inside = np.flatnonzero(tissue.partial >= 0.99)
    sub = tissue.subset(np.random.default_rng(rng_seed).choice(inside, n, replace=False))
    x = calibration.original_inputs(sub, physics, gains, [proto.shell(r) for r in ("dwi_b2000", "dwi_b5000")])
    xt = torch.from_numpy((x / top).astype(np.float32))[:, :, None, None].expand(-1, -1, 3, 3).contiguous()
    with torch.no_grad():
        pred = model.net(xt)[:, 0, 1, 1].numpy() * 255.0
    return pred, histology(sub)["af"]


@pytest.mark.parametrize("name", ["af-original-4blocks", "af-original-9blocks"])
def test_calibrated_set_brings_the_original_networks_to_the_truth(c1_tissue, name):
    """What the calibration claims, on brain C1 at 0.125 mm (not the grid it was calibrated on): both of the
    authors' AF networks agree better with the AF truth, and their mean comes within 20 % of it."""
    from MRHNetLib.network.infer import as_model

    model = as_model(name)
    scores = {}
    for set_name in ("default", "calibrated"):
        pred, truth = _original_af(c1_tissue, *calibration.physics_set(set_name), model)
        scores[set_name] = (float(np.corrcoef(pred, truth)[0, 1]), float(pred.mean() / truth.mean()))
    (r0, m0), (r1, m1) = scores["default"], scores["calibrated"]
    assert r1 > r0 + 0.15 and r1 > 0.65, scores
    assert abs(m1 - 1) < 0.2 < abs(m0 - 1), scores
