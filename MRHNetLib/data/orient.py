"""One voxel orientation for the networks, whatever the orientation of the input files.

A 3 x 3 patch mirrored left-right or up-down is a different input for a network whose kernels are not
symmetric, so training and inference put every subject in one canonical voxel orientation first:
:data:`CANONICAL`, the storage orientation of the shipped anatomy and of the original MRH-Net data as
nibabel reads their Analyze headers (first axis towards Left, second Anterior, third Superior). Only
flips and axis permutations are applied (no resampling), as array views where possible; gradient
directions are in world coordinates and do not change. Maps are put back on the input's own grid.
"""
from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from .io import Volume

CANONICAL = ("L", "A", "S")


def to_canonical_transform(affine: np.ndarray) -> np.ndarray | None:
    """The nibabel orientation transform from ``affine``'s voxel orientation to :data:`CANONICAL`, or
    None when the volume is already canonical."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL))
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return None if np.array_equal(transform, identity) else transform


def reorient(volume: Volume, transform: np.ndarray | None) -> Volume:
    """``volume`` (3D or 4D) with its voxel axes flipped / permuted by ``transform``; same world geometry."""
    if transform is None:
        return volume
    data = apply_orientation(volume.data, transform)
    affine = volume.affine @ inv_ornt_aff(transform, volume.shape3)
    return Volume(data, affine, volume.name)


def canonical_subject(subject):
    """(subject in :data:`CANONICAL` orientation, the transform used or None). The subject itself is
    returned when it is already canonical; otherwise a new Subject sharing the data as views."""
    from .subject import DWI, Subject

    transform = to_canonical_transform(subject.affine)
    if transform is None:
        return subject, None
    out = Subject({role: reorient(v, transform) for role, v in subject.images.items()},
                  {role: DWI(reorient(d.volume, transform), d.gradients) for role, d in subject.dwi.items()},
                  subject.name)
    return out, transform


def restore(volume: Volume, transform: np.ndarray | None, reference: Volume) -> Volume:
    """A map computed on the canonical grid, back on ``reference``'s grid (the inverse of ``transform``)."""
    if transform is None:
        return volume
    back = ornt_transform(axcodes2ornt(CANONICAL), io_orientation(reference.affine))
    data = np.ascontiguousarray(apply_orientation(volume.data, back))
    return Volume(data, reference.affine.copy(), volume.name)
