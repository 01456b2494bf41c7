"""Reading NIfTI / Analyze images without a second full-size copy (issue 13, part 3): ``read_volume`` reads
the voxels piece by piece into the returned float32 array, bit for bit what nibabel's own reading gives
(cast to float32, NaN/Inf set to 0), for every voxel type, scaling, byte order, offset and file kind."""
from __future__ import annotations

import gzip
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import MRHNetLib.data.io as io
from MRHNetLib.data.io import read_volume, volume_shape
from MRHNetLib.errors import MRHNetError


def nibabel_reference(path: Path) -> tuple[np.ndarray, int]:
    """What ``read_volume`` returned before issue 13's reading change: nibabel's whole array, cast to
    float32, NaN/Inf replaced by ``np.where`` (and how many)."""
    data = np.asanyarray(nib.load(str(path)).dataobj)
    data = np.asarray(data.reshape(volume_shape(data.shape, path)), dtype=np.float32)
    bad = ~np.isfinite(data)
    n = int(bad.sum())
    if n:
        data = np.where(bad, 0.0, data).astype(np.float32)
    return data, n


def write_image(path: Path, data: np.ndarray, dtype, *, endian: str = "<", slope: float = np.nan,
                inter: float = np.nan, offset: int | None = None, kind: str = "nifti") -> Path:
    """Write ``data`` as raw voxels of ``dtype`` behind a header written by hand (so that scaling, byte
    order and offset are exactly what is asked): ``kind`` nifti (.nii / .nii.gz by the name), pair
    (NIfTI .hdr + .img) or analyze (Analyze 7.5 .hdr + .img)."""
    cls = {"nifti": nib.Nifti1Header, "pair": nib.nifti1.Nifti1PairHeader, "analyze": nib.AnalyzeHeader}[kind]
    hdr = cls(endianness=endian)
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(dtype)
    if kind != "analyze":
        hdr["scl_slope"], hdr["scl_inter"] = slope, inter
    raw = np.asarray(data).astype(np.dtype(dtype).newbyteorder(endian)).tobytes(order="F")
    opener = gzip.open if str(path).endswith(".gz") else open
    if kind == "nifti":
        offset = 352 if offset is None else offset
        hdr.set_data_offset(offset)
        head = hdr.binaryblock + b"\0" * 4
        with opener(path, "wb") as f:
            f.write(head + b"\0" * (offset - len(head)) + raw)
        return path
    offset = 0 if offset is None else offset
    hdr.set_data_offset(offset)
    path = path.with_suffix(".hdr")
    path.write_bytes(hdr.binaryblock)
    path.with_suffix(".img").write_bytes(b"\0" * offset + raw)
    return path


def assert_same_as_nibabel(path: Path) -> None:
    expected, n_bad = nibabel_reference(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_volume(path).data
    messages = [str(w.message) for w in caught if "NaN/Inf" in str(w.message)]
    assert messages == ([f"{path}: {n_bad} NaN/Inf voxels set to 0"] if n_bad else [])
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert got.flags.f_contiguous == expected.flags.f_contiguous and got.flags.c_contiguous == expected.flags.c_contiguous
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), path  # bit for bit, -0.0 included


def values(rng, shape, dtype) -> np.ndarray:
    """Random voxels covering ``dtype``'s range (floats: also -0.0, NaN, +-Inf, subnormals, huge)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = max(int(info.min), -(2 ** 62)), min(int(info.max), 2 ** 62)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    v = (rng.normal(size=shape) * 10.0 ** rng.integers(-3, 4, size=shape)).astype(dtype)
    flat = v.reshape(-1)
    specials = [np.nan, np.inf, -np.inf, -0.0, np.finfo(np.float32).tiny / 8]
    if dtype.itemsize == 8:
        specials += [1e300, -1e39, 1e-320]  # beyond float32: Inf (counted) and 0 after the cast
    for k, s in enumerate(specials):
        flat[(7 * k + 3) % flat.size] = s
    return v


CASES = [  # (voxel type, endianness, slope, inter)
    ("<f4", "<", np.nan, np.nan), (">f4", ">", np.nan, np.nan), ("<f4", "<", 2.5, -1.0), ("<f4", "<", 1.0, 0.0),
    ("<f8", "<", np.nan, np.nan), (">f8", ">", 0.5, 3.0),
    ("<i2", "<", np.nan, np.nan), ("<i2", "<", 0.037, -12.5), (">i2", ">", 1.7, 100.0), ("<i2", "<", 0.0, 4.0),
    ("u1", "<", np.nan, np.nan), ("u1", "<", 0.25, 0.0), ("i1", "<", 3.0, 0.0),
    ("<u2", "<", 2.0, 1.0), ("<i4", "<", 1e-3, 7.0), (">i4", ">", np.nan, np.nan), ("<u4", "<", 1e30, 0.0),
    ("<i8", "<", 1.5, -2.0), ("<i8", "<", np.nan, np.nan),
]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype,endian,slope,inter", CASES)
def test_nifti_voxels_equal_nibabels(tmp_path, suffix, dtype, endian, slope, inter, monkeypatch):
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 1000)  # many pieces, none aligned with the volume's rows
    rng = np.random.default_rng(abs(hash((dtype, slope))) % 2 ** 32)
    for shape, offset in (((6, 5, 4), None), ((7, 3, 5, 9), 1000), ((5, 4, 3, 1), 480), ((4, 3, 5, 1, 2), None)):
        path = write_image(tmp_path / f"img{len(shape)}{suffix}", values(rng, shape, dtype), dtype, endian=endian,
                           slope=slope, inter=inter, offset=offset)
        assert_same_as_nibabel(path)


@pytest.mark.parametrize("kind", ["pair", "analyze"])
@pytest.mark.parametrize("dtype,endian,slope,inter", [c for c in CASES if c[0] in ("<f4", ">f4", ">i2", "<i2", "u1")])
def test_analyze_and_pairs_equal_nibabels(tmp_path, kind, dtype, endian, slope, inter, monkeypatch):
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 4096)
    rng = np.random.default_rng(3)
    for shape, offset in (((9, 8, 7), None), ((6, 5, 4, 3), 64)):
        path = write_image(tmp_path / f"a{len(shape)}.img", values(rng, shape, dtype), dtype, endian=endian,
                           slope=slope, inter=inter, offset=offset, kind=kind)
        assert_same_as_nibabel(path)
        assert_same_as_nibabel(path.with_suffix(".img"))


@pytest.mark.parametrize("piece", [1, 12, 1 << 26])
def test_written_images_and_piece_sizes(tmp_path, piece, monkeypatch):
    """Images as nibabel writes them (its own scaling of int16 and uint8), any piece size."""
    monkeypatch.setattr(io, "READ_PIECE_BYTES", piece)
    rng = np.random.default_rng(piece)
    data = values(rng, (8, 7, 6, 3), np.float32)
    for dtype in (np.float32, np.int16, np.uint8, np.float64):
        img = nib.Nifti1Image(np.nan_to_num(data, posinf=0, neginf=0) if dtype not in (np.float32, np.float64) else data,
                              np.eye(4))
        img.set_data_dtype(dtype)
        for suffix in (".nii", ".nii.gz"):
            path = tmp_path / f"w-{np.dtype(dtype).name}{suffix}"
            nib.save(img, str(path))
            assert_same_as_nibabel(path)
        path = tmp_path / f"w2-{np.dtype(dtype).name}.nii.gz"  # NIfTI-2
        nib.save(nib.Nifti2Image(np.asanyarray(img.dataobj), np.eye(4)), str(path))
        assert type(nib.load(str(path))) is nib.Nifti2Image
        assert_same_as_nibabel(path)


def test_unusual_voxel_types_go_through_nibabel(tmp_path, monkeypatch):
    """Complex and RGB voxels are not read in pieces; the result is what nibabel's own path gave."""
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 64)
    rng = np.random.default_rng(1)
    c = (rng.normal(size=(5, 4, 3)) + 1j * rng.normal(size=(5, 4, 3))).astype(np.complex64)
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(c, np.eye(4)), str(path))
    assert not io._plain_proxy(nib.load(str(path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's ComplexWarning, in both
        assert_same_as_nibabel(path)
    rgb = np.zeros((5, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    img = nib.Nifti1Image(rgb, np.eye(4))
    nib.save(img, str(tmp_path / "rgb.nii"))
    assert not io._plain_proxy(nib.load(str(tmp_path / "rgb.nii")))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_voxels_refused(tmp_path, suffix, monkeypatch):
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 256)
    path = write_image(tmp_path / f"t{suffix}", np.ones((8, 8, 8, 4), np.float32), "<f4")
    whole = gzip.decompress(path.read_bytes()) if suffix == ".nii.gz" else path.read_bytes()
    cut = whole[: len(whole) - 1000]
    path.write_bytes(gzip.compress(cut) if suffix == ".nii.gz" else cut)
    with pytest.raises(MRHNetError, match="truncated or damaged"):
        read_volume(path)
    if suffix == ".nii.gz":  # a gzip stream cut short (no end marker)
        path.write_bytes(gzip.compress(whole)[:-4000])
        with pytest.raises(MRHNetError, match="truncated or damaged"):
            read_volume(path)


def test_nrrd_and_non_contiguous_cleaning(tmp_path, monkeypatch):
    """The slab-wise cleaning of arrays read by SimpleITK or nibabel's own path: same count, same zeros."""
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 40)
    rng = np.random.default_rng(2)
    data = values(rng, (9, 8, 7, 3), np.float32)
    for view in (data, np.asfortranarray(data), data[::2, :, ::-1], np.moveaxis(data, 3, 0)[1:]):
        expected = np.where(np.isfinite(view), view, np.float32(0))
        got, n = io._clean(view.copy() if not view.flags.owndata else view.copy(order="K"))
        assert n == int((~np.isfinite(view)).sum()) and np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    vol = io.Volume(np.ones((6, 5, 4), np.float32), np.eye(4), "x")
    vol.data[1, 2, 3] = np.nan
    io.write_volume(tmp_path / "x.nrrd", vol)
    with pytest.warns(UserWarning, match="1 NaN/Inf voxels set to 0"):
        got = read_volume(tmp_path / "x.nrrd").data
    assert got[1, 2, 3] == 0 and np.count_nonzero(got == 1) == got.size - 1


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_reading_a_gzipped_image_allocates_no_second_copy(tmp_path, dtype, monkeypatch):
    """Reading a .nii.gz (here 12 MB of float32 voxels, NaNs among them) allocates the returned array and
    pieces of bounded size, not a second full-size copy of the voxels (nibabel's whole-file read holds the
    decompressed request twice, and the old NaN cleaning two voxel-sized masks): numpy's and Python's
    allocations are traced by tracemalloc."""
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 256 << 10)
    shape = (96, 64, 32, 16)
    data = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape, order="F") % 997) * np.float32(0.25)
    data[3, 4, 5, :] = np.nan
    if dtype is np.int16:
        data = np.nan_to_num(data)
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_data_dtype(dtype)
    path = tmp_path / "big.nii.gz"
    nib.save(img, str(path))
    out_bytes = data.size * 4
    read_volume(path)  # warm-up: imports
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = read_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.15 * out_bytes, f"reading allocated {peak / 1e6:.1f} MB for a {out_bytes / 1e6:.1f} MB image"
    expected, _ = nibabel_reference(path)
    assert np.array_equal(volume.data.view(np.uint32), expected.view(np.uint32))


# ---------------------------------------------------------------------------------------------
# NRRD: the voxels of raw / gzip / bzip2 NRRDs (attached or detached) are read piece by piece too; the
# result must be exactly what SimpleITK's ReadImage + GetArrayFromImage gave (shape, memory order, bits, affine)


def sitk_reference(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """What ``read_volume`` returned for a NRRD before this change: SimpleITK's array (``_read_sitk``), reshaped,
    cleaned slab by slab, and ``_sitk_to_affine`` of the image; and the NaN/Inf count."""
    image, data = io._read_sitk(path)
    affine = io._sitk_to_affine(image)
    data, n = io._clean(data.reshape(volume_shape(data.shape, path)))
    return data, affine, n


def assert_same_as_sitk(path: Path, pieces: bool = True, reference: Path | None = None) -> np.ndarray:
    """``read_volume(path)`` is ``sitk_reference(reference or path)`` bit for bit, strides and affine included."""
    expected, affine, n_bad = sitk_reference(reference or path)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert (io._nrrd_plan(path, reader) is not None) == pieces, path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_volume(path)
    messages = [str(w.message) for w in caught if "NaN/Inf" in str(w.message)]
    assert messages == ([f"{path}: {n_bad} NaN/Inf voxels set to 0"] if n_bad else [])
    assert got.data.dtype == np.float32 and got.data.shape == expected.shape
    assert got.data.strides == expected.strides, (got.data.strides, expected.strides)
    assert np.array_equal(got.data.view(np.uint32), expected.view(np.uint32)), path
    assert np.array_equal(got.affine, affine) and got.affine.dtype == affine.dtype, (got.affine, affine)
    return got.data


NRRD_TYPES = {"i1": "int8", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint", "i8": "int64",
              "u8": "uint64", "f4": "float", "f8": "double"}
OBLIQUE = np.array([[0.8, -0.36, 0.48], [0.6, 0.48, -0.64], [0.0, 0.8, 0.6]]) * np.array([0.9, 1.25, 2.0])


def write_nrrd(path: Path, data: np.ndarray, dtype: str, *, endian: str = "little", encoding: str = "raw",
               data_file: str | None = None, layout: str = "3d", directions: np.ndarray = OBLIQUE,
               origin=(-12.5, 30.25, 7.0)) -> Path:
    """Write ``data`` (indexed in file order, NRRD axis 0 first) as a NRRD by hand: ``layout`` 3d, vector (axis 0
    a list of components, then 3 space axes), listlast (3 space axes, then a list) or plain4d (4 axes, no
    space); the voxels attached or in ``data_file`` beside the header."""
    np_type = np.dtype(dtype).newbyteorder("<" if endian == "little" else ">")
    raw = np.asarray(data).astype(np_type).tobytes(order="F")
    raw = {"raw": lambda b: b, "gzip": gzip.compress, "bzip2": __import__("bz2").compress}[encoding](raw)
    vec = lambda v: "(" + ",".join(repr(float(x)) for x in v) + ")"  # noqa: E731
    lines = ["NRRD0005", f"type: {NRRD_TYPES[np.dtype(dtype).str[1:]]}", f"dimension: {data.ndim}",
             "sizes: " + " ".join(str(n) for n in data.shape), f"encoding: {encoding}"]
    if np_type.itemsize > 1:
        lines.append(f"endian: {endian}")
    if layout != "plain4d":
        dirs = [vec(d) for d in directions.T]
        kinds = ["domain"] * 3
        if layout == "vector":
            dirs, kinds = ["none"] + dirs, ["list"] + kinds
        elif layout == "listlast":
            dirs, kinds = dirs + ["none"], kinds + ["list"]
        lines += ["space: left-posterior-superior", "space directions: " + " ".join(dirs),
                  "kinds: " + " ".join(kinds), f"space origin: {vec(origin)}"]
    if data_file is not None:
        lines.append(f"data file: {data_file}")
        (path.parent / data_file).write_bytes(raw)
        raw = b""
    path.write_bytes(("\n".join(lines) + "\n\n").encode() + raw)
    return path


NRRD_CASES = [("<i2", "little"), ("<i2", "big"), ("u1", "little"), ("<f4", "little"), ("<f4", "big"),
              ("<f8", "little"), ("<f8", "big"), ("<u2", "big"), ("<i4", "little"), ("<u4", "big"), ("i1", "little"),
              ("<i8", "big"), ("<u8", "little")]


@pytest.mark.parametrize("encoding", ["raw", "gzip", "bzip2"])
@pytest.mark.parametrize("detached", [False, True])
@pytest.mark.parametrize("dtype,endian", NRRD_CASES)
def test_nrrd_voxels_equal_simpleitks(tmp_path, encoding, detached, dtype, endian, monkeypatch):
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 1000)  # many pieces, none aligned with the volume's rows
    rng = np.random.default_rng(abs(hash((dtype, endian, encoding))) % 2 ** 32)
    for layout, shape in (("3d", (7, 6, 5)), ("vector", (4, 7, 6, 5)), ("vector", (1, 7, 6, 5)),
                          ("listlast", (7, 6, 5, 3)), ("plain4d", (5, 4, 3, 6))):
        suffix = ".nhdr" if detached else ".nrrd"
        name = f"{layout}-{shape[0]}"
        data_file = None if not detached else f"{name}.raw" + {"raw": "", "gzip": ".gz", "bzip2": ".bz2"}[encoding]
        voxels = values(rng, shape, dtype)
        path = write_nrrd(tmp_path / f"{name}{suffix}", voxels, dtype, endian=endian, encoding=encoding,
                          data_file=data_file, layout=layout)
        reference = None
        if encoding == "bzip2":  # SimpleITK's NrrdIO has no bzip2 (it refused these): compare with a raw twin
            reference = write_nrrd(tmp_path / f"{name}-twin.nrrd", voxels, dtype, endian=endian, layout=layout)
            with pytest.raises(MRHNetError):
                io._read_sitk(path)
        # SimpleITK reads a list axis that is not the fastest by permuting it: that one stays on its path
        if layout == "listlast" and encoding == "bzip2":
            continue
        assert_same_as_sitk(path, pieces=layout != "listlast", reference=reference)


@pytest.mark.parametrize("piece", [1, 12, 1 << 26])
def test_nrrd_written_by_the_engine(tmp_path, piece, monkeypatch):
    """NRRDs as ``write_volume`` (SimpleITK, gzip) and ``write_dwi_nrrd`` (pynrrd, gzip, DWMRI keys) write them;
    ``read_dwi`` gives the same data and gradients as before."""
    monkeypatch.setattr(io, "READ_PIECE_BYTES", piece)
    rng = np.random.default_rng(piece)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ OBLIQUE
    affine[:3, 3] = (4.0, -2.5, 11.0)
    data = values(rng, (8, 7, 6, 5), np.float32)
    for d in (data, data[..., 2]):
        path = io.write_volume(tmp_path / f"w{d.ndim}.nrrd", io.Volume(d, affine, "x"))
        got = assert_same_as_sitk(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.allclose(read_volume(path).affine, affine)
        assert np.array_equal(got.view(np.uint32), np.where(np.isfinite(d), d, np.float32(0)).view(np.uint32))
    grads = io.Gradients(np.array([0, 1000, 1000, 2000, 2000.0]), rng.normal(size=(5, 3)))
    path = io.write_dwi_nrrd(tmp_path / "dwi.nrrd", io.Volume(data, affine, "dwi"), grads)
    assert_same_as_sitk(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume, got_grads = io.read_dwi(path)
    expected, expected_affine, _ = sitk_reference(path)
    assert np.array_equal(volume.data.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(volume.affine, expected_affine)
    reference = io.read_nrrd_gradients(path)
    assert np.array_equal(got_grads.bvals, reference.bvals) and np.array_equal(got_grads.bvecs, reference.bvecs)
    assert np.allclose(got_grads.bvals, grads.bvals) and np.allclose(got_grads.bvecs[1:], grads.bvecs[1:], atol=1e-6)


def test_nrrd_other_encodings_go_through_simpleitk(tmp_path):
    """ascii (and a byte skip) are not read in pieces; the result is SimpleITK's, as before."""
    rng = np.random.default_rng(5)
    data = rng.integers(-300, 300, size=(5, 4, 3)).astype(np.int16)
    path = write_nrrd(tmp_path / "a.nrrd", data, "<i2")
    text = path.read_bytes().split(b"\n\n", 1)[0].replace(b"encoding: raw", b"encoding: ascii")
    path.write_bytes(text + b"\n\n" + " ".join(str(v) for v in data.reshape(-1, order="F")).encode() + b"\n")
    assert_same_as_sitk(path, pieces=False)
    path = write_nrrd(tmp_path / "s.nhdr", data, "<i2", data_file="s.raw")
    path.write_bytes(path.read_bytes().replace(b"data file:", b"byte skip: 16\ndata file:"))
    (tmp_path / "s.raw").write_bytes(b"x" * 16 + (tmp_path / "s.raw").read_bytes())
    assert_same_as_sitk(path, pieces=False)


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_nrrd_truncated_or_missing_data_refused(tmp_path, encoding, monkeypatch):
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 256)
    data = np.ones((8, 8, 8, 4), np.float32)
    path = write_nrrd(tmp_path / "t.nhdr", data, "<f4", encoding=encoding, data_file="t.raw", layout="plain4d")
    whole = (tmp_path / "t.raw").read_bytes()
    (tmp_path / "t.raw").write_bytes(whole[:-1000] if encoding == "raw" else whole[:-400])
    with pytest.raises(MRHNetError, match="truncated or damaged"):
        read_volume(path)
    (tmp_path / "t.raw").unlink()
    with pytest.raises(MRHNetError, match="does not exist|cannot be read"):
        read_volume(path)


def test_reading_a_gzipped_nrrd_allocates_no_second_copy(tmp_path, monkeypatch):
    """Reading a gzip NRRD of int16 voxels (12.6 MB as float32) allocates the returned array and pieces of
    bounded size; SimpleITK's path allocated GetArrayFromImage's int16 copy and then the float32 cast (and its
    own C++ buffer, which tracemalloc does not see)."""
    monkeypatch.setattr(io, "READ_PIECE_BYTES", 256 << 10)
    shape = (96, 64, 32, 16)
    data = (np.arange(np.prod(shape), dtype=np.int64).reshape(shape, order="F") % 997).astype(np.int16)
    path = write_nrrd(tmp_path / "big.nrrd", np.moveaxis(data, 3, 0), "<i2", encoding="gzip", layout="vector")
    out_bytes = data.size * 4
    read_volume(path)  # warm-up: imports
    tracemalloc.start()
    try:
        volume = read_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.15 * out_bytes, f"reading allocated {peak / 1e6:.1f} MB for a {out_bytes / 1e6:.1f} MB image"
    assert volume.data.shape == shape and np.array_equal(volume.data, data.astype(np.float32))
    expected, _, _ = sitk_reference(path)
    assert np.array_equal(volume.data.view(np.uint32), expected.view(np.uint32))
