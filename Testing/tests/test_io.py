"""Image and gradient I/O on real files: the original tool's Analyze maps, files written by nibabel and
SimpleITK, dipy's bundled real DWI, a Slicer-style DWI NRRD, the original's gradient table; and every
bad input with its message, nothing written."""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from dipy.data import get_fnames

from MRHNetLib.errors import MRHNetError
from MRHNetLib.data.io import (Gradients, Volume, read_dwi, read_gradient_table, read_volume, write_dwi_nrrd,
                          write_fsl_gradients, write_volume)

LPS = np.diag([-1.0, -1.0, 1.0])


def oblique_affine(spacing=(0.1, 0.12, 0.15), origin=(4.0, -7.5, 2.25), flip=False) -> np.ndarray:
    """A voxel-to-RAS affine with a rotation about two axes (not a permutation)."""
    a, b = np.radians(17.0), np.radians(-9.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rz @ rx @ (np.diag([-1.0, 1, 1]) if flip else np.eye(3))
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing)
    aff[:3, 3] = origin
    return aff


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def fails_cleanly(folder: Path, match: str, fn, *args, **kwargs) -> MRHNetError:
    """``fn`` raises an MRHNetError matching ``match`` with a one-line message, and nothing in
    ``folder`` changed (no new, changed or temporary files)."""
    before = snapshot(folder)
    with pytest.raises(MRHNetError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    assert snapshot(folder) == before
    return info.value


# ---------------------------------------------------------------------------------------------
# Real files


@pytest.fixture(scope="module")
def analyze_maps(shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analyze")
    for name in ("MRH_axon_output.zip", "MRH_autofluo_output.zip"):
        with zipfile.ZipFile(shared_data / name) as z:
            z.extractall(out)
    return out


def test_reads_original_analyze_maps(analyze_maps):
    nf = read_volume(analyze_maps / "axonfrom6subj_C1.hdr")
    assert nf.data.shape == (200, 280, 128) and nf.data.dtype == np.float32
    np.testing.assert_allclose(nf.spacing, 0.0625, rtol=1e-5)
    assert nf.data.min() == 0 and nf.data.max() <= 255 and np.array_equal(nf.data, np.round(nf.data))
    assert 0.2 < (nf.data > 0).mean() < 0.4  # the brain, about 29 % of the field
    raw = np.fromfile(analyze_maps / "axonfrom6subj_C1.img", dtype=np.uint8)
    assert raw.size == nf.data.size and np.bincount(raw, minlength=256)[0] == (nf.data == 0).sum()
    same = read_volume(analyze_maps / "axonfrom6subj_C1.img")  # either half of the pair names it
    np.testing.assert_array_equal(same.data, nf.data)
    np.testing.assert_array_equal(same.affine, nf.affine)
    af = read_volume(analyze_maps / "fluo_No-noisy_R3.hdr")
    assert af.data.shape == (128, 200, 280)
    np.testing.assert_allclose(af.spacing, 1.0)  # voxel size left at 1 in that header
    # written back as Analyze and NIfTI with the geometry kept
    for name in ("copy.hdr", "copy.nii.gz"):
        path = write_volume(analyze_maps / name, nf)
        back = read_volume(path)
        np.testing.assert_array_equal(back.data, nf.data)
        np.testing.assert_allclose(back.affine, nf.affine, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".hdr", ".nrrd"])
def test_write_read_round_trip_keeps_geometry(tmp_path, suffix):
    rng = np.random.default_rng(0)
    affine = oblique_affine()
    if suffix == ".hdr":  # Analyze 7.5 holds voxel sizes only: a warning, then its own fixed orientation
        with pytest.warns(UserWarning, match="Analyze 7.5 keeps only the voxel size"):
            write_volume(tmp_path / "oblique.hdr", Volume(np.ones((7, 6, 5), np.float32), affine))
        np.testing.assert_allclose(read_volume(tmp_path / "oblique.hdr").spacing, (0.1, 0.12, 0.15), rtol=1e-6)
        for p in tmp_path.iterdir():
            p.unlink()
        affine = nib.AnalyzeImage(np.zeros((7, 6, 5), np.float32), np.diag([0.1, 0.12, 0.15, 1])).header.get_best_affine()
    vol = Volume(rng.random((7, 6, 5)).astype(np.float32), affine, "x")
    path = write_volume(tmp_path / f"img{suffix}", vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["img.hdr", "img.img"] if suffix == ".hdr" else [f"img{suffix}"])  # no temporary files left
    back = read_volume(path)
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    vol4 = Volume(rng.random((7, 6, 5, 3)).astype(np.float32), affine, "x4")
    back4 = read_volume(write_volume(tmp_path / f"img4{suffix}", vol4))
    np.testing.assert_array_equal(back4.data, vol4.data)
    np.testing.assert_allclose(back4.affine, vol4.affine, atol=1e-5)


def sitk_geometry(affine):
    """Independent LPS geometry of a RAS affine: (spacing, direction 3x3, origin)."""
    lin = LPS @ affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    return spacing, lin / spacing, LPS @ affine[:3, 3]


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_files_written_by_simpleitk_and_nibabel(tmp_path, suffix):
    rng = np.random.default_rng(1)
    affine = oblique_affine(flip=True)
    data = rng.random((8, 7, 6)).astype(np.float32)
    spacing, direction, origin = sitk_geometry(affine)
    image = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.reshape(-1).tolist())
    image.SetOrigin(origin.tolist())
    sitk.WriteImage(image, str(tmp_path / f"sitk{suffix}"))
    vol = read_volume(tmp_path / f"sitk{suffix}")
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    # the engine's files read by SimpleITK and by nibabel give the same geometry
    out = write_volume(tmp_path / f"engine{suffix}", Volume(data, affine))
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(np.reshape(back.GetDirection(), (3, 3)), direction, atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), origin, atol=1e-5)
    np.testing.assert_array_equal(np.transpose(sitk.GetArrayFromImage(back), (2, 1, 0)), data)
    if suffix == ".nii.gz":
        img = nib.load(str(out))
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
        nib.save(nib.Nifti1Image(data * 2, affine), str(tmp_path / "nib.nii.gz"))
        v2 = read_volume(tmp_path / "nib.nii.gz")
        np.testing.assert_allclose(v2.affine, affine, atol=1e-6)
        np.testing.assert_array_equal(v2.data, data * 2)


def test_dipy_small_dwi_with_fsl_gradients(tmp_path):
    nii, bval, bvec = get_fnames(name="small_64D")
    vol, grads = read_dwi(nii, bval, bvec)
    assert vol.data.shape == (10, 10, 10, 65)
    np.testing.assert_allclose(vol.affine, nib.load(str(nii)).affine, atol=1e-6)
    np.testing.assert_allclose(grads.bvals, np.loadtxt(bval))
    dw = grads.bvals > 50
    np.testing.assert_allclose(np.linalg.norm(grads.bvecs[dw], axis=1), 1.0, atol=1e-6)
    # the mapping to world vectors is a rotation (possibly with a reflection): angles are kept
    raw = np.loadtxt(bvec)
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True).clip(1e-9)
    np.testing.assert_allclose(np.abs(grads.bvecs[dw] @ grads.bvecs[dw].T), np.abs(raw[dw] @ raw[dw].T), atol=1e-5)
    # ... and not the identity: this affine is oblique
    assert np.abs(np.abs(grads.bvecs[dw]) - np.abs(raw[dw])).max() > 0.1
    # written back (FSL files beside a NIfTI, found by name) gives the same world vectors
    write_volume(tmp_path / "dwi.nii.gz", vol)
    write_fsl_gradients(tmp_path / "dwi", grads, vol.affine)
    vol2, grads2 = read_dwi(tmp_path / "dwi.nii.gz")
    np.testing.assert_array_equal(vol2.data, vol.data)
    np.testing.assert_allclose(grads2.bvals, grads.bvals, rtol=1e-5)  # FSL text keeps 6 digits
    np.testing.assert_allclose(grads2.bvecs, grads.bvecs, atol=1e-5)
    # and as a Slicer DWI NRRD
    vol3, grads3 = read_dwi(write_dwi_nrrd(tmp_path / "dwi.nrrd", vol, grads))
    np.testing.assert_array_equal(vol3.data, vol.data)
    np.testing.assert_allclose(vol3.affine, vol.affine, atol=1e-5)
    np.testing.assert_allclose(grads3.bvals, grads.bvals, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(grads3.bvecs, grads.bvecs, atol=1e-6)


def test_slicer_dwi_nrrd_with_oblique_directions_and_measurement_frame(tmp_path):
    """A DWI NRRD as Slicer writes it (pynrrd, keys per the design notes): LPS space, oblique space
    directions, a rotated measurement frame, two shells in one file via b_i = b_max |g_i|^2."""
    rng = np.random.default_rng(2)
    n_i, n_j, n_k = 5, 4, 3
    dirs = rng.normal(size=(6, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bvals = np.r_[0.0, 2000.0 * np.ones(3), 5000.0 * np.ones(3)]
    g_mf = np.vstack([np.zeros(3), dirs])  # unit directions in the measurement frame
    t = np.radians(30.0)
    mf = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])  # frame -> LPS
    ras_affine = oblique_affine()
    lps_dirs = LPS @ ras_affine[:3, :3]  # columns: LPS step of i, j, k
    data = rng.random((len(bvals), n_i, n_j, n_k)).astype(np.float32)
    header = {
        "type": "float", "dimension": 4, "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": np.vstack([[np.nan] * 3, lps_dirs.T]),
        "space origin": LPS @ ras_affine[:3, 3],
        "measurement frame": mf.T,  # NRRD lists the matrix's column vectors
        "modality": "DWMRI", "DWMRI_b-value": "5000",
    }
    for n, (b, g) in enumerate(zip(bvals, g_mf)):
        header[f"DWMRI_gradient_{n:04d}"] = " ".join(f"{x:.10f}" for x in g * np.sqrt(b / 5000.0))
    nrrd.write(str(tmp_path / "slicer_dwi.nrrd"), data, header,
               custom_field_map={k: "string" for k in header if k.startswith("DWMRI") or k == "modality"})
    vol, grads = read_dwi(tmp_path / "slicer_dwi.nrrd")
    assert vol.data.shape == (n_i, n_j, n_k, len(bvals))
    np.testing.assert_array_equal(vol.data, np.moveaxis(data, 0, 3))
    np.testing.assert_allclose(vol.affine, ras_affine, atol=1e-6)
    np.testing.assert_allclose(grads.bvals, bvals, rtol=1e-6, atol=1e-6)
    expected = (LPS @ mf @ g_mf.T).T  # measurement frame -> LPS -> RAS
    np.testing.assert_allclose(grads.bvecs, expected, atol=1e-6)


def test_original_gradient_table(shared_data, tmp_path):
    table = shared_data / "grad_auto.txt"
    affine = oblique_affine()
    g = read_gradient_table(table, affine)
    raw = np.loadtxt(table, delimiter=",")
    assert len(g) == 35 and (g.bvals < 10).sum() == 5 and np.allclose(g.bvals, raw[:, 3])
    dw = g.bvals > 100
    assert dw.sum() == 30 and np.all(np.abs(g.bvals[dw] - 3000) < 300)
    np.testing.assert_allclose(np.linalg.norm(g.bvecs[dw], axis=1), 1.0, atol=1e-6)
    # image-axis directions rotated into the world by the affine's rotation
    rot = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    unit = raw[dw, :3] / np.linalg.norm(raw[dw, :3], axis=1, keepdims=True)
    np.testing.assert_allclose(g.bvecs[dw], unit @ rot.T, atol=1e-6)
    vol = Volume(np.ones((3, 3, 3, 35), np.float32), affine)
    write_volume(tmp_path / "dwi.nii.gz", vol)
    _, g2 = read_dwi(tmp_path / "dwi.nii.gz", table=table)
    np.testing.assert_allclose(g2.bvecs, g.bvecs, atol=1e-6)  # the NIfTI stores the affine in float32
    fails_cleanly(tmp_path, r"d34.nii.gz: has 34 volumes but grad_auto.txt lists 35 gradients", read_dwi,
                  write_volume(tmp_path / "d34.nii.gz", Volume(np.ones((3, 3, 3, 34), np.float32), affine)),
                  table=table)


# ---------------------------------------------------------------------------------------------
# Bad inputs: one-line message naming the file and the problem, nothing written


def test_bad_images(tmp_path):
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(np.ones((10, 10), np.float32), affine), str(tmp_path / "flat2d.nii.gz"))
    fails_cleanly(tmp_path, r"flat2d.nii.gz: is a 2D image.*3D volume is needed", read_volume, tmp_path / "flat2d.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((10, 10, 1), np.float32), affine), str(tmp_path / "slice.nii.gz"))
    fails_cleanly(tmp_path, r"slice.nii.gz: is a single slice", read_volume, tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6), np.float32)), str(tmp_path / "flat.nrrd"))
    fails_cleanly(tmp_path, r"flat.nrrd: is a 2D image", read_volume, tmp_path / "flat.nrrd")
    fails_cleanly(tmp_path, r"nowhere.nii.gz: file does not exist", read_volume, tmp_path / "nowhere.nii.gz")
    fails_cleanly(tmp_path, r"is a folder", read_volume, tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    fails_cleanly(tmp_path, r"notes.txt: unknown image format", read_volume, tmp_path / "notes.txt")
    fails_cleanly(tmp_path, r"4D .*single 3D volume", read_volume,
                  write_volume(tmp_path / "four.nii.gz", Volume(np.ones((3, 3, 3, 2), np.float32))), allow_4d=False)
    # an Analyze header without its .img
    with pytest.warns(UserWarning, match="orientation and origin are not stored"):
        write_volume(tmp_path / "lonely.hdr", Volume(np.ones((3, 3, 3), np.float32)))
    (tmp_path / "lonely.img").unlink()
    fails_cleanly(tmp_path, r"lonely.img: file does not exist", read_volume, tmp_path / "lonely.hdr")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_truncated_files(tmp_path, suffix):
    data = np.random.default_rng(3).random((20, 20, 20)).astype(np.float32)
    full = write_volume(tmp_path / f"full{suffix}", Volume(data, np.eye(4)))
    blob = full.read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(blob[: len(blob) // 2])
    msg = fails_cleanly(tmp_path, rf"cut{suffix.replace('.', '[.]')}: cannot be read", read_volume, tmp_path / f"cut{suffix}")
    assert "truncated" in str(msg) or "read as an image" in str(msg)
    (tmp_path / f"head{suffix}").write_bytes(blob[:100])  # not even a whole header
    fails_cleanly(tmp_path, rf"head{suffix.replace('.', '[.]')}: cannot be read", read_volume, tmp_path / f"head{suffix}")


def test_nan_and_inf_voxels_become_zero_with_a_count(tmp_path):
    data = np.ones((6, 6, 6), np.float32)
    data[0, 0, 0], data[1, 2, 3], data[5, 5, 5], data[2, 2, 2] = np.nan, np.inf, -np.inf, np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "holes.nii.gz"))
    with pytest.warns(UserWarning, match=r"holes.nii.gz: 4 NaN/Inf voxels set to 0"):
        vol = read_volume(tmp_path / "holes.nii.gz")
    assert np.isfinite(vol.data).all() and (vol.data == 0).sum() == 4 and vol.data.sum() == 216 - 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file warns about nothing
        read_volume(write_volume(tmp_path / "clean.nii.gz", vol))


def test_bad_dwi_inputs(tmp_path):
    affine = oblique_affine()
    dwi = write_volume(tmp_path / "dwi.nii.gz", Volume(np.ones((4, 4, 3, 7), np.float32), affine))
    fails_cleanly(tmp_path, r"dwi.nii.gz: no b-values.*dwi.bval", read_dwi, dwi)
    g = Gradients(np.r_[0.0, np.full(5, 2000.0)], np.vstack([np.zeros(3), np.eye(3), [[1, 1, 0], [0, 1, 1]]]))
    write_fsl_gradients(tmp_path / "six", g, affine)
    fails_cleanly(tmp_path, r"dwi.nii.gz: has 7 volumes but six.bvec lists 6 gradients", read_dwi, dwi,
                  tmp_path / "six.bval", tmp_path / "six.bvec")
    fails_cleanly(tmp_path, r"missing.bval: file does not exist", read_dwi, dwi, tmp_path / "missing.bval",
                  tmp_path / "six.bvec")
    fails_cleanly(tmp_path, r"both a .bval and a .bvec", read_dwi, dwi, tmp_path / "six.bval")
    (tmp_path / "bad.bval").write_text("0 2000 x\n")
    fails_cleanly(tmp_path, r"not a numeric gradient table", read_dwi, dwi, tmp_path / "bad.bval", tmp_path / "six.bvec")
    (tmp_path / "short.bval").write_text("0 2000 2000\n")
    fails_cleanly(tmp_path, r"short.bval: 3 b-values but six.bvec has 6 directions", read_dwi, dwi,
                  tmp_path / "short.bval", tmp_path / "six.bvec")
    three = write_volume(tmp_path / "three.nii.gz", Volume(np.ones((4, 4, 3), np.float32), affine))
    fails_cleanly(tmp_path, r"three.nii.gz: is 3D.*4D diffusion-weighted image is needed", read_dwi, three,
                  tmp_path / "six.bval", tmp_path / "six.bvec")
    # a NRRD without DWI keys
    plain = write_volume(tmp_path / "plain.nrrd", Volume(np.ones((4, 4, 3, 2), np.float32), affine))
    fails_cleanly(tmp_path, r"plain.nrrd: NRRD has no DWMRI_b-value", read_dwi, plain)
    (tmp_path / "table.txt").write_text("0 0 0\n1 0 0\n")
    fails_cleanly(tmp_path, r"table.txt: expected 4 columns", read_dwi, dwi, table=tmp_path / "table.txt")

