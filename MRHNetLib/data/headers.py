"""Subjects read from their file headers only: the roles, grids and gradients that a model's protocol
check needs, at once and without reading a voxel (GUIs check a folder before every run)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MRHNetError
from .io import NRRD_SUFFIXES, Volume, image_header, read_fsl_gradients, read_nrrd_gradients, suffix_of
from .protocol import DWI_ROLES
from .subject import DWI, SCALAR_ROLES, Subject, _find


def folder_stamp(folder: str | os.PathLike) -> tuple:
    """(name, modification time, size) of every file in a folder: changes whenever a file does."""
    try:
        entries = [(p.name, p.stat()) for p in Path(folder).iterdir() if p.is_file()]
    except OSError:
        return ()
    return tuple(sorted((name, st.st_mtime_ns, st.st_size) for name, st in entries))


def header_gradients(path: Path, role: str, affine: np.ndarray):
    """A diffusion shell's gradients as :func:`~MRHNetLib.data.subject.load_subject` finds them: the
    folder's ``<role>.bval``/``.bvec``, else a DWI NRRD's own keys (header only)."""
    bval = path.parent / f"{role}.bval"
    if bval.exists():
        return read_fsl_gradients(bval, bval.with_suffix(".bvec"), affine)
    if suffix_of(path) in NRRD_SUFFIXES:
        return read_nrrd_gradients(path)
    raise MRHNetError(f"{path}: no b-values: give --bval/--bvec or a gradient table (looked for {role}.bval/.bvec)")


def folder_header_subject(folder: str | os.PathLike, name: str | None = None):
    """A subject folder read from its headers only (:func:`~MRHNetLib.data.io.image_header`, gradient files): the roles, grids
    and gradients :func:`~MRHNetLib.network.checks.check_subject` needs, without reading a voxel (the volumes
    are read-only zero-stride arrays). Refuses what :func:`~MRHNetLib.data.subject.load_subject` refuses
    for its shapes, grids and gradients."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MRHNetError(f"{folder}: subject folder does not exist")
    subject = Subject(name=name or folder.name)
    for role in SCALAR_ROLES + DWI_ROLES:
        path = _find(folder, role)
        if path is None:
            continue
        shape, affine = image_header(path)
        if role not in DWI_ROLES:
            if len(shape) == 4:
                raise MRHNetError(f"{path}: is 4D {shape}; a single 3D volume is needed here")
            subject.images[role] = Volume(np.broadcast_to(np.float32(1), shape), affine, path.name)
            continue
        if len(shape) != 4:
            raise MRHNetError(f"{path}: is 3D {shape}; a 4D diffusion-weighted image is needed")
        grads = header_gradients(path, role, affine)
        if len(grads) != shape[3]:
            raise MRHNetError(f"{path}: has {shape[3]} volumes but its gradient table lists {len(grads)} gradients")
        subject.dwi[role] = DWI(Volume(np.broadcast_to(np.float32(1), shape), affine, path.name), grads)
    if not subject.images and not subject.dwi:
        raise MRHNetError(f"{folder}: no images found (expected t2w.nii.gz, mt_on.nii.gz, dwi_b2000.nii.gz, ...)")
    return subject.check_grid()
