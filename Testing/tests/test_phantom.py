"""Simulated brains: determinism, layout, physics, independence of the targets, files and CLI."""
from __future__ import annotations

import numpy as np
import pytest

from MRHNetLib.cli import main
from MRHNetLib.errors import MRHNetError
from MRHNetLib.data.maps import b0_image, mtr
from MRHNetLib.simulation.phantom import SIGNAL_SCALE, procedural_tissue, simulate_subject, write_phantoms, phantom_figure
from MRHNetLib.data.protocol import Channel, Protocol, check_compatible, default_protocol, dwi_channels
from MRHNetLib.data.subject import load_subject
from MRHNetLib.simulation.tissue import dwi_signal

ANATOMY_SHAPE = (50, 70, 32)  # the real anatomy at 0.25 mm: small enough for tests, real structure
ROLES = ("t2w", "mt_on", "mt_off", "fa", "mask", "af", "nf", "mbp")


@pytest.fixture(scope="module")
def brains():
    """Two different real-anatomy brains with different noise seeds (train on one, test on the other)."""
    return {"C1": simulate_subject("C1", seed=0, size=ANATOMY_SHAPE),
            "R2": simulate_subject("R2", seed=1, size=ANATOMY_SHAPE)}


def dw_mean(subject, role):
    d = subject.dwi[role]
    return d.volume.data[..., d.gradients.bvals >= 100].mean(axis=3)


def features(subject) -> dict[str, np.ndarray]:
    """Per-voxel contrasts inside the mask: the single markers and what a combination may use."""
    m = subject.mask
    im = subject.images
    out = {"FA": im["fa"].data, "MTR": mtr(im["mt_on"].data, im["mt_off"].data), "T2w": im["t2w"].data,
           "MT-off": im["mt_off"].data}
    for role in ("dwi_b2000", "dwi_b5000"):
        d = subject.dwi[role]
        out[role] = dw_mean(subject, role) / np.maximum(b0_image(d.volume.data, d.gradients), 1e-3)
    return {k: v[m].astype(float) for k, v in out.items()}


def test_small_subject_layout_and_67_channels():
    s = simulate_subject("C1", size="small")
    assert s.shape == (24, 24, 12)
    for role in ROLES:
        assert s.images[role].data.shape == (24, 24, 12) and s.images[role].data.dtype == np.float32
    for role in ("dwi_b2000", "dwi_b5000"):
        assert s.dwi[role].volume.data.shape == (24, 24, 12, 32)
        assert (s.dwi[role].gradients.bvals < 100).sum() == 2
    assert s.protocol().n_channels == 67
    check_compatible(default_protocol(), s.protocol())
    assert np.allclose(s.affine, s.dwi["dwi_b5000"].volume.affine)
    assert np.allclose(s.images["mask"].data[s.mask], 1) and 0.1 < s.mask.mean() < 0.9
    for role in ("af", "nf", "mbp"):
        t = s.images[role].data
        assert t.max() <= 255.0 + 1e-3 and t.min() >= 0 and not t[~s.mask].any() and t[s.mask].std() > 5
    assert s.images["fa"].data[s.mask].max() <= 1.0


def test_deterministic_for_a_seed():
    a = simulate_subject("R2", seed=5, size="small")
    b = simulate_subject("R2", seed=5, size="small")
    c = simulate_subject("R2", seed=6, size="small")
    for role in ROLES:
        assert np.array_equal(a.images[role].data, b.images[role].data)
    assert np.array_equal(a.dwi["dwi_b5000"].volume.data, b.dwi["dwi_b5000"].volume.data)
    # another seed: other noise, same brain (same ground truth)
    assert not np.array_equal(a.images["t2w"].data, c.images["t2w"].data)
    assert np.array_equal(a.images["mbp"].data, c.images["mbp"].data)


def test_brains_differ(brains):
    c1, r2 = brains["C1"], brains["R2"]
    both = c1.mask & r2.mask
    assert both.sum() > 0.8 * min(c1.mask.sum(), r2.mask.sum())  # same grid and field of view
    for role in ("nf", "mbp", "af"):
        r = np.corrcoef(c1.images[role].data[both], r2.images[role].data[both])[0, 1]
        assert r < 0.95, role
    d1 = simulate_subject("C1-d1", seed=0, size=(25, 35, 16))
    c1s = simulate_subject("C1", seed=0, size=(25, 35, 16))
    moved = np.abs(d1.images["nf"].data - c1s.images["nf"].data)[c1s.mask | d1.mask].mean()
    assert moved > 10  # a deformed variant is another brain
    small = [simulate_subject(b, size="small", noise=0).images["nf"].data for b in ("C1", "R2")]
    assert not np.array_equal(*small)


def test_physics(brains):
    for s in brains.values():
        m = s.mask
        im = s.images
        nf, mbp, af = im["nf"].data, im["mbp"].data, im["af"].data
        fa = im["fa"].data
        ratio = mtr(im["mt_on"].data, im["mt_off"].data)
        fibre, poor = m & (nf > 170), m & (nf < 100) & (nf > 0)
        assert fibre.sum() > 50 and poor.sum() > 50
        assert np.median(fa[fibre]) > np.median(fa[poor]) + 0.15
        assert np.median(fa[fibre]) > 0.4 and np.median(fa[poor]) < 0.35
        hi, lo = m & (mbp > np.percentile(mbp[m], 90)), m & (mbp < np.percentile(mbp[m], 30))
        assert np.median(ratio[hi]) > np.median(ratio[lo]) + 0.05
        assert 0.2 < np.median(ratio[lo]) < 0.45 and 0.35 < np.median(ratio[hi]) < 0.7  # ex vivo MTR 0.3-0.6
        grey = lo & (af > np.percentile(af[m], 50))  # cellular, unmyelinated tissue (no fluid: AF bright)
        assert np.median(im["t2w"].data[hi]) < 0.9 * np.median(im["t2w"].data[grey])
        for role in ("dwi_b2000", "dwi_b5000"):
            d = s.dwi[role]
            b0 = b0_image(d.volume.data, d.gradients)
            assert np.mean(b0[m] > dw_mean(s, role)[m]) > 0.99
        assert np.mean(dw_mean(s, "dwi_b5000")[m] < dw_mean(s, "dwi_b2000")[m]) > 0.99
        # noise: Rician floor outside the brain, a few percent of the brain signal
        outside = ~m
        assert 0.005 < im["t2w"].data[outside].mean() / np.median(im["t2w"].data[m]) < 0.1


def test_combination_beats_single_markers(brains):
    """A ridge fit on several contrasts of brain C1 predicts each target of brain R2 (held out: another
    anatomy, other noise) better than the best of FA, MTR or T2w alone."""
    from sklearn.linear_model import Ridge

    train, test = brains["C1"], brains["R2"]
    ftr, fte = features(train), features(test)
    keys = sorted(ftr)
    scale = {k: ftr[k].std() for k in keys}
    xtr = np.column_stack([ftr[k] / scale[k] for k in keys])
    xte = np.column_stack([fte[k] / scale[k] for k in keys])
    for role in ("af", "nf", "mbp"):
        ytr, yte = train.images[role].data[train.mask], test.images[role].data[test.mask]
        pred = Ridge(alpha=1.0).fit(xtr, ytr).predict(xte)
        combined = np.corrcoef(pred, yte)[0, 1]
        single = max(abs(np.corrcoef(fte[k], yte)[0, 1]) for k in ("FA", "MTR", "T2w"))
        assert single < 0.95, role  # no single contrast determines the target
        assert combined > single + 0.02, (role, combined, single)


def test_custom_protocol_comes_through():
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(30, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    b2 = np.r_[[7.3, 7.3], 1915 + rng.uniform(-5, 5, 30)]
    b5 = np.r_[[7.3, 7.3], 4814 + rng.uniform(-10, 10, 30)]
    zeros = np.zeros((2, 3))
    chans = dwi_channels("dwi_b2000", b2, np.vstack([zeros, dirs])) + dwi_channels("dwi_b5000", b5, np.vstack([zeros, dirs]))
    proto = Protocol(chans + [Channel(r) for r in ("t2w", "mt_on", "mt_off")])
    s = simulate_subject("C1", size="small", protocol=proto, noise=0.0, bias=0.0)
    for role, b in (("dwi_b2000", b2), ("dwi_b5000", b5)):
        g = s.dwi[role].gradients
        assert np.allclose(g.bvals, b)
        assert np.allclose(g.bvecs[2:], dirs, atol=1e-6)
    check_compatible(proto, s.protocol())
    with pytest.raises(MRHNetError, match="gradient directions differ"):
        check_compatible(default_protocol(), s.protocol())
    # the volumes are the model's signal at exactly these b-values and directions
    tissue, _ = procedural_tissue("C1")
    expect = tissue.to_volume(dwi_signal(tissue, b5, np.vstack([zeros, dirs])) * SIGNAL_SCALE)
    assert np.allclose(s.dwi["dwi_b5000"].volume.data, expect, rtol=1e-4, atol=1e-3)


def test_write_load_and_refuse(tmp_path):
    folders = write_phantoms(tmp_path, ["C1", "R2-d2"], size="small", seed=2)
    assert [f.name for f in folders] == ["C1", "R2-d2"]
    for f in folders:
        names = {p.name for p in f.iterdir()}
        assert {"t2w.nii.gz", "mt_on.nii.gz", "mt_off.nii.gz", "fa.nii.gz", "mask.nii.gz", "af.nii.gz",
                "nf.nii.gz", "mbp.nii.gz", "dwi_b2000.nii.gz", "dwi_b2000.bval", "dwi_b2000.bvec",
                "dwi_b5000.nii.gz", "dwi_b5000.bval", "dwi_b5000.bvec", "phantom.json"} <= names
    loaded = load_subject(folders[0])
    check_compatible(default_protocol(), loaded.protocol())
    ref = simulate_subject("C1", size="small", seed=2)
    assert np.allclose(loaded.images["mbp"].data, ref.images["mbp"].data)
    assert np.allclose(loaded.dwi["dwi_b2000"].volume.data, ref.dwi["dwi_b2000"].volume.data)
    assert np.allclose(loaded.dwi["dwi_b2000"].gradients.bvecs, ref.dwi["dwi_b2000"].gradients.bvecs, atol=1e-5)
    assert np.allclose(loaded.affine, ref.affine)
    before = {p: p.stat().st_mtime_ns for p in folders[0].iterdir()}
    with pytest.raises(MRHNetError, match="not empty"):
        write_phantoms(tmp_path, ["R2", "C1"], size="small")
    assert not (tmp_path / "R2").exists()  # nothing written on refusal
    assert {p: p.stat().st_mtime_ns for p in folders[0].iterdir()} == before
    write_phantoms(tmp_path, ["C1"], size="small", seed=3, overwrite=True)
    assert not np.allclose(load_subject(folders[0]).images["t2w"].data, loaded.images["t2w"].data)


def test_bad_requests():
    with pytest.raises(MRHNetError, match="unknown simulated brain"):
        simulate_subject("X9", size="small")
    with pytest.raises(MRHNetError, match="unknown phantom size"):
        simulate_subject("C1", size="huge")
    with pytest.raises(MRHNetError, match="must not be negative"):
        simulate_subject("C1", size="small", noise=-1)


def test_cli(tmp_path, capsys):
    out = tmp_path / "phantoms"
    proto = tmp_path / "p.json"
    proto.write_text(default_protocol(bvalues=(1915.0, 4814.0)).to_json())
    assert main(["phantom", str(out), "--brains", "R2", "--size", "small", "--seed", "4",
                 "--protocol", str(proto), "--figure", str(tmp_path / "fig.png")]) == 0
    s = load_subject(out / "R2")
    assert np.allclose(s.dwi["dwi_b5000"].gradients.bvals[2:], 4814.0)
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    assert main(["phantom", str(out), "--brains", "R2", "--size", "small"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["phantom", str(out), "--brains", "Q7", "--size", "small"]) == 2
    assert main(["phantom", str(out), "--brains", "R2", "--size", "small", "--overwrite"]) == 0


def test_figure(tmp_path):
    s = simulate_subject("C1", size="small")
    path = phantom_figure(s, tmp_path / "p.png")
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img[..., :3].std() > 0.05


def test_structure_orientation_along_ridges_or_across_layers():
    """A layered image (intensity changing along the third axis only, like cortical layers) and a bright
    tract along the first axis: ``ridge`` gives the tract's axis, ``gradient`` the axis across the layers."""
    from MRHNetLib.simulation.phantom import structure_orientation

    z = np.arange(24, dtype=np.float32)
    layers = np.broadcast_to(np.sin(z / 3.0), (24, 24, 24)).copy()
    yy, zz = np.meshgrid(np.arange(24), np.arange(24), indexing="ij")
    tract = np.broadcast_to(np.exp(-((yy - 12) ** 2 + (zz - 12) ** 2) / 8.0), (24, 24, 24)).astype(np.float32).copy()
    centre = np.array([np.ravel_multi_index((12, 12, 12), (24, 24, 24))])
    spacing = np.full(3, 0.05)
    across = structure_orientation(layers, spacing, centre, along="gradient")[0][0]
    along_tract = structure_orientation(tract, spacing, centre)[0][0]
    assert abs(across[2]) > 0.99 and abs(along_tract[0]) > 0.99, (across, along_tract)
    with pytest.raises(MRHNetError, match="unknown orientation"):
        structure_orientation(layers, spacing, centre, along="radial")


def test_grey_matter_fibres_run_across_the_layers_and_are_more_dispersed(monkeypatch):
    """Grey matter (little myelin) takes its fibre direction from across the NF map's layers (radial in
    cortex) and is less aligned than white matter at the same structure coherence; white matter keeps the
    tract axis."""
    from MRHNetLib.simulation.phantom import GREY_ALIGNMENT, GREY_MYELIN, _tissue_from_maps
    from MRHNetLib.simulation.tissue import MYELIN_MAX

    shape, n = (8, 8, 8), 512
    index = np.arange(n)
    first = index < n // 2  # first half grey matter, second half a dark-AF tract
    nf, af = (np.where(first, a, b).astype(np.float32) for a, b in ((0.2, 0.95), (0.5, 0.2)))
    ones = np.ones(n, np.float32)
    ridge = np.tile(np.float32([1, 0, 0]), (n, 1))
    across = np.tile(np.float32([0, 0, 1]), (n, 1))
    args = (shape, np.full(3, 0.1), np.eye(4), ones, nf, af, 0.5 * ones, ridge, 0.8 * ones, index, "t")
    t = _tissue_from_maps(*args, across=across)
    grey = t.myelin / MYELIN_MAX < GREY_MYELIN
    assert grey[first].all() and grey[~first].mean() < 0.2
    assert np.allclose(np.abs(t.direction[grey]), [0, 0, 1]) and np.allclose(np.abs(t.direction[~grey]), [1, 0, 0])
    without = _tissue_from_maps(*args)  # no across directions: every voxel keeps the ridge
    assert np.allclose(np.abs(without.direction), [1, 0, 0])
    # the same coherence aligns grey matter GREY_ALIGNMENT times as much as white matter's rule would
    monkeypatch.setattr("MRHNetLib.simulation.phantom.GREY_ALIGNMENT", 1.0)
    plain = _tissue_from_maps(*args, across=across)
    assert GREY_ALIGNMENT < 1
    assert np.allclose(1 - t.dispersion[grey], GREY_ALIGNMENT * (1 - plain.dispersion[grey]), atol=1e-6)
    assert np.array_equal(t.dispersion[~grey], plain.dispersion[~grey])
