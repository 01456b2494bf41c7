"""Parameter maps derived from the raw MRI when a user lacks them: FA and MD (DTI), MK (DKI), MTR, brain mask.

Fits use dipy (``dipy.reconst.dti``, ``dipy.reconst.dki``) on the voxels inside a mask, in chunks, so
whole-brain volumes report progress and can be cancelled. Gradient directions are the engine's unit
RAS world vectors; dipy would want them in the voxel frame for orientation-dependent outputs (eigen
vectors, colour FA), but FA, MD and MK are invariant to a rotation of the gradient frame, so the world
vectors serve unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import MRHNetError, Progress, as_progress
from .io import Gradients

if TYPE_CHECKING:
    from .subject import Subject

B0_THRESHOLD = 100.0  # s/mm^2: below this a volume counts as b0 (grad_auto.txt's b0 is 7.3)
MK_RANGE = (0.0, 3.0)  # mean kurtosis clipped to this (ex vivo brain tissue: about 0.5-1.5)
CHUNK = 20000  # voxels per DTI fit call (DKI: a quarter; dipy fits DKI voxel by voxel, about 1 ms each)
UNMASKED_FA = 0.9  # an FA map non-zero in more than this fraction of voxels was never masked


def _gtab(gradients: Gradients):
    from dipy.core.gradients import gradient_table

    bvals = np.asarray(gradients.bvals, dtype=float)
    bvecs = np.where((bvals < B0_THRESHOLD)[:, None], 0.0, gradients.bvecs)
    return gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD)


def _fit_in_mask(model, data: np.ndarray, mask: np.ndarray | None, outputs, progress: Progress,
                 label: str, chunk: int = CHUNK) -> list[np.ndarray]:
    """Fit ``model`` voxel by voxel inside ``mask``; ``outputs(fit) -> tuple of (n,) arrays``."""
    if data.ndim != 4:
        raise MRHNetError(f"{label}: needs a 4D diffusion-weighted volume, got shape {data.shape}")
    if mask is None:
        mask = data.max(axis=3) > 0
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != data.shape[:3]:
        raise MRHNetError(f"{label}: mask shape {mask.shape} differs from the DWI's {data.shape[:3]}")
    idx = np.flatnonzero(mask)
    flat = data.reshape(-1, data.shape[3])
    results: list[np.ndarray] | None = None
    for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        with np.errstate(all="ignore"):
            values = outputs(model.fit(np.asarray(flat[part], dtype=np.float64)))
        if results is None:
            results = [np.zeros(mask.size, dtype=np.float32) for _ in values]
        for out, v in zip(results, values):
            out[part] = np.nan_to_num(np.asarray(v, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        progress.update(min(start + chunk, len(idx)) / len(idx), f"{label} fit")
    if results is None:
        raise MRHNetError(f"{label}: the mask is empty, nothing to fit")
    return [r.reshape(mask.shape) for r in results]


def fa_md(dwi: np.ndarray, gradients: Gradients, mask: np.ndarray | None = None, progress=None,
          fit_method: str = "WLS") -> tuple[np.ndarray, np.ndarray]:
    """Fractional anisotropy (0..1) and mean diffusivity (mm^2/s) from one DWI shell by dipy's DTI (WLS).

    ``dwi`` is (X, Y, Z, T) with ``len(gradients) == T``; voxels outside ``mask`` (default: any signal)
    are 0. FA and MD are rotation invariant, so the RAS world gradient frame is used as it is."""
    from dipy.reconst.dti import TensorModel

    _check_table(dwi, gradients, "DTI", min_dirs=6)
    model = TensorModel(_gtab(gradients), fit_method=fit_method)
    fa, md = _fit_in_mask(model, dwi, mask, lambda f: (f.fa, f.md), as_progress(progress), "DTI")
    return np.clip(fa, 0.0, 1.0), np.clip(md, 0.0, None)


def mk(shells: list[tuple[np.ndarray, Gradients]], mask: np.ndarray | None = None, progress=None,
       fit_method: str = "WLS") -> np.ndarray:
    """Mean kurtosis from two or more DWI shells (for example b2000 and b5000) by dipy's DKI.

    The shells are concatenated along the volume axis; MK is clipped to :data:`MK_RANGE` (noise and
    the b = 5000 s/mm^2 shell of ex vivo tissue otherwise give a few wild values). dipy fits DKI voxel
    by voxel: about 1.3 ms per voxel with WLS and 0.6 ms with ``fit_method="OLS"`` on one CPU core
    (2 x 32 volumes), so a whole mouse brain (2 million voxels) takes tens of minutes."""
    from dipy.reconst.dki import DiffusionKurtosisModel

    if not shells:
        raise MRHNetError("MK: no DWI shells given")
    data = np.concatenate([np.asarray(d, dtype=np.float32) for d, _ in shells], axis=3)
    grads = Gradients(np.concatenate([g.bvals for _, g in shells]), np.vstack([g.bvecs for _, g in shells]))
    _check_table(data, grads, "MK", min_dirs=15)
    shells_b = np.unique(np.round(grads.bvals[grads.bvals >= B0_THRESHOLD], -2))
    if len(shells_b) < 2:
        raise MRHNetError(f"MK: needs two non-zero b-value shells (for example b2000 and b5000), found "
                          f"{', '.join(f'{b:g}' for b in shells_b) or 'none'}")
    model = DiffusionKurtosisModel(_gtab(grads), fit_method=fit_method)
    (out,) = _fit_in_mask(model, data, mask, lambda f: (f.mk(min_kurtosis=MK_RANGE[0], max_kurtosis=MK_RANGE[1]),),
                          as_progress(progress), "DKI", chunk=CHUNK // 4)
    return np.clip(out, *MK_RANGE)


def _check_table(data: np.ndarray, gradients: Gradients, label: str, min_dirs: int) -> None:
    if data.ndim != 4 or data.shape[3] != len(gradients):
        shape = data.shape[3] if data.ndim == 4 else "no"
        raise MRHNetError(f"{label}: the DWI has {shape} volumes but the gradient table lists {len(gradients)}")
    b = gradients.bvals
    if not (b < B0_THRESHOLD).any():
        raise MRHNetError(f"{label}: the gradient table has no b0 volume (b < {B0_THRESHOLD:g} s/mm^2)")
    if int((b >= B0_THRESHOLD).sum()) < min_dirs:
        raise MRHNetError(f"{label}: needs at least {min_dirs} diffusion-weighted volumes, found {int((b >= B0_THRESHOLD).sum())}")


def mtr(mt_on: np.ndarray, mt_off: np.ndarray) -> np.ndarray:
    """Magnetisation transfer ratio (MT-off - MT-on) / MT-off; 0 where MT-off is 0 (or negative)."""
    on = np.asarray(mt_on, dtype=np.float32)
    off = np.asarray(mt_off, dtype=np.float32)
    if on.shape != off.shape:
        raise MRHNetError(f"MTR: MT-on shape {on.shape} differs from MT-off shape {off.shape}")
    out = np.zeros(off.shape, dtype=np.float32)
    good = off > 0
    out[good] = (off[good] - on[good]) / off[good]
    return out


def b0_image(dwi: np.ndarray, gradients: Gradients) -> np.ndarray:
    """Mean of a shell's b0 volumes (the mean of all volumes when it has none)."""
    b0 = np.asarray(gradients.bvals) < B0_THRESHOLD
    return np.asarray(dwi[..., b0] if b0.any() else dwi, dtype=np.float32).mean(axis=3)


def otsu_mask(image: np.ndarray, median_radius: int = 1, numpass: int = 1) -> np.ndarray:
    """Brain mask of a 3D image by dipy's ``median_otsu`` (median filter, then Otsu's threshold).

    One pass of a 3 x 3 x 3 median: dipy's defaults (radius 4, 4 passes) are meant for human brains
    and erode small or thin mouse-brain structures (Dice with the true mask 0.93 vs 0.96 on a
    noisy copy of the shipped real brain at half resolution, and 9x slower)."""
    from dipy.segment.mask import median_otsu

    image = np.asarray(image, dtype=np.float32)
    if not np.any(image):
        raise MRHNetError("brain mask: the image is all zeros")
    _, mask = median_otsu(image, median_radius=median_radius, numpass=numpass)
    return np.asarray(mask, dtype=bool)


def brain_mask(subject: "Subject") -> np.ndarray:
    """A boolean brain mask for ``subject``.

    The subject's own mask when it has one; else FA > 0 as the original (when an FA map exists and
    was masked, i.e. is zero in at least 10 % of voxels); else ``median_otsu`` on the mean b0 of the
    b2000 shell (or of the b5000 shell), or on the T2w image."""
    if "mask" in subject.images:
        return subject.images["mask"].data > 0
    if "fa" in subject.images:
        fa = subject.images["fa"].data > 0
        if fa.any() and fa.mean() <= UNMASKED_FA:
            return fa
    for role in ("dwi_b2000", "dwi_b5000"):
        if role in subject.dwi:
            d = subject.dwi[role]
            return otsu_mask(b0_image(d.volume.data, d.gradients))
    if "t2w" in subject.images:
        return otsu_mask(subject.images["t2w"].data)
    raise MRHNetError(f"{subject.name}: no mask, FA, DWI or T2w image to derive a brain mask from")


def derive_map(subject: "Subject", role: str, progress=None) -> np.ndarray:
    """Compute a missing parameter map of ``subject``: ``fa`` / ``md`` (DTI of the b2000 shell, as the
    original), ``mk`` (DKI of both shells) or ``mtr``; voxels outside the brain mask are 0."""
    if role == "mtr":
        for need in ("mt_on", "mt_off"):
            if need not in subject.images:
                raise MRHNetError(f"{subject.name}: MTR needs an {need} image")
        return mtr(subject.images["mt_on"].data, subject.images["mt_off"].data)
    if role in ("fa", "md"):
        shell = next((r for r in ("dwi_b2000", "dwi_b5000") if r in subject.dwi), None)
        if shell is None:
            raise MRHNetError(f"{subject.name}: {role.upper()} needs a DWI shell (dwi_b2000)")
        d = subject.dwi[shell]
        fa, md = fa_md(d.volume.data, d.gradients, subject.mask, progress)
        return fa if role == "fa" else md
    if role == "mk":
        shells = [(subject.dwi[r].volume.data, subject.dwi[r].gradients) for r in ("dwi_b2000", "dwi_b5000")
                  if r in subject.dwi]
        if len(shells) < 2:
            raise MRHNetError(f"{subject.name}: MK needs both DWI shells (dwi_b2000 and dwi_b5000)")
        return mk(shells, subject.mask, progress)
    raise MRHNetError(f"cannot derive a '{role}' map (known: fa, md, mk, mtr)")
