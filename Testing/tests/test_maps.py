"""Derived maps: DTI FA/MD and DKI MK against signals of known tensors, on dipy's real small DWI,
MTR, and the brain mask (FA > 0 or median_otsu)."""
from __future__ import annotations

import numpy as np
import pytest
from dipy.data import get_fnames

from MRHNetLib.data import maps
from MRHNetLib.errors import MRHNetError
from MRHNetLib.data.io import Gradients, Volume, read_dwi
from MRHNetLib.data.protocol import fibonacci_directions
from MRHNetLib.data.subject import DWI, Subject


def shell(b: float, n_dirs: int = 30, n_b0: int = 2) -> Gradients:
    dirs = fibonacci_directions(n_dirs)
    return Gradients(np.r_[np.zeros(n_b0), np.full(n_dirs, b)], np.vstack([np.zeros((n_b0, 3)), dirs]))


def tensor_signal(grads: Gradients, evals, kurtosis: float = 0.0, s0: float = 1000.0) -> np.ndarray:
    """Signal of one voxel with a tensor of eigenvalues ``evals`` along a rotated frame and an
    isotropic excess kurtosis ``kurtosis`` (for an isotropic tensor this is exactly the MK)."""
    t = 0.4
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    d = rot @ np.diag(evals) @ rot.T
    adc = np.einsum("ni,ij,nj->n", grads.bvecs, d, grads.bvecs)
    md = np.mean(evals)
    b = grads.bvals
    return s0 * np.exp(-b * adc + b ** 2 * md ** 2 * kurtosis / 6.0)


def fa_of(evals) -> float:
    ev = np.asarray(evals, dtype=float)
    return float(np.sqrt(1.5 * ((ev - ev.mean()) ** 2).sum() / (ev ** 2).sum()))


def test_fa_md_recover_known_tensors():
    g = shell(2000.0)
    evals = [(1.2e-3, 0.3e-3, 0.3e-3), (0.5e-3, 0.5e-3, 0.5e-3), (0.9e-3, 0.6e-3, 0.2e-3)]
    dwi = np.stack([tensor_signal(g, e) for e in evals]).reshape(3, 1, 1, -1).astype(np.float32)
    fa, md = maps.fa_md(dwi, g)
    np.testing.assert_allclose(fa[:, 0, 0], [fa_of(e) for e in evals], atol=2e-3)
    np.testing.assert_allclose(md[:, 0, 0], [np.mean(e) for e in evals], rtol=2e-3)
    # outside the mask nothing is fitted
    mask = np.array([True, False, True]).reshape(3, 1, 1)
    fa_m, md_m = maps.fa_md(dwi, g, mask)
    assert fa_m[1, 0, 0] == 0 and md_m[1, 0, 0] == 0 and fa_m[0, 0, 0] == pytest.approx(fa[0, 0, 0])


def test_fa_md_on_dipy_small_dwi_is_rotation_invariant():
    """dipy's bundled real DWI (10 x 10 x 10, 65 volumes, oblique affine): FA from the engine's RAS
    world gradients equals FA from dipy's fit on the file's own voxel-frame bvecs."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    nii, bval, bvec = get_fnames(name="small_64D")
    vol, grads = read_dwi(nii, bval, bvec)
    fa, md = maps.fa_md(vol.data, grads)
    raw = TensorModel(gradient_table(np.loadtxt(bval), bvecs=np.loadtxt(bvec))).fit(vol.data)
    ref_fa = np.nan_to_num(raw.fa)
    inside = vol.data[..., 0] > 0
    np.testing.assert_allclose(fa[inside], ref_fa[inside], atol=1e-4)
    np.testing.assert_allclose(md[inside], np.clip(np.nan_to_num(raw.md), 0, None)[inside], rtol=1e-4, atol=1e-9)
    assert 0.05 < fa[inside].mean() < 0.9 and (md[inside] > 0).mean() > 0.9


def test_mk_recovers_known_kurtosis_and_needs_two_shells():
    shells = [shell(2000.0), shell(5000.0)]
    ks = [0.0, 0.6, 1.1]
    ev = (2e-4, 2e-4, 2e-4)  # ex vivo diffusivity (mm^2/s)
    data = [np.stack([tensor_signal(g, ev, k) for k in ks]).reshape(3, 1, 1, -1).astype(np.float32) for g in shells]
    got = maps.mk([(d, g) for d, g in zip(data, shells)])
    np.testing.assert_allclose(got[:, 0, 0], ks, atol=0.03)
    with pytest.raises(MRHNetError, match="two non-zero b-value shells"):
        maps.mk([(data[0], shells[0])])
    with pytest.raises(MRHNetError, match="volumes but the gradient table lists"):
        maps.mk([(data[0][..., :-1], shells[0]), (data[1], shells[1])])


def test_mtr():
    on = np.array([[[50.0, 0.0, 10.0, 5.0]]])
    off = np.array([[[100.0, 0.0, 10.0, -3.0]]])
    np.testing.assert_allclose(maps.mtr(on, off), [[[0.5, 0.0, 0.0, 0.0]]])
    with pytest.raises(MRHNetError, match="MT-on shape"):
        maps.mtr(on, off[..., :2])


def ellipsoid(shape=(24, 28, 16), seed=0):
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g ** 2 for g in grid) < 0.6
    image = np.where(inside, 100.0, 5.0) + rng.normal(0, 4, shape)
    return np.abs(image).astype(np.float32), inside


def dice(a, b) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_brain_mask_from_fa_or_otsu():
    image, inside = ellipsoid()
    affine = np.diag([0.1, 0.1, 0.1, 1.0])
    s = Subject({"t2w": Volume(image, affine, "t2w")})
    assert dice(maps.brain_mask(s), inside) > 0.95
    fa = np.where(inside, 0.3, 0.0).astype(np.float32)
    fa[0, 0, 0] = 0.0
    s.images["fa"] = Volume(fa, affine, "fa")
    np.testing.assert_array_equal(maps.brain_mask(s), fa > 0)  # the original's rule
    s.images["fa"] = Volume(np.full(image.shape, 0.2, np.float32), affine, "fa")  # unmasked FA: not used
    assert dice(maps.brain_mask(s), inside) > 0.95
    # from the mean b0 of a DWI shell when there is one
    g = shell(2000.0, n_dirs=6, n_b0=2)
    dwi = np.repeat(image[..., None], len(g), axis=3) * np.where(g.bvals > 0, 0.3, 1.0)
    s2 = Subject(dwi={"dwi_b2000": DWI(Volume(dwi.astype(np.float32), affine), g)})
    assert dice(maps.brain_mask(s2), inside) > 0.95
    with pytest.raises(MRHNetError, match="all zeros"):
        maps.otsu_mask(np.zeros((5, 5, 5)))
    with pytest.raises(MRHNetError, match="no mask, FA, DWI or T2w"):
        maps.brain_mask(Subject({"mt_on": Volume(image, affine)}, name="x"))


def test_derive_map_through_subject():
    image, inside = ellipsoid((10, 12, 8))
    affine = np.diag([0.1, 0.1, 0.1, 1.0])
    g2, g5 = shell(2000.0), shell(5000.0)
    evals = (4e-4, 2e-4, 1e-4)
    sig2, sig5 = tensor_signal(g2, evals, 0.5), tensor_signal(g5, evals, 0.5)
    d2 = (inside[..., None] * sig2).astype(np.float32)
    d5 = (inside[..., None] * sig5).astype(np.float32)
    s = Subject({"t2w": Volume(image, affine, "t2w"), "mt_on": Volume(image * 0.6, affine),
                 "mt_off": Volume(image, affine), "mask": Volume(inside.astype(np.float32), affine)},
                {"dwi_b2000": DWI(Volume(d2, affine), g2), "dwi_b5000": DWI(Volume(d5, affine), g5)})
    fa = s.channel_volume("fa")
    assert fa[inside] == pytest.approx(fa_of(evals), abs=0.02) and not fa[~inside].any()
    # DTI at b2000 reads a kurtotic signal's MD low by about b * MD * K / 6 (4 % here)
    assert s.channel_volume("md")[inside] == pytest.approx(np.mean(evals) * (1 - 2000 * np.mean(evals) * 0.5 / 6), rel=0.01)
    mk = s.channel_volume("mk")
    assert not mk[~inside].any() and np.all((mk[inside] > 0.2) & (mk[inside] < 1.5))
    np.testing.assert_allclose(s.channel_volume("mtr")[image > 0], 0.4, atol=1e-5)
    with pytest.raises(MRHNetError, match="cannot derive"):
        maps.derive_map(s, "t1")
    with pytest.raises(MRHNetError, match="MK needs both DWI shells"):
        maps.derive_map(Subject({"mask": s.images["mask"]}, {"dwi_b2000": s.dwi["dwi_b2000"]}, "y"), "mk")


def test_fits_report_progress_and_cancel():
    from MRHNetLib.errors import Cancelled

    g = shell(2000.0)
    dwi = np.broadcast_to(tensor_signal(g, (1e-3, 4e-4, 4e-4)), (4, 5, 3, len(g))).astype(np.float32)
    seen = []
    maps.fa_md(dwi, g, progress=lambda f, msg: seen.append((f, msg)))
    assert seen and seen[-1][0] == 1.0 and "DTI" in seen[-1][1]
    with pytest.raises(Cancelled):
        maps.fa_md(dwi, g, progress=lambda f, msg: False)
