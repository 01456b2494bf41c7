"""Subject folders: save/load round trip, validation of grids and contents (message checked, nothing
written), resampling onto the reference grid, to a model's voxel size and back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MRHNetLib.errors import MRHNetError
from MRHNetLib.data.io import Gradients, Volume, read_volume, write_volume
from MRHNetLib.data.protocol import default_protocol, fibonacci_directions
from MRHNetLib.data.resample import resample_spacing, resample_subject, resample_to, to_subject_grid
from MRHNetLib.data.subject import DWI, Subject, load_subject

SHAPE = (16, 18, 12)


def affine_of(spacing=0.1, origin=(1.0, -2.0, 3.0), angle_deg=10.0) -> np.ndarray:
    t = np.radians(angle_deg)
    rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    a = np.eye(4)
    a[:3, :3] = rot * spacing
    a[:3, 3] = origin
    return a


def smooth_brain(shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grid)
    inside = r2 < 0.7
    image = np.where(inside, 50 + 40 * np.cos(2 * grid[0]) * np.sin(1.5 * grid[1]) + 20 * grid[2], 0.0)
    return image.astype(np.float32), inside


def make_subject(affine=None, n_dirs=6) -> Subject:
    affine = affine_of() if affine is None else affine
    image, inside = smooth_brain()
    s = Subject(name="s1")
    s.images["t2w"] = Volume((image + 10 * inside).astype(np.float32), affine, "t2w")
    s.images["mt_on"] = Volume(image * 0.6, affine, "mt_on")
    s.images["mt_off"] = Volume(image, affine, "mt_off")
    s.images["mask"] = Volume(inside.astype(np.float32), affine, "mask")
    s.images["af"] = Volume(image / 2, affine, "af")
    for role, b in (("dwi_b2000", 2000.0), ("dwi_b5000", 5000.0)):
        g = Gradients(np.r_[0.0, np.full(n_dirs, b)], np.vstack([np.zeros(3), fibonacci_directions(n_dirs)]))
        att = np.exp(-b * 3e-4 * (1 + 0.3 * g.bvecs[:, 0] ** 2))
        s.dwi[role] = DWI(Volume((image[..., None] * att).astype(np.float32), affine, role), g)
    return s


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def fails_cleanly(folder: Path, match: str, fn, *args, **kwargs) -> str:
    before = snapshot(folder)
    with pytest.raises(MRHNetError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value) and snapshot(folder) == before
    return str(info.value)


def load_then_save(folder, out, **kw):
    """What every command does: read and check the whole subject, then write."""
    load_subject(folder, **kw).save(out)


def test_save_load_round_trip(tmp_path):
    s = make_subject()
    s.save(tmp_path / "subj")
    names = sorted(p.name for p in (tmp_path / "subj").iterdir())
    assert names == sorted(["t2w.nii.gz", "mt_on.nii.gz", "mt_off.nii.gz", "mask.nii.gz", "af.nii.gz",
                            "dwi_b2000.nii.gz", "dwi_b2000.bval", "dwi_b2000.bvec",
                            "dwi_b5000.nii.gz", "dwi_b5000.bval", "dwi_b5000.bvec"])
    back = load_subject(tmp_path / "subj")
    assert back.name == "subj" and set(back.images) == set(s.images) and set(back.dwi) == set(s.dwi)
    for role, vol in s.images.items():
        np.testing.assert_array_equal(back.images[role].data, vol.data)
        np.testing.assert_allclose(back.images[role].affine, vol.affine, atol=1e-6)
    for role, d in s.dwi.items():
        np.testing.assert_array_equal(back.dwi[role].volume.data, d.volume.data)
        np.testing.assert_allclose(back.dwi[role].gradients.bvals, d.gradients.bvals)
        np.testing.assert_allclose(back.dwi[role].gradients.bvecs, d.gradients.bvecs, atol=1e-5)
    np.testing.assert_array_equal(back.mask, s.mask)
    # the same subject from files one by one (with another mask and a NRRD T2w) overrides the folder
    write_volume(tmp_path / "t2w.nrrd", s.images["t2w"])
    one = load_subject(tmp_path / "subj", t2w=tmp_path / "t2w.nrrd")
    np.testing.assert_array_equal(one.images["t2w"].data, s.images["t2w"].data)
    files = {r: tmp_path / "subj" / f"{r}.nii.gz" for r in ("t2w", "mt_on", "mt_off", "dwi_b2000")}
    only = load_subject(**files, dwi_b2000_bval=tmp_path / "subj" / "dwi_b2000.bval",
                        dwi_b2000_bvec=tmp_path / "subj" / "dwi_b2000.bvec")
    assert set(only.images) == {"t2w", "mt_on", "mt_off"} and set(only.dwi) == {"dwi_b2000"}
    # network input in the protocol's order
    x = back.inputs(default_protocol(n_b0=1, n_dirs=6))
    assert x.shape == (17,) + SHAPE and x.dtype == np.float32 and np.isfinite(x).all()


@pytest.mark.parametrize("change,word", [
    ("shape", "shape"), ("spacing", "spacing"), ("direction", "direction"), ("origin", "origin")])
def test_inputs_on_different_grids(tmp_path, change, word):
    s = make_subject()
    s.save(tmp_path / "subj")
    ref = s.images["mt_on"]
    if change == "shape":
        other = Volume(resample_to(ref, Volume(np.zeros((14, 18, 12)), ref.affine)).data, ref.affine)
    else:
        affine = {"spacing": affine_of(spacing=0.11), "direction": affine_of(angle_deg=14.0),
                  "origin": affine_of(origin=(1.05, -2.0, 3.0))}[change]
        other = resample_to(ref, Volume(np.zeros(SHAPE), affine))
    write_volume(tmp_path / "subj" / "mt_on.nii.gz", other)
    msg = fails_cleanly(tmp_path, rf"mt_on.nii.gz: .*{word}.* differs? from .*{word}.* of the reference t2w.nii.gz.*"
                                  r"--resample-to-reference", load_then_save, tmp_path / "subj", tmp_path / "out")
    assert not (tmp_path / "out").exists(), msg
    # the explicit option puts the image onto the reference grid
    fixed = load_subject(tmp_path / "subj", resample_to_reference=True)
    assert fixed.images["mt_on"].shape3 == SHAPE
    np.testing.assert_allclose(fixed.images["mt_on"].affine, s.images["t2w"].affine, atol=1e-6)
    inner = s.mask & (np.abs(np.gradient(s.images["mt_on"].data)).sum(axis=0) < 8)
    err = np.abs(fixed.images["mt_on"].data - s.images["mt_on"].data)[inner]
    assert np.median(err) < 0.05 * s.images["mt_on"].data[inner].mean()


def test_bad_subject_contents(tmp_path):
    s = make_subject()
    folder = tmp_path / "subj"
    s.save(folder)
    write_volume(folder / "mt_off.nii.gz", s.images["mt_off"].with_data(np.zeros(SHAPE, np.float32)))
    fails_cleanly(tmp_path, r"mt_off.nii.gz: image is all zeros", load_then_save, folder, tmp_path / "out")
    write_volume(folder / "mt_off.nii.gz", s.images["mt_off"])
    write_volume(folder / "mask.nii.gz", s.images["mask"].with_data(np.zeros(SHAPE, np.float32)))
    fails_cleanly(tmp_path, r"mask.nii.gz: brain mask is empty", load_then_save, folder, tmp_path / "out")
    write_volume(folder / "mask.nii.gz", s.images["mask"])
    write_volume(folder / "t2w.nii.gz", Volume(np.ones(SHAPE[:2] + (1,), np.float32), s.affine))
    fails_cleanly(tmp_path, r"t2w.nii.gz: is a single slice", load_then_save, folder, tmp_path / "out")
    write_volume(folder / "t2w.nii.gz", s.images["t2w"])
    (folder / "dwi_b5000.bval").write_text("0 5000 5000\n")
    fails_cleanly(tmp_path, r"dwi_b5000.bval: 3 b-values but dwi_b5000.bvec has 7 directions", load_then_save,
                  folder, tmp_path / "out")
    (folder / "dwi_b5000.bval").unlink()
    (folder / "dwi_b5000.bvec").unlink()
    fails_cleanly(tmp_path, r"dwi_b5000.nii.gz: no b-values", load_then_save, folder, tmp_path / "out")
    fails_cleanly(tmp_path, r"nothere: subject folder does not exist", load_then_save, tmp_path / "nothere",
                  tmp_path / "out")
    fails_cleanly(tmp_path, r"gone.nii.gz: file does not exist", load_then_save, None, tmp_path / "out",
                  t2w=tmp_path / "gone.nii.gz")
    fails_cleanly(tmp_path, r"unknown input role\(s\) t1", load_then_save, folder, tmp_path / "out", t1=folder / "t2w.nii.gz")
    (tmp_path / "empty").mkdir()
    fails_cleanly(tmp_path, r"empty: no images found", load_then_save, tmp_path / "empty", tmp_path / "out")
    # a derived mask that finds nothing is refused when used
    blank = Subject({"mask": Volume(np.zeros(SHAPE, np.float32), s.affine, "mask.nii.gz")}, name="b")
    with pytest.raises(MRHNetError, match="mask.nii.gz: brain mask is empty"):
        _ = blank.mask


def test_mask_derived_when_missing(tmp_path):
    s = make_subject()
    del s.images["mask"]
    image, inside = smooth_brain()
    m = s.mask  # median_otsu on the b2000 shell's b0
    assert 2 * (m & inside).sum() / (m.sum() + inside.sum()) > 0.9
    assert "mask" in s.images and s.images["mask"].data.dtype == np.float32


def test_resample_to_spacing_and_back():
    s = make_subject(affine_of(spacing=0.1))
    i, j, k = np.indices(SHAPE)
    ramp = (100 + 5 * i + 3 * j - 2 * k).astype(np.float32)  # linear: kept by smoothing and interpolation
    s.images["t2w"] = s.images["t2w"].with_data(ramp)
    coarse = resample_subject(s, 0.15)
    sp, ap = coarse.reference.spacing, coarse.reference.affine
    np.testing.assert_allclose(sp, 0.15)
    assert coarse.shape == tuple(int(round(n * 0.1 / 0.15)) for n in SHAPE)
    # same direction, same field of view corner
    np.testing.assert_allclose(ap[:3, :3] / sp, s.affine[:3, :3] / 0.1, atol=1e-9)
    corner = s.affine[:3, :3] @ np.full(3, -0.5) + s.affine[:3, 3]
    np.testing.assert_allclose(ap[:3, :3] @ np.full(3, -0.5) + ap[:3, 3], corner, atol=1e-9)
    for role in s.dwi:  # 4D resampled like 3D, gradients unchanged
        assert coarse.dwi[role].volume.data.shape == coarse.shape + (7,)
        np.testing.assert_array_equal(coarse.dwi[role].gradients.bvecs, s.dwi[role].gradients.bvecs)
    np.testing.assert_allclose(coarse.dwi["dwi_b2000"].volume.data[..., 0],
                               resample_spacing(s.dwi["dwi_b2000"].volume.with_data(
                                   s.dwi["dwi_b2000"].volume.data[..., 0]), 0.15).data, atol=1e-5)
    assert set(np.unique(coarse.images["mask"].data)) <= {0.0, 1.0}
    # the way back: onto the subject's own grid, close to the original away from the edge
    back = to_subject_grid(coarse.images["t2w"], s)
    assert back.shape3 == SHAPE
    np.testing.assert_allclose(back.affine, s.affine)
    inner = (slice(3, -3),) * 3  # away from the field's edge (zero outside, smoothing reaches 2 voxels)
    np.testing.assert_allclose(back.data[inner], ramp[inner], atol=0.05 * 5)
    # the mean in the brain survives a change of resolution (anti-aliasing keeps the signal level)
    fine = resample_spacing(s.images["t2w"], 0.05)
    assert fine.data.mean() == pytest.approx(s.images["t2w"].data.mean(), rel=0.05)
    with pytest.raises(MRHNetError, match="voxel size must be positive"):
        resample_spacing(s.images["t2w"], 0.0)


def test_resample_to_reference_grid_matches_known_shift(tmp_path):
    """Resampling onto a grid shifted by one voxel along i reproduces the shifted array."""
    image, _ = smooth_brain()
    a = affine_of()
    shifted = a.copy()
    shifted[:3, 3] += a[:3, 0]  # the new voxel (0, j, k) is the old (1, j, k)
    out = resample_to(Volume(image, a), Volume(np.zeros(SHAPE), shifted))
    np.testing.assert_allclose(out.data[:-1], image[1:], atol=1e-4)
    assert not out.data[-1].any()  # outside the old field of view: 0
    nn = resample_to(Volume((image > 30).astype(np.float32), a), Volume(np.zeros(SHAPE), shifted), nearest=True)
    assert set(np.unique(nn.data)) <= {0.0, 1.0}
    written = read_volume(write_volume(tmp_path / "x.nii.gz", out))
    np.testing.assert_allclose(written.affine, shifted, atol=1e-6)
