"""Named physics sets: the calibrated set stays inside its stated ranges, the default set changes nothing,
and the calibrated set reaches the simulation and phantom.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from MRHNetLib.errors import MRHNetError
from MRHNetLib.simulation import calibration
from MRHNetLib.simulation.phantom import simulate_subject, write_phantoms
from MRHNetLib.simulation.shift import PHYSICS_RANGES
from MRHNetLib.simulation.tissue import PHYSICS


def test_calibrated_parameters_inside_their_ranges():
    params = calibration.parameters("calibrated")
    assert params, "the calibrated set changes nothing"
    assert calibration.out_of_range("calibrated") == []
    for p in params:
        assert p.low <= p.value <= p.high, p
        assert p.source, p.name
        if not p.name.startswith("gain_"):
            assert (p.low, p.high) == PHYSICS_RANGES[p.name][:2]
    assert len(params) <= 6  # few parameters, no per-channel gains
    physics, gains = calibration.physics_set("calibrated")
    for name, value in calibration.CALIBRATED_PHYSICS.items():
        assert getattr(physics, name) == value
    assert set(gains) == {"t2w", "mt", "dwi"} and gains["t2w"] == 1.0


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
