"""What inference checks before any work, and the writing of its maps: does a subject fit a model, can the
maps be written, write them atomically. None of it needs PyTorch, so the Slicer panel and the web app's
server check inputs and save maps in their own process; only the child process that runs the networks
loads torch (:mod:`~MRHNetLib.network.infer` re-exports these functions).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.io import Volume, suffix_of, write_volume
from ..data.protocol import check_compatible
from ..errors import MRHNetError
from ..files import check_writable_folder, remove_stale_temporaries
from .modelfile import LoadedModel, ModelInfo, read_info

VOXEL_TOL = 0.2  # relative voxel-size difference beyond which resampling is needed (as check_compatible)


def model_path(name: str | os.PathLike) -> Path:
    """A model path from a path or, when the catalog module exists, a shipped model's name."""
    try:
        from .catalog import resolve
    except ImportError:
        return Path(name)
    return resolve(name)


def model_info(model: LoadedModel | ModelInfo | str | os.PathLike) -> ModelInfo:
    """A model's information: of a loaded model, or read from its file (a path or a shipped model's name)."""
    if isinstance(model, LoadedModel):
        return model.info
    if isinstance(model, ModelInfo):
        return model
    return read_info(model_path(model))


# ---------------------------------------------------------------------------------------------
# Checks


def needs_resampling(subject, info: ModelInfo) -> bool:
    """True when the subject's voxel size differs from the model's beyond the tolerance (any axis)."""
    mv = info.protocol.voxel_size_mm
    if not mv:
        return False
    return bool(np.any(np.abs(subject.reference.spacing - mv) > VOXEL_TOL * mv))


def check_subject(subject, model: LoadedModel | ModelInfo | str | os.PathLike, *, adapt_protocol: bool = False,
                  resample: bool | None = None) -> None:
    """Raise :class:`MRHNetError` (one line) exactly when :func:`~MRHNetLib.network.infer.predict` with the same options would
    refuse ``subject`` for ``model``: channel roles and count, b-values, gradient directions (unless
    ``adapt_protocol``), voxel size (when ``resample`` is False)."""
    info = model_info(model)
    label = model.name if isinstance(model, LoadedModel) else \
        (Path(str(model)).name if isinstance(model, (str, os.PathLike)) else info.target)
    mp = info.protocol
    sp = subject.protocol(mp.input_kind)
    sp.voxel_size_mm = None  # checked here, per axis
    if resample is False and needs_resampling(subject, info):
        raise MRHNetError(f"{subject.name}: voxel size {np.round(subject.reference.spacing, 4).tolist()} mm differs "
                          f"from the model's {mp.voxel_size_mm:.4g} mm; resample (--resample) or give matching data")
    if adapt_protocol and mp.input_kind == "raw":
        from ..data.adapt import adapted_protocol, check_adaptable

        for role in mp.roles():
            if role in subject.dwi:
                check_adaptable(role, subject.dwi[role].gradients, mp.shell(role)[0])
        sp = adapted_protocol(sp, mp)
    try:
        check_compatible(mp, sp)
    except MRHNetError as exc:
        raise MRHNetError(f"{subject.name} vs model {label}: {exc}") from None
    if mp.patch_size > min(subject.shape):
        raise MRHNetError(f"{subject.name}: volume {subject.shape} is smaller than the {mp.patch_size}-voxel patch")


# ---------------------------------------------------------------------------------------------
# Outputs


def map_keys(targets: Sequence[str]) -> list[str]:
    """The maps :func:`predict` returns for models of these targets (in order): each target, and
    ``<target>_std`` for a target given by several models (an ensemble)."""
    keys = list(dict.fromkeys(targets))
    return keys + [f"{t}_std" for t in keys if list(targets).count(t) > 1]


def output_paths(keys: Sequence[str], destination: str | os.PathLike | dict[str, str | os.PathLike], *,
                 suffix: str = ".nii.gz", protect: Sequence[str | os.PathLike] = ()) -> dict[str, Path]:
    """The file each map will be written to, checked before any work: ``<folder>/<key><suffix>`` (or the
    path given per key). Raises :class:`MRHNetError` (one line naming the path) when an output could not be
    written: a known image suffix, not an input file (``protect``), not a folder, in a folder that is one or
    can be created and written."""
    if isinstance(destination, dict):
        missing = [k for k in keys if k not in destination]
        if missing:
            raise MRHNetError(f"no output path given for map(s) {', '.join(missing)}")
        paths = {k: Path(destination[k]) for k in keys}
    else:
        folder = Path(destination)
        if folder.exists() and not folder.is_dir():
            raise MRHNetError(f"{folder}: output must be a folder, and this is a file")
        paths = {k: folder / f"{k}{suffix}" for k in keys}
    guarded = {Path(p).resolve() for p in protect}
    for p in paths.values():
        if p.resolve() in guarded:
            raise MRHNetError(f"{p}: is an input file; choose another output folder or suffix")
        if suffix_of(p) not in (".nii", ".nii.gz", ".nrrd", ".nhdr", ".hdr", ".img"):
            raise MRHNetError(f"{p}: unknown image format (use .nii.gz, .nii, .nrrd or .hdr)")
        if p.is_dir():
            raise MRHNetError(f"{p}: is a folder; an output map cannot replace it")
        check_writable_folder(p.parent)
    return paths


def write_maps(maps: dict[str, Volume], destination: str | os.PathLike | dict[str, str | os.PathLike], *,
               suffix: str = ".nii.gz", protect: Sequence[str | os.PathLike] = ()) -> dict[str, Path]:
    """Write each map atomically as ``<folder>/<key><suffix>`` (or to the path given per key).

    Everything is checked (:func:`output_paths`) before the first file is written; stale temporaries
    that killed runs left in the output folders are removed."""
    paths = output_paths(list(maps), destination, suffix=suffix, protect=protect)
    for folder in {p.parent for p in paths.values()}:
        remove_stale_temporaries(folder)
    return {k: write_volume(p, maps[k]) for k, p in paths.items()}
