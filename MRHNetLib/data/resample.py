"""Resampling with SimpleITK: onto another grid, to a model's voxel size, and back.

Geometry (direction, origin) is kept: a volume resampled to a new spacing covers the same field of
view (the outer corner of the first voxel stays put) with the same axis directions. Linear
interpolation by default (nearest neighbour for masks and labels); when a spacing grows, the image
is first smoothed with a Gaussian whose width matches the new voxel (anti-aliasing).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import MRHNetError
from .io import Volume, _affine_to_sitk, _sitk_to_affine

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def to_sitk(volume: Volume):
    """A SimpleITK image of a 3D volume (scalar) or 4D volume (vector image, one component per volume)."""
    import SimpleITK as sitk

    data = np.asarray(volume.data, dtype=np.float32)
    if data.ndim == 4:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0, 3))), isVector=True)
    elif data.ndim == 3:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    else:
        raise MRHNetError(f"{volume.name or 'volume'}: cannot resample a {data.ndim}D array")
    spacing, direction, origin = _affine_to_sitk(volume.affine)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    return image


def from_sitk(image, name: str = "") -> Volume:
    """The :class:`Volume` of a 3D scalar or vector SimpleITK image."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    data = np.transpose(arr, (2, 1, 0, 3)) if image.GetNumberOfComponentsPerPixel() > 1 else np.transpose(arr, (2, 1, 0))
    return Volume(np.ascontiguousarray(data, dtype=np.float32), _sitk_to_affine(image), name)


def _resample(volume: Volume, shape: Sequence[int], affine: np.ndarray, nearest: bool) -> Volume:
    import SimpleITK as sitk

    if not nearest:
        volume = _antialias(volume, np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
    image = to_sitk(volume)
    spacing, direction, origin = _affine_to_sitk(affine)
    out = sitk.Resample(image, [int(s) for s in shape], sitk.Transform(),
                        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
                        origin, spacing, direction, 0.0, image.GetPixelID())
    result = from_sitk(out, volume.name)
    result.affine = np.asarray(affine, dtype=float).copy()  # exactly the requested grid
    return result


def _antialias(volume: Volume, new_spacing: np.ndarray) -> Volume:
    """Gaussian smoothing (scipy) along the array axes whose voxel size grows by more than 10 %.

    The kernel's FWHM is sqrt(new^2 - old^2), so the smoothed image's resolution matches the new voxel.
    Assumes the new grid's axes are (nearly) parallel to the old ones, as for a change of spacing."""
    from scipy.ndimage import gaussian_filter

    old = volume.spacing
    grow = new_spacing > 1.1 * old
    if not grow.any():
        return volume
    sigma_vox = np.where(grow, np.sqrt(np.clip(new_spacing ** 2 - old ** 2, 0, None)) * FWHM_TO_SIGMA / old, 0.0)
    sigma = tuple(sigma_vox) + ((0.0,) if volume.data.ndim == 4 else ())
    return volume.with_data(gaussian_filter(np.asarray(volume.data, dtype=np.float32), sigma, mode="nearest"))


def resample_to(volume: Volume, reference: Volume, nearest: bool = False) -> Volume:
    """``volume`` resampled onto ``reference``'s grid (shape and affine); 3D or 4D; 0 outside its field."""
    return _resample(volume, reference.shape3, reference.affine, nearest)


def spacing_grid(volume: Volume, spacing_mm: float | Sequence[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the grid with voxel size ``spacing_mm`` covering ``volume``'s field of view."""
    new = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)).copy()
    if np.any(new <= 0):
        raise MRHNetError(f"voxel size must be positive, got {new.tolist()}")
    old = volume.spacing
    extent = np.asarray(volume.shape3) * old
    shape = tuple(int(max(1, round(e))) for e in extent / new)
    directions = volume.affine[:3, :3] / old
    corner = volume.affine[:3, 3] - directions @ (0.5 * old)
    affine = np.eye(4)
    affine[:3, :3] = directions * new
    affine[:3, 3] = corner + directions @ (0.5 * new)
    return shape, affine  # type: ignore[return-value]


def resample_spacing(volume: Volume, spacing_mm: float | Sequence[float], nearest: bool = False) -> Volume:
    """``volume`` (3D or 4D) resampled to voxel size ``spacing_mm`` (one value or one per axis)."""
    shape, affine = spacing_grid(volume, spacing_mm)
    return _resample(volume, shape, affine, nearest)


NEAREST_ROLES = ("mask",)


def resample_subject(subject, spacing_mm: float | Sequence[float]):
    """A copy of ``subject`` with every volume resampled to ``spacing_mm`` (masks by nearest neighbour,
    the mask then re-thresholded); gradient tables are unchanged."""
    from .subject import DWI, Subject

    shape, affine = spacing_grid(subject.reference, spacing_mm)
    out = Subject(name=subject.name)
    for role, vol in subject.images.items():
        new = _resample(vol, shape, affine, role in NEAREST_ROLES)
        if role in NEAREST_ROLES:
            new.data = (new.data > 0.5).astype(np.float32)
        out.images[role] = new
    for role, d in subject.dwi.items():
        out.dwi[role] = DWI(_resample(d.volume, shape, affine, False), d.gradients)
    return out


def to_subject_grid(volume: Volume, subject, nearest: bool = False) -> Volume:
    """The way back: a map computed on a resampled grid, resampled onto ``subject``'s own grid."""
    return resample_to(volume, subject.reference, nearest)
