"""Test-time shift of simulated brains: ranges, the physics each factor changes, misregistration, staining."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from MRHNetLib.cli import main
from MRHNetLib.data.maps import mtr
from MRHNetLib.errors import MRHNetError
from MRHNetLib.simulation.phantom import _rng, imperfect_histology, simulate_subject
from MRHNetLib.simulation.shift import (ACQUISITION_RANGES, HISTOLOGY_RANGES, PHYSICS_RANGES, Shift, draw_shift,
                                        stain_response, warp)
from MRHNetLib.simulation.tissue import PHYSICS

CLEAN = dict(size="small", seed=2, noise=0.0, bias=0.0)


def _images(s) -> dict[str, np.ndarray]:
    out = {r: v.data for r, v in s.images.items()}
    out.update({r: d.volume.data for r, d in s.dwi.items()})
    return out


def test_defaults_and_drawn_factors_stay_inside_their_ranges():
    for name, (lo, hi, _) in PHYSICS_RANGES.items():
        assert lo <= getattr(PHYSICS, name) <= hi, name  # the default physics is one of the allowed brains
    draws = [draw_shift(seed) for seed in range(1, 41)]
    for sh in draws:
        assert set(sh.physics) == set(PHYSICS_RANGES)
        for name, value in sh.physics.items():
            lo, hi, _ = PHYSICS_RANGES[name]
            assert lo <= value <= hi, name
        for name in ACQUISITION_RANGES:
            lo, hi, _ = ACQUISITION_RANGES[name]
            assert lo <= getattr(sh, name) <= hi, name
        for name in HISTOLOGY_RANGES:
            lo, hi, _ = HISTOLOGY_RANGES[name]
            assert lo <= getattr(sh, name) <= hi, name
        assert sh.hidden > 0 and sh.histology
    # independent factors: each spreads over its range, uncorrelated with the others
    d_axon = np.array([s.physics["d_axon"] for s in draws])
    r2m = np.array([s.physics["r2_myelin"] for s in draws])
    assert np.ptp(d_axon) > 0.5 * (PHYSICS_RANGES["d_axon"][1] - PHYSICS_RANGES["d_axon"][0])
    assert abs(np.corrcoef(d_axon, r2m)[0, 1]) < 0.5
    assert draw_shift(5) == draw_shift(5) and draw_shift(5) != draw_shift(6)
    with pytest.raises(MRHNetError, match="outside its range"):
        Shift(physics={"d_axon": 1e-3})
    with pytest.raises(MRHNetError, match="unknown shift constant"):
        Shift(physics={"te_t2w": 40.0})
    with pytest.raises(MRHNetError, match="outside its range"):
        Shift(misregistration_mm=0.5)
    with pytest.raises(MRHNetError, match="positive"):
        draw_shift(0)


def test_without_a_shift_the_output_is_unchanged():
    a, b = simulate_subject("R2", seed=3, size="small"), simulate_subject("R2", seed=3, size="small", shift=Shift())
    for role, arr in _images(a).items():
        assert np.array_equal(arr, _images(b)[role]), role


def test_physics_shift_changes_what_it_says():
    base = simulate_subject("C1", **CLEAN)
    m = base.mask
    mbp = base.images["mbp"].data
    white, grey = m & (mbp > np.percentile(mbp[m], 85)), m & (mbp < np.percentile(mbp[m], 30))
    contrast = lambda s: np.median(s.images["t2w"].data[white]) / np.median(s.images["t2w"].data[grey])  # noqa: E731
    t2 = simulate_subject("C1", shift=Shift(physics={"r2_myelin": 0.055}), **CLEAN)
    assert contrast(t2) < contrast(base) - 0.02  # faster myelin relaxation: darker white matter in T2w
    for role in ("af", "nf", "mbp", "mask"):  # the tissue and its histology stay
        assert np.array_equal(t2.images[role].data, base.images[role].data)
    diff = simulate_subject("C1", shift=Shift(physics={"d_axon": 0.6e-3}), **CLEAN)
    for role in ("t2w", "mt_on", "mt_off"):  # diffusion constants do not touch T2w or MT
        assert np.array_equal(diff.images[role].data, base.images[role].data)
    dw = lambda s: s.dwi["dwi_b5000"].volume.data[m][:, 2:].mean()  # noqa: E731
    assert dw(diff) < 0.99 * dw(base)  # faster axonal diffusion: less signal at b5000
    weak, strong = (simulate_subject("C1", shift=Shift(physics={"mt_b1_ut": b1}), **CLEAN) for b1 in (18.0, 22.0))
    ratio = lambda s: np.median(mtr(s.images["mt_on"].data, s.images["mt_off"].data)[m])  # noqa: E731
    assert ratio(weak) < ratio(base) < ratio(strong)  # stronger saturation pulse: higher MTR
    assert ratio(strong) > ratio(weak) + 0.004 and np.array_equal(strong.images["t2w"].data, base.images["t2w"].data)


def test_snr_bias_and_hidden_factors():
    noisy = simulate_subject("R2", size="small", seed=1, shift=Shift(snr=25.0))
    clean = simulate_subject("R2", size="small", seed=1, shift=Shift(snr=60.0))
    assert np.array_equal(noisy.images["nf"].data, clean.images["nf"].data)
    flat = simulate_subject("R2", size="small", seed=1, noise=0.0, shift=Shift(bias=0.0))
    out = flat.images["t2w"].data == 0  # background: Rician noise only
    assert noisy.images["t2w"].data[out].mean() > 1.8 * clean.images["t2w"].data[out].mean()
    strong = simulate_subject("R2", size="small", seed=1, noise=0.0, shift=Shift(bias=0.2))
    m = flat.mask
    gain = strong.images["t2w"].data[m] / flat.images["t2w"].data[m]
    assert 0.1 < np.std(np.log(gain)) < 0.3
    other = simulate_subject("R2", shift=Shift(hidden=4), **CLEAN)
    base = simulate_subject("R2", **CLEAN)
    m = base.mask
    assert np.corrcoef(other.images["nf"].data[m], base.images["nf"].data[m])[0, 1] > 0.999  # same anatomy (axons)
    r = np.corrcoef(other.images["mbp"].data[m], base.images["mbp"].data[m])[0, 1]
    assert 0.5 < r < 0.999  # myelin per axon redrawn


def test_misregistration_displaces_by_the_requested_amount():
    shape, spacing = (32, 32, 32), np.full(3, 0.125)
    requested = 0.15
    sh = Shift(misregistration_mm=requested)
    measured = []
    for k in range(3):
        ramp = np.broadcast_to((20 + 5 * np.arange(shape[k], dtype=np.float32)).reshape(
            [-1 if a == k else 1 for a in range(3)]), shape).copy()
        moved = imperfect_histology(ramp, spacing, sh, _rng("t", 1))  # same field for every ramp
        measured.append((moved - ramp) / 5 * spacing[k])  # displacement in mm along axis k
    u = np.stack(measured)
    inner = (slice(4, -4),) * 3  # away from the edges, where sampling is clamped
    length = np.sqrt((u ** 2).sum(axis=0))
    assert np.sqrt(np.mean(length ** 2)) == pytest.approx(requested, rel=0.25)
    assert np.sqrt(np.mean(length[inner] ** 2)) == pytest.approx(requested, rel=0.3)
    assert length.max() < 5 * requested  # smooth, no tearing
    # the displacement is smooth: neighbours move alike
    assert np.abs(np.diff(u[0][inner], axis=0)).mean() < 0.2 * np.abs(u[0][inner]).mean()
    # on a brain: the truth moves (edges change), the rest stays
    base = simulate_subject("C1", **CLEAN)
    moved = simulate_subject("C1", shift=Shift(misregistration_mm=0.15), **CLEAN)
    m = base.mask
    for role in ("nf", "mbp"):
        a, b = base.images[role].data[m], moved.images[role].data[m]
        assert 0.7 < np.corrcoef(a, b)[0, 1] < 0.999 and np.abs(a - b).mean() > 1
    assert np.array_equal(base.images["t2w"].data, moved.images["t2w"].data)


def test_staining_variability():
    v = np.linspace(0, 255, 101, dtype=np.float32)
    assert np.allclose(stain_response(v, 0.0, 1.0), v, atol=1e-3)
    assert np.all(stain_response(v, 0.0, 0.8)[1:-1] > v[1:-1])  # gamma < 1: mid-tones brighter
    assert np.allclose(stain_response(v, np.log(2.0), 1.0), np.minimum(2 * v, 255), atol=1e-3)
    base = simulate_subject("C1", **CLEAN)
    stained = simulate_subject("C1", shift=Shift(stain_gain=0.2), **CLEAN)
    m = base.mask & (base.images["nf"].data > 30) & (stained.images["nf"].data < 254)
    gain = np.log(stained.images["nf"].data[m] / base.images["nf"].data[m])
    assert 0.08 < gain.std() < 0.4
    assert np.array_equal(warp(v.reshape(1, 1, -1), np.zeros((3, 1, 1, 101)), np.ones(3)), v.reshape(1, 1, -1))


def test_cli_shift(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", str(out), "--brains", "R2", "--size", "small", "--shift", "2",
                 "--misregistration", "0.1", "--physics", "d_free=0.0021"]) == 0
    info = json.loads((out / "R2" / "phantom.json").read_text())
    drawn = draw_shift(2)
    assert info["shift"]["misregistration_mm"] == 0.1 and info["shift"]["physics"]["d_free"] == 0.0021
    assert info["shift"]["physics"]["d_axon"] == drawn.physics["d_axon"] and info["shift"]["hidden"] == 2
    assert info["noise"] == pytest.approx(1 / drawn.snr)
    assert "test-time shift" in capsys.readouterr().out
    ref = simulate_subject("R2", size="small", shift=dataclasses.replace(
        drawn, misregistration_mm=0.1, physics={**drawn.physics, "d_free": 0.0021}))
    from MRHNetLib.data.subject import load_subject

    assert np.allclose(load_subject(out / "R2").images["mbp"].data, ref.images["mbp"].data, atol=1e-3)
    assert main(["phantom", str(tmp_path / "plain"), "--brains", "R2", "--size", "small"]) == 0
    assert json.loads((tmp_path / "plain" / "R2" / "phantom.json").read_text())["shift"] is None
    assert main(["phantom", str(tmp_path / "bad"), "--brains", "R2", "--size", "small", "--stain-gamma", "3"]) == 2
    assert "outside its range" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
