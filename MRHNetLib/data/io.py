"""Reading and writing images and gradient tables.

One in-memory form for every image: :class:`Volume`, a float32 array indexed (i, j, k[, t]) with a
4 x 4 voxel-to-RAS affine in millimetres (the NIfTI / nibabel convention). NIfTI and Analyze 7.5 go
through nibabel, NRRD (including Slicer's DWI NRRD and its gradient keys) through SimpleITK (raw, gzip and
bzip2 NRRD voxels are read by the engine itself, piece by piece, exactly as SimpleITK reads them).
Writers keep the geometry and write atomically (a temporary file in the same folder, then a rename).

Gradient directions inside the engine are unit vectors in RAS world coordinates (see
:func:`fsl_to_world` for the conversion from FSL's voxel-frame bvecs).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MRHNetError
from ..files import atomic_output, atomic_write_text

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ANALYZE_SUFFIXES = (".hdr", ".img")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """An image: ``data`` indexed (i, j, k[, t]) and ``affine`` mapping voxel (i, j, k, 1) to RAS mm."""

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    name: str = ""

    @property
    def shape3(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[:3])  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    def with_data(self, data: np.ndarray, name: str | None = None) -> "Volume":
        """A new volume on the same grid."""
        return Volume(data, self.affine.copy(), self.name if name is None else name)


@dataclass
class Gradients:
    """b-values (s/mm^2) and unit gradient directions in RAS world coordinates, one row per volume."""

    bvals: np.ndarray
    bvecs: np.ndarray

    def __post_init__(self) -> None:
        self.bvals = np.asarray(self.bvals, dtype=float).reshape(-1)
        self.bvecs = np.asarray(self.bvecs, dtype=float).reshape(-1, 3)
        if len(self.bvals) != len(self.bvecs):
            raise MRHNetError(f"gradient table has {len(self.bvals)} b-values but {len(self.bvecs)} directions")
        norms = np.linalg.norm(self.bvecs, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.bvecs = np.where(norms[:, None] > 1e-6, self.bvecs / norms[:, None], 0.0)

    def __len__(self) -> int:
        return len(self.bvals)


def suffix_of(path: str | os.PathLike) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else (".nrrd" if name.endswith(".seg.nrrd") else Path(name).suffix)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise MRHNetError(f"{path}: file does not exist")
    if path.is_dir():
        raise MRHNetError(f"{path}: is a folder, expected an image file")


# Reading works in pieces of at most this many bytes of voxel data (raw, scaled or float32), so that no
# second full-size copy of an image exists at any time (issue 13, part 3).
READ_PIECE_BYTES = 16 << 20


def _zero_nonfinite(piece: np.ndarray) -> int:
    """Set the NaN/Inf voxels of a float32 ``piece`` to 0 in place; returns how many there were."""
    bad = ~np.isfinite(piece)
    n = int(np.count_nonzero(bad))
    if n:
        piece[bad] = 0.0
    return n


def _flat_pieces(data: np.ndarray, voxels: int):
    """Writable views covering every element of ``data`` once, each of at most ``voxels`` elements where
    the layout allows (contiguous arrays: flat runs; others: sub-arrays along the slowest axis)."""
    if data.flags.c_contiguous or data.flags.f_contiguous:
        flat = data.reshape(-1, order="C" if data.flags.c_contiguous else "F")
        for a in range(0, flat.size, voxels):
            yield flat[a:a + voxels]
    elif data.ndim <= 1 or data.size <= voxels:
        yield data
    else:
        axis = int(np.argmax(np.abs(data.strides)))
        for k in range(data.shape[axis]):
            yield from _flat_pieces(data[(slice(None),) * axis + (k,)], voxels)


def _clean(data: np.ndarray) -> tuple[np.ndarray, int]:
    """``data`` as float32, NaN/Inf set to 0 in place, slab by slab (no voxel-sized masks); returns the
    array and how many voxels were set."""
    data = np.asarray(data, dtype=np.float32)
    if not data.flags.writeable:
        data = data.copy(order="K")
    voxels = max(1, READ_PIECE_BYTES // 4)
    return data, sum(_zero_nonfinite(piece) for piece in _flat_pieces(data, voxels))


def _warn_nonfinite(n: int, path: Path) -> None:
    if n:
        warnings.warn(f"{path}: {n} NaN/Inf voxels set to 0", stacklevel=3)


def _sitk_to_affine(image) -> np.ndarray:
    """Voxel-to-RAS affine of a SimpleITK image (ITK geometry is LPS)."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection()).reshape(dim, dim)[:3, :3]
    spacing = np.array(image.GetSpacing())[:3]
    origin = np.array(image.GetOrigin())[:3]
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return affine


def _affine_to_sitk(affine: np.ndarray) -> tuple[list, list, list]:
    """(spacing, direction, origin) of a voxel-to-RAS affine, in ITK's LPS terms."""
    lin = LPS_TO_RAS @ affine[:3, :3]
    spacing = np.sqrt((lin ** 2).sum(axis=0))
    direction = lin / spacing
    origin = LPS_TO_RAS @ affine[:3, 3]
    return spacing.tolist(), direction.reshape(-1).tolist(), origin.tolist()


def _read_sitk(path: Path):
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MRHNetError(f"{path}: cannot be read as an image ({_first_line(exc)})") from None
    array = sitk.GetArrayFromImage(image)  # (k, j, i[, c]) or (t, k, j, i)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)  # components first, then reverse spatial axes below
        array = np.transpose(array, (3, 2, 1, 0)) if array.ndim == 4 else array
    else:
        array = np.transpose(array, tuple(range(array.ndim))[::-1])
    return image, array


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "ERROR" in line.upper() or "exception" in line.lower()]
    return (useful or lines or [type(exc).__name__])[-1][:200]


def _plain_proxy(img) -> bool:
    """Whether ``img``'s voxels can be read by :func:`_read_nibabel_pieces` exactly as nibabel reads them:
    a NIfTI / Analyze image whose plain ``ArrayProxy`` points at a file of integer or float32/64 voxels
    (not RGB, complex or other unusual types; those go through nibabel)."""
    from nibabel.analyze import AnalyzeImage
    from nibabel.arrayproxy import ArrayProxy

    proxy = img.dataobj
    if not isinstance(img, AnalyzeImage) or type(proxy) is not ArrayProxy:
        return False
    dtype = np.dtype(proxy.dtype)
    plain = (dtype.kind in "iu" and dtype.itemsize in (1, 2, 4, 8)) or (dtype.kind == "f" and dtype.itemsize in (4, 8))
    return (plain and dtype.fields is None and dtype.subdtype is None and getattr(proxy, "order", None) in ("C", "F")
            and isinstance(proxy.file_like, (str, os.PathLike)))


def _read_nibabel_pieces(img, path: Path) -> tuple[np.ndarray, int]:
    """The voxels of a NIfTI / Analyze image (see :func:`_plain_proxy`) as nibabel's
    ``np.asanyarray(img.dataobj)`` gives them cast to float32, bit for bit, NaN/Inf set to 0: read into one
    preallocated float32 array in nibabel's shape and memory order, piece by piece (at most
    ``READ_PIECE_BYTES`` of raw or scaled voxels at a time), each piece scaled by nibabel's own
    ``apply_read_scaling`` with the scale factors prepared as ``ArrayProxy`` prepares them. Returns the array
    and the number of NaN/Inf voxels set to 0."""
    from nibabel.openers import ImageOpener
    from nibabel.volumeutils import apply_read_scaling

    proxy = img.dataobj
    shape = tuple(int(n) for n in proxy.shape)
    raw_dtype = np.dtype(proxy.dtype)
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    if np.can_cast(slope, slope.dtype):  # as ArrayProxy._get_scaled(dtype=None): the slope's own dtype
        slope = slope.astype(slope.dtype)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    size = int(np.prod(shape, dtype=np.int64))
    flat = np.empty(size, dtype=np.float32)
    scaled = apply_read_scaling(np.zeros(1, raw_dtype), slope, inter)
    direct = raw_dtype.kind == "f" and raw_dtype.itemsize == 4 and scaled.dtype.kind == "f" and \
        scaled.dtype.itemsize == 4 and (float(slope), float(inter)) == (1.0, 0.0)
    widest = max(raw_dtype.itemsize, scaled.dtype.itemsize, 4)
    with ImageOpener(proxy.file_like, "rb") as f:
        f.seek(proxy.offset)
        bad = _read_pieces(f, flat, raw_dtype, max(1, READ_PIECE_BYTES // widest),
                           None if direct else (lambda raw: apply_read_scaling(raw, slope, inter)),
                           lambda got: f"{path}: cannot be read (expected {size * raw_dtype.itemsize} bytes of "
                                       f"voxel data, got {got}); is the file truncated or damaged?")
    return flat.reshape(shape, order=proxy.order), bad


def _read_pieces(f, flat: np.ndarray, dtype: np.dtype, voxels: int, convert, truncated) -> int:
    """Fill the float32 ``flat`` with its size in voxels of ``dtype`` from the open file ``f``, ``voxels`` at a
    time: ``convert(raw)`` gives a piece's values (None: float32 voxels read in place, byte-swapped if need be).
    NaN/Inf are set to 0; returns their count. ``truncated(bytes read)`` is the error when the data end early."""
    size = flat.size
    raw = None if convert is None else np.empty(min(voxels, size), dtype=dtype)
    bad = 0
    for a in range(0, size, voxels):
        m = min(voxels, size - a)
        target = flat[a:a + m] if convert is None else raw[:m]
        view = memoryview(target).cast("B")
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise MRHNetError(truncated(a * dtype.itemsize + got))
            got += n
        piece = flat[a:a + m]
        if convert is None:
            if not dtype.isnative:
                piece.byteswap(inplace=True)
        else:
            np.copyto(piece, convert(target), casting="unsafe")
        bad += _zero_nonfinite(piece)
    return bad


_NRRD_TYPES = {  # NRRD type names (teem's spellings) -> numpy kind and size; "block" has none
    **dict.fromkeys(("signed char", "int8", "int8_t", "char"), "i1"),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "i4"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t"), "i8"),
    **dict.fromkeys(("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
    "float": "f4", "double": "f8",
}
_NRRD_OPENERS = {"raw": None, "gzip": "gzip", "gz": "gzip", "bzip2": "bz2", "bz2": "bz2"}


def _nrrd_plan(path: Path, reader):
    """How :func:`_read_nrrd_pieces` reads a NRRD whose geometry SimpleITK's ``reader`` has read
    (``ReadImageInformation``): (voxel dtype, sizes in file order, data file or None for attached data, opener name or
    None, header length in bytes, whether axis 0 is SimpleITK's vector axis), or None when the file is outside
    what it reads exactly as SimpleITK does (ascii/hex encodings, line or byte skips, lists of data files, a
    vector axis that is not the fastest, ...): those go through SimpleITK's ``ReadImage``."""
    import nrrd

    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = nrrd.read_header(f)
            offset = f.tell()
    except Exception:  # what pynrrd cannot parse, SimpleITK may still read
        return None
    encoding = str(header.get("encoding", "")).strip().lower()
    kind = _NRRD_TYPES.get(" ".join(str(header.get("type", "")).lower().split()))
    sizes = tuple(int(n) for n in np.asarray(header.get("sizes", ()), dtype=np.int64).reshape(-1))
    skips = (int(header.get("line skip", header.get("lineskip", 0))),
             int(header.get("byte skip", header.get("byteskip", 0))))
    data_file = header.get("data file", header.get("datafile"))
    if encoding not in _NRRD_OPENERS or kind is None or skips != (0, 0) or not sizes or min(sizes) < 1:
        return None
    if data_file is not None:
        data_file = str(data_file).strip()
        if not data_file or " " in data_file or data_file.upper().startswith("LIST"):
            return None
        data_file = Path(data_file) if os.path.isabs(data_file) else path.parent / data_file
    dtype = np.dtype(kind)
    if dtype.itemsize > 1:
        endian = str(header.get("endian", "")).strip().lower()
        if endian not in ("little", "big"):
            return None
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    components = reader.GetNumberOfComponents()
    itk_size = tuple(int(n) for n in reader.GetSize())
    if components > 1:  # SimpleITK: a vector image (c fastest in memory), here when the file's axis 0 is it
        if reader.GetDimension() != 3 or sizes != (components,) + itk_size:
            return None
    elif sizes != itk_size and sizes != (1,) + itk_size:  # SimpleITK drops a list axis of 1 component
        return None
    return dtype, sizes if components > 1 else itk_size, data_file, _NRRD_OPENERS[encoding], offset, components > 1


def _read_nrrd_pieces(path: Path, plan) -> tuple[np.ndarray, int]:
    """The voxels of a NRRD (see :func:`_nrrd_plan`) as SimpleITK's ``ReadImage`` + ``GetArrayFromImage`` give
    them to :func:`_read_sitk`, cast to float32, bit for bit and in the same shape and memory order (a vector
    axis last, fastest in memory), NaN/Inf set to 0: read piece by piece (at most ``READ_PIECE_BYTES`` of raw
    voxels at a time) into one preallocated float32 array. Returns the array and the NaN/Inf count."""
    import bz2
    import gzip

    dtype, sizes, data_file, opener, offset, vector = plan
    size = int(np.prod(sizes, dtype=np.int64))
    flat = np.empty(size, dtype=np.float32)
    out = flat.reshape(sizes, order="F")  # file order: NRRD axis 0 fastest
    direct = dtype.kind == "f" and dtype.itemsize == 4
    source = data_file if data_file is not None else path
    if not source.is_file():
        raise MRHNetError(f"{path}: its data file {source} does not exist")
    try:
        with open(source, "rb") as fh:
            if data_file is None:
                fh.seek(offset)
            f = gzip.GzipFile(fileobj=fh, mode="rb") if opener == "gzip" else \
                bz2.BZ2File(fh, mode="rb") if opener == "bz2" else fh
            with f:
                bad = _read_pieces(f, flat, dtype, max(1, READ_PIECE_BYTES // max(dtype.itemsize, 4)),
                                   None if direct else (lambda raw: raw),
                                   lambda got: f"{path}: cannot be read (expected {size * dtype.itemsize} bytes of "
                                               f"voxel data in {source.name}, got {got}); is the file truncated "
                                               "or damaged?")
    except MRHNetError:
        raise
    except Exception as exc:  # gzip, zlib, bz2 and the file system raise many types
        raise MRHNetError(f"{path}: cannot be read ({_first_line(exc)}); is the file truncated or damaged?") from None
    return (np.moveaxis(out, 0, -1) if vector else out), bad


def read_volume(path: str | os.PathLike, allow_4d: bool = True) -> Volume:
    """Read a NIfTI, Analyze 7.5 or NRRD image; NaN/Inf voxels become 0 with a warning that counts them.

    NIfTI and Analyze voxels (gzipped or not) are read piece by piece into the float32 array that is
    returned, without a second full-size copy (unusual voxel types go through nibabel's own reading); the
    values are those of nibabel's ``np.asanyarray(img.dataobj)`` cast to float32, bit for bit. So are raw,
    gzip and bzip2 NRRD voxels (attached or detached), with the values, shape, memory order and affine of
    SimpleITK's reading; other NRRDs (ascii, hex, skips) go through SimpleITK's ``ReadImage``."""
    path = Path(path)
    _check_exists(path)
    suffix = suffix_of(path)
    bad = None
    if suffix in NRRD_SUFFIXES:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()  # the geometry as SimpleITK reads it, no voxels
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise MRHNetError(f"{path}: cannot be read as an image ({_first_line(exc)})") from None
        plan = _nrrd_plan(path, reader) if reader.GetDimension() >= 3 else None
        if plan is not None:
            data, bad = _read_nrrd_pieces(path, plan)
            image = reader
        else:
            image, data = _read_sitk(path)
        if image.GetDimension() < 3:
            raise MRHNetError(f"{path}: is a {image.GetDimension()}D image of shape {data.shape}; a 3D volume is needed")
        affine = _sitk_to_affine(image)
        del image, reader
    elif suffix in NIFTI_SUFFIXES + ANALYZE_SUFFIXES:
        import nibabel as nib

        if suffix in ANALYZE_SUFFIXES:
            other = path.with_suffix(".img" if suffix == ".hdr" else ".hdr")
            _check_exists(other)
        try:
            img = nib.load(str(path))
            if _plain_proxy(img):
                data, bad = _read_nibabel_pieces(img, path)
            else:
                data = np.asanyarray(img.dataobj)
        except MRHNetError:
            raise
        except Exception as exc:  # nibabel (and gzip, zlib) raise many types for damaged files
            raise MRHNetError(f"{path}: cannot be read ({_first_line(exc)}); is the file truncated or damaged?") from None
        affine = np.asarray(img.affine, dtype=float)
        del img
    else:
        raise MRHNetError(f"{path}: unknown image format '{suffix}' (use .nii, .nii.gz, .hdr/.img, .nrrd or .nhdr)")
    data = data.reshape(volume_shape(data.shape, path, allow_4d))
    if data.size == 0:
        raise MRHNetError(f"{path}: image is empty")
    if bad is None:
        data, bad = _clean(data)
    _warn_nonfinite(bad, path)
    return Volume(data, affine, path.name)


def volume_shape(shape: tuple[int, ...], path: Path, allow_4d: bool = True) -> tuple[int, ...]:
    """The shape an image file's voxels are read as (5-D squeezed, a single-volume 4D made 3D), with the
    refusals of what is no 3D volume (or, with ``allow_4d``, 4D DWI): one rule for reading and headers."""
    if len(shape) > 4:
        shape = tuple(n for n in shape if n != 1)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or min(shape[:3]) < 1 or (len(shape) == 3 and sorted(shape)[0] == 1):
        kind = f"a {len(shape)}D image" if len(shape) < 3 else "a single slice (2D)"
        raise MRHNetError(f"{path}: is {kind} of shape {shape}; a 3D volume is needed")
    if len(shape) > 4:
        raise MRHNetError(f"{path}: is a {len(shape)}D image of shape {shape}; a 3D volume"
                          f"{' (or a 4D DWI)' if allow_4d else ''} is needed")
    if len(shape) == 4 and not allow_4d:
        raise MRHNetError(f"{path}: is 4D {shape}; a single 3D volume is needed here")
    return shape


def image_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """An image's shape and voxel-to-RAS affine as :func:`MRHNetLib.data.io.read_volume` gives them, from
    its header alone: NRRD through SimpleITK's ``ReadImageInformation``, NIfTI and Analyze through nibabel
    (as the engine reads them; both read the header only)."""
    path = Path(path)
    _check_exists(path)
    suffix = suffix_of(path)
    if suffix in NRRD_SUFFIXES:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise MRHNetError(f"{path}: cannot be read as an image ({_first_line(exc)})") from None
        components = reader.GetNumberOfComponents()
        shape = tuple(reader.GetSize()) + ((components,) if components > 1 else ())
        if reader.GetDimension() < 3:
            raise MRHNetError(f"{path}: is a {reader.GetDimension()}D image of shape {shape}; a 3D volume is needed")
        return volume_shape(shape, path), _sitk_to_affine(reader)
    if suffix in NIFTI_SUFFIXES + ANALYZE_SUFFIXES:
        import nibabel as nib

        if suffix in ANALYZE_SUFFIXES:
            _check_exists(path.with_suffix(".img" if suffix == ".hdr" else ".hdr"))
        try:
            image = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for damaged files
            raise MRHNetError(f"{path}: cannot be read ({_first_line(exc)}); is the file truncated or "
                              "damaged?") from None
        return volume_shape(tuple(int(n) for n in image.shape), path), np.asarray(image.affine, dtype=float)
    raise MRHNetError(f"{path}: unknown image format '{suffix}' (use .nii, .nii.gz, .hdr/.img, .nrrd or .nhdr)")


def _write_nibabel(img, files: dict[str, Path], compress: bool) -> None:
    """Write a nibabel image into the given (temporary) files, keys as in ``img.make_file_map()``
    (``image``; ``header`` for a pair), through file objects: the names carry no image suffix."""
    import gzip
    from contextlib import ExitStack

    from nibabel.fileholders import FileHolder

    with ExitStack() as stack:
        holders = {}
        for key, p in files.items():
            f = stack.enter_context(open(p, "wb"))
            if compress:  # level 1 as nibabel's own .gz writer; no file name or time in the gzip header
                f = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=1, mtime=0))
            holders[key] = FileHolder(fileobj=f)
        img.to_file_map(holders)


def write_volume(path: str | os.PathLike, volume: Volume, dtype=np.float32) -> Path:
    """Write ``volume`` keeping its geometry; atomic (:func:`MRHNetLib.files.atomic_output`). Returns the path."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in NRRD_SUFFIXES + NIFTI_SUFFIXES + ANALYZE_SUFFIXES:
        raise MRHNetError(f"{path}: unknown image format '{suffix}' (use .nii, .nii.gz, .hdr/.img, .nrrd or .nhdr)")
    data = np.asarray(volume.data).astype(dtype, copy=False)
    if suffix in NRRD_SUFFIXES:
        import SimpleITK as sitk

        arr = np.transpose(data, (2, 1, 0, 3)) if data.ndim == 4 else np.transpose(data, (2, 1, 0))
        image = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=data.ndim == 4)
        spacing, direction, origin = _affine_to_sitk(volume.affine)
        image.SetSpacing(spacing), image.SetDirection(direction), image.SetOrigin(origin)
        with atomic_output(path) as tmp:
            writer = sitk.ImageFileWriter()
            writer.SetImageIO("NrrdImageIO")  # the temporary's name has no .nrrd suffix; always one attached file
            writer.SetFileName(str(tmp))
            writer.SetUseCompression(True)
            writer.Execute(image)
        return path
    import nibabel as nib

    if suffix in NIFTI_SUFFIXES:
        img = nib.Nifti1Image(data, volume.affine)
        img.set_qform(volume.affine, code=1)
        img.set_sform(volume.affine, code=1)
        with atomic_output(path) as tmp:
            _write_nibabel(img, {"image": tmp}, compress=suffix == ".nii.gz")
        return path
    img = nib.AnalyzeImage(data, volume.affine)
    if not np.allclose(img.header.get_best_affine(), volume.affine, atol=1e-4):
        warnings.warn(f"{path}: Analyze 7.5 keeps only the voxel size; this image's orientation and "
                      f"origin are not stored (write .nii.gz to keep them)", stacklevel=2)
    hdr = path.with_suffix(".hdr")
    with atomic_output(hdr) as tmp_hdr, atomic_output(hdr.with_suffix(".img")) as tmp_img:
        _write_nibabel(img, {"header": tmp_hdr, "image": tmp_img}, compress=False)
    return hdr  # the .img is renamed into place first, then the .hdr


# ---------------------------------------------------------------------------------------------
# Gradient tables


def rotation_of(affine: np.ndarray) -> np.ndarray:
    """The direction cosines (columns: world direction of voxel axes i, j, k) of an affine."""
    lin = np.asarray(affine)[:3, :3]
    return lin / np.sqrt((lin ** 2).sum(axis=0))


def fsl_to_world(bvecs_vox: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL bvecs (image axes, x flipped when the affine's determinant is positive) to RAS world vectors."""
    v = np.array(bvecs_vox, dtype=float).reshape(-1, 3)
    if np.linalg.det(affine[:3, :3]) > 0:
        v[:, 0] = -v[:, 0]
    return v @ rotation_of(affine).T


def world_to_fsl(bvecs_world: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fsl_to_world`."""
    v = np.asarray(bvecs_world, dtype=float).reshape(-1, 3) @ np.linalg.inv(rotation_of(affine)).T
    if np.linalg.det(affine[:3, :3]) > 0:
        v[:, 0] = -v[:, 0]
    return v


def read_fsl_gradients(bval_path: str | os.PathLike, bvec_path: str | os.PathLike, affine: np.ndarray) -> Gradients:
    """Read FSL ``.bval`` / ``.bvec`` files (the bvec file may be 3 x N or N x 3)."""
    bval_path, bvec_path = Path(bval_path), Path(bvec_path)
    for p in (bval_path, bvec_path):
        _check_exists(p)
    try:
        bvals = np.loadtxt(bval_path, dtype=float, ndmin=1).reshape(-1)
        bvecs = np.loadtxt(bvec_path, dtype=float, ndmin=2)
    except ValueError as exc:
        raise MRHNetError(f"{bval_path.name}/{bvec_path.name}: not a numeric gradient table ({exc})") from None
    if bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
        bvecs = bvecs.T
    elif bvecs.shape == (3, 3):
        bvecs = bvecs.T  # FSL's layout is 3 rows
    if bvecs.ndim != 2 or bvecs.shape[1] != 3:
        raise MRHNetError(f"{bvec_path}: expected 3 rows of directions, found shape {bvecs.shape}")
    if len(bvals) != len(bvecs):
        raise MRHNetError(f"{bval_path}: {len(bvals)} b-values but {bvec_path.name} has {len(bvecs)} directions")
    return Gradients(bvals, fsl_to_world(bvecs, affine))


def read_gradient_table(path: str | os.PathLike, affine: np.ndarray) -> Gradients:
    """Read a ``gx gy gz b`` table (commas or spaces), directions in image axes, as the original tool used."""
    path = Path(path)
    _check_exists(path)
    try:
        table = np.loadtxt(path, delimiter=None, ndmin=2, converters=None) if "," not in path.read_text() \
            else np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as exc:
        raise MRHNetError(f"{path}: not a numeric 'gx gy gz b' table ({exc})") from None
    if table.shape[1] != 4:
        raise MRHNetError(f"{path}: expected 4 columns 'gx gy gz b', found {table.shape[1]}")
    return Gradients(table[:, 3], table[:, :3] @ rotation_of(affine).T)


def write_fsl_gradients(stem: str | os.PathLike, gradients: Gradients, affine: np.ndarray) -> tuple[Path, Path]:
    """Write ``stem.bval`` and ``stem.bvec`` (FSL layout, voxel frame), atomically."""
    stem = Path(stem)
    out = []
    for suffix, text in ((".bval", " ".join(f"{b:g}" for b in gradients.bvals) + "\n"),
                         (".bvec", "\n".join(" ".join(f"{x:.6f}" for x in row)
                                             for row in world_to_fsl(gradients.bvecs, affine).T) + "\n")):
        out.append(atomic_write_text(Path(str(stem) + suffix), text))
    return out[0], out[1]


def read_dwi(path: str | os.PathLike, bval: str | os.PathLike | None = None, bvec: str | os.PathLike | None = None,
             table: str | os.PathLike | None = None) -> tuple[Volume, Gradients]:
    """Read a 4D DWI and its gradients.

    Gradients come from ``bval``/``bvec`` (FSL), from a ``gx gy gz b`` ``table``, from the DWMRI keys of a
    Slicer DWI NRRD, or (when none is given) from ``<stem>.bval``/``<stem>.bvec`` beside the image.
    """
    path = Path(path)
    volume = read_volume(path)
    if volume.data.ndim != 4:
        raise MRHNetError(f"{path}: is 3D {volume.data.shape}; a 4D diffusion-weighted image is needed")
    if table is not None:
        grads = read_gradient_table(table, volume.affine)
        source = Path(table).name
    elif bval is not None or bvec is not None:
        if bval is None or bvec is None:
            raise MRHNetError(f"{path}: both a .bval and a .bvec file are needed")
        grads = read_fsl_gradients(bval, bvec, volume.affine)
        source = Path(bvec).name
    elif suffix_of(path) in NRRD_SUFFIXES:
        grads = read_nrrd_gradients(path)
        source = path.name
    else:
        stem = str(path)[: -len(suffix_of(path))]
        if not (Path(stem + ".bval").exists() and Path(stem + ".bvec").exists()):
            raise MRHNetError(f"{path}: no b-values: give --bval/--bvec or a gradient table "
                              f"(looked for {Path(stem).name}.bval/.bvec)")
        grads = read_fsl_gradients(stem + ".bval", stem + ".bvec", volume.affine)
        source = Path(stem).name + ".bval/.bvec"
    if len(grads) != volume.data.shape[3]:
        raise MRHNetError(f"{path}: has {volume.data.shape[3]} volumes but {source} lists {len(grads)} gradients")
    return volume, grads


def read_nrrd_gradients(path: str | os.PathLike) -> Gradients:
    """Gradients of a Slicer DWI NRRD: ``DWMRI_b-value``, ``DWMRI_gradient_NNNN``, measurement frame."""
    import nrrd

    path = Path(path)
    try:
        header = nrrd.read_header(str(path))
    except Exception as exc:
        raise MRHNetError(f"{path}: cannot read NRRD header ({_first_line(exc)})") from None
    if "DWMRI_b-value" not in header:
        raise MRHNetError(f"{path}: NRRD has no DWMRI_b-value key; give a .bval/.bvec or gradient table")
    bmax = float(header["DWMRI_b-value"])
    keys = sorted(k for k in header if k.startswith("DWMRI_gradient_"))
    if not keys:
        raise MRHNetError(f"{path}: NRRD has no DWMRI_gradient_NNNN keys")
    g = np.array([[float(x) for x in str(header[k]).split()] for k in keys])
    frame = np.asarray(header.get("measurement frame", np.eye(3)), dtype=float)
    space = str(header.get("space", "left-posterior-superior"))
    norms2 = (g ** 2).sum(axis=1)
    # NRRD's measurement-frame vectors are the columns of the frame -> space matrix M (teem, Slicer);
    # pynrrd returns them as rows, so M = frame.T and, for row vectors, world = g @ M.T = g @ frame
    world = g @ frame
    if space.startswith("left-posterior") or space == "LPS":
        world = world @ LPS_TO_RAS.T
    return Gradients(bmax * norms2, world)


def write_dwi_nrrd(path: str | os.PathLike, volume: Volume, gradients: Gradients) -> Path:
    """Write a Slicer-style DWI NRRD (gradient list axis first, DWMRI keys, identity measurement frame in LPS)."""
    import nrrd

    path = Path(path)
    bmax = float(gradients.bvals.max())
    spacing, direction, origin = _affine_to_sitk(volume.affine)
    dirs = np.array(direction).reshape(3, 3) * np.array(spacing)
    header = {
        "type": "float", "dimension": 4, "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": np.vstack([[np.nan] * 3, dirs.T]),
        "space origin": np.array(origin), "measurement frame": np.eye(3), "encoding": "gzip",
        "modality": "DWMRI", "DWMRI_b-value": f"{bmax:g}",
    }
    lps = gradients.bvecs @ LPS_TO_RAS.T
    for n, (b, g) in enumerate(zip(gradients.bvals, lps)):
        scaled = g * np.sqrt(max(b, 0.0) / bmax) if bmax > 0 else g * 0
        header[f"DWMRI_gradient_{n:04d}"] = " ".join(f"{x:.8f}" for x in scaled)
    with atomic_output(path) as tmp:  # attached header: pynrrd detaches only for a .nhdr name
        nrrd.write(str(tmp), np.ascontiguousarray(np.moveaxis(volume.data.astype(np.float32), 3, 0)), header,
                   custom_field_map={k: "string" for k in header if k.startswith("DWMRI") or k == "modality"})
    return path
