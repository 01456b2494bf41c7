"""One subject's co-registered MRI (and histology, where it exists), read from a folder or file by file.

Subject folder convention (names by role; any of the engine's formats may replace ``.nii.gz``)::

    t2w.nii.gz  mt_on.nii.gz  mt_off.nii.gz
    dwi_b2000.nii.gz  dwi_b2000.bval  dwi_b2000.bvec
    dwi_b5000.nii.gz  dwi_b5000.bval  dwi_b5000.bvec
    fa.nii.gz  mask.nii.gz                 (optional: derived when missing)
    af.nii.gz  nf.nii.gz  mbp.nii.gz       (optional histology / ground truth targets)

The same :class:`Subject` serves the CLI, the Slicer module (built from scene nodes) and the tests.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MRHNetError
from .io import Gradients, Volume, read_dwi, read_volume, write_fsl_gradients, write_volume
from .normalise import channel_scales, channel_views
from .protocol import DWI_ROLES, IMAGE_ROLES, MAP_ROLES, TARGET_ROLES, Channel, Protocol, dwi_channels

SCALAR_ROLES = IMAGE_ROLES + ("fa", "mask", "md", "mk", "mtr") + TARGET_ROLES
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".hdr")
GRID_TOL_MM = 1e-3  # tolerance on spacing / origin, in mm
DIRECTION_TOL = 1e-4


@dataclass
class DWI:
    """One diffusion shell: a 4D volume and its gradient table."""

    volume: Volume
    gradients: Gradients


@dataclass
class Subject:
    """A subject's volumes by role. ``images`` holds 3D volumes (t2w, mt_on, mt_off, fa, mask, maps and
    targets), ``dwi`` the diffusion shells by role (``dwi_b2000``, ``dwi_b5000``)."""

    images: dict[str, Volume] = field(default_factory=dict)
    dwi: dict[str, DWI] = field(default_factory=dict)
    name: str = "subject"

    # --- access ----------------------------------------------------------------------------
    def __contains__(self, role: str) -> bool:
        return role in self.images or role in self.dwi

    def get(self, role: str) -> Volume:
        if role in self.images:
            return self.images[role]
        if role in self.dwi:
            return self.dwi[role].volume
        raise MRHNetError(f"{self.name}: no '{role}' image")

    @property
    def reference(self) -> Volume:
        """The grid every other volume must share: T2w when present, else the first image."""
        for role in IMAGE_ROLES + DWI_ROLES + ("fa", "mask") + TARGET_ROLES:
            if role in self:
                return self.get(role)
        raise MRHNetError(f"{self.name}: subject has no images")

    @property
    def affine(self) -> np.ndarray:
        return self.reference.affine

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.reference.shape3

    @property
    def mask(self) -> np.ndarray:
        """Boolean brain mask (derived from FA > 0 or the images when no mask was given)."""
        if "mask" not in self.images:
            from .maps import brain_mask

            self.images["mask"] = self.reference.with_data(brain_mask(self).astype(np.float32), "mask")
        m = self.images["mask"].data > 0
        if not m.any():
            raise MRHNetError(f"{self.images['mask'].name or 'mask'}: brain mask is empty")
        return m

    def targets(self) -> list[str]:
        return [r for r in TARGET_ROLES if r in self.images]

    # --- checks ----------------------------------------------------------------------------
    def check_grid(self, resample: bool = False) -> "Subject":
        """Check that every volume lies on the reference grid; with ``resample`` put them there instead."""
        ref = self.reference
        for role, vol in list(self.images.items()) + [(r, d.volume) for r, d in self.dwi.items()]:
            problem = grid_mismatch(ref, vol)
            if problem is None:
                continue
            if not resample:
                raise MRHNetError(f"{vol.name or role}: {problem} of the reference {ref.name or 'image'}; "
                                  f"co-register the inputs or use --resample-to-reference")
            from .resample import resample_to

            nearest = role == "mask"
            new = resample_to(vol, ref, nearest=nearest)
            if role in self.dwi:
                self.dwi[role] = DWI(new, self.dwi[role].gradients)
            else:
                self.images[role] = new
        return self

    def protocol(self, input_kind: str = "raw") -> Protocol:
        """This subject's own protocol (its channels as they are), to check against a model's."""
        if input_kind == "maps":
            return Protocol([Channel(r) for r in MAP_ROLES if r in self.images or r in ("fa", "md", "mk", "mtr")],
                            input_kind="maps", voxel_size_mm=self.voxel_size)
        chans: list[Channel] = []
        for role in DWI_ROLES:
            if role in self.dwi:
                g = self.dwi[role].gradients
                chans += dwi_channels(role, g.bvals, g.bvecs)
        chans += [Channel(r) for r in IMAGE_ROLES if r in self.images]
        return Protocol(chans, voxel_size_mm=self.voxel_size)

    @property
    def voxel_size(self) -> float:
        return float(np.mean(self.reference.spacing))

    # --- network input ---------------------------------------------------------------------
    def channel_volume(self, role: str) -> np.ndarray:
        """The 3D or 4D array for one role, deriving parameter maps when needed."""
        if role in self.dwi:
            return self.dwi[role].volume.data
        if role in self.images:
            return self.images[role].data
        if role in ("fa", "md", "mk", "mtr"):
            from .maps import derive_map

            self.images[role] = self.reference.with_data(derive_map(self, role), role)
            return self.images[role].data
        raise MRHNetError(f"{self.name}: missing input '{role}'")

    def inputs(self, protocol: Protocol) -> np.ndarray:
        """Network input as (C, X, Y, Z) float32, channels in the protocol's order, normalised as it says.

        DWI channels are taken in the subject's own volume order (check compatibility first with
        :func:`MRHNetLib.data.protocol.check_compatible`)."""
        return self.inputs_and_scales(protocol)[0]

    def inputs_and_scales(self, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
        """(:meth:`inputs`, the per-channel divisors used), for recording the scales seen in training.

        The divisors are computed on views of the subject's arrays (no copy), then the one stack is
        filled and divided in place. Inference does not build the stack at all
        (:func:`MRHNetLib.data.normalise.scaled_stack`)."""
        views = channel_views(self, protocol)
        scales = channel_scales(views, [ch.role for ch in protocol.channels], self.mask, protocol.normalisation)
        out = stack_views(views, self.shape)
        out /= scales[:, None, None, None]
        return out, scales

    def raw_inputs(self, protocol: Protocol) -> np.ndarray:
        """The channels of ``protocol`` as (C, X, Y, Z) float32, before normalisation."""
        return stack_views(channel_views(self, protocol), self.shape)

    def target(self, role: str) -> np.ndarray:
        if role not in self.images:
            raise MRHNetError(f"{self.name}: no '{role}' target (expected {role}.nii.gz in the subject folder)")
        return self.images[role].data

    # --- files -----------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, suffix: str = ".nii.gz") -> Path:
        """Write the subject folder (images by role, DWI with .bval/.bvec); each file atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for role, vol in self.images.items():
            write_volume(folder / f"{role}{suffix}", vol)
        for role, d in self.dwi.items():
            write_volume(folder / f"{role}{suffix}", d.volume)
            write_fsl_gradients(folder / role, d.gradients, d.volume.affine)
        return folder


def grid_mismatch(ref: Volume, vol: Volume) -> str | None:
    """A short phrase saying how ``vol``'s grid differs from ``ref``'s, or None."""
    if vol.shape3 != ref.shape3:
        return f"shape {vol.shape3} differs from shape {ref.shape3}"
    if np.abs(vol.spacing - ref.spacing).max() > GRID_TOL_MM:
        return f"spacing {np.round(vol.spacing, 4).tolist()} differs from spacing {np.round(ref.spacing, 4).tolist()}"
    dv = vol.affine[:3, :3] / vol.spacing
    dr = ref.affine[:3, :3] / ref.spacing
    if np.abs(dv - dr).max() > DIRECTION_TOL:
        angle = float(np.degrees(np.arccos(np.clip((dv * dr).sum(axis=0), -1.0, 1.0))).max())
        return f"axis directions (up to {angle:.2f} deg apart) differ from the directions"
    if np.abs(vol.affine[:3, 3] - ref.affine[:3, 3]).max() > max(GRID_TOL_MM, 0.01 * ref.spacing.min()):
        return f"origin {np.round(vol.affine[:3, 3], 3).tolist()} differs from origin {np.round(ref.affine[:3, 3], 3).tolist()}"
    return None


def stack_views(views: list[np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """The 3D ``views`` as one (C, X, Y, Z) float32 array."""
    out = np.empty((len(views),) + tuple(shape), dtype=np.float32)
    for c, v in enumerate(views):
        out[c] = v
    return out


def input_scales(stack: np.ndarray, protocol: Protocol, mask: np.ndarray) -> np.ndarray:
    """One divisor per channel of a (C, X, Y, Z) ``stack`` (see
    :class:`~MRHNetLib.data.protocol.Normalisation`), computed channel by channel without copying a group."""
    return channel_scales(list(stack), [ch.role for ch in protocol.channels], mask, protocol.normalisation)


def _find(folder: Path, role: str) -> Path | None:
    for suf in IMAGE_SUFFIXES:
        p = folder / f"{role}{suf}"
        if p.exists():
            return p
    return None


def load_subject(folder: str | os.PathLike | None = None, *, resample_to_reference: bool = False,
                 name: str | None = None, **files: str | os.PathLike | None) -> Subject:
    """Read a subject from a folder (see module docstring) and/or file by file.

    Keyword files by role override or complete the folder: ``t2w=``, ``mt_on=``, ``mt_off=``, ``fa=``,
    ``mask=``, ``af=``, ``nf=``, ``mbp=``, ``dwi_b2000=`` with ``dwi_b2000_bval=``/``dwi_b2000_bvec=`` or
    ``dwi_b2000_table=`` (a ``gx gy gz b`` file), and the same for ``dwi_b5000``. Every file is read and
    checked before anything is returned; problems raise :class:`MRHNetError`."""
    allowed = set(SCALAR_ROLES) | set(DWI_ROLES) | {f"{r}_{k}" for r in DWI_ROLES for k in ("bval", "bvec", "table")}
    unknown = set(files) - allowed
    if unknown:
        raise MRHNetError(f"unknown input role(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed))}")
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise MRHNetError(f"{folder}: subject folder does not exist")
    subject = Subject(name=name or (Path(folder).name if folder is not None else "subject"))
    for role in SCALAR_ROLES:
        path = files.get(role) or (_find(folder, role) if folder is not None else None)
        if path is not None:
            vol = read_volume(path, allow_4d=False)
            vol.name = Path(path).name
            subject.images[role] = vol
    for role in DWI_ROLES:
        path = files.get(role) or (_find(folder, role) if folder is not None else None)
        if path is None:
            continue
        bval, bvec, table = (files.get(f"{role}_{k}") for k in ("bval", "bvec", "table"))
        if folder is not None and bval is None and bvec is None and table is None:
            if (folder / f"{role}.bval").exists() and Path(path).parent == folder:
                bval, bvec = folder / f"{role}.bval", folder / f"{role}.bvec"
        vol, grads = read_dwi(path, bval, bvec, table)
        subject.dwi[role] = DWI(vol, grads)
    if not subject.images and not subject.dwi:
        where = f"{folder}" if folder is not None else "the given files"
        raise MRHNetError(f"{where}: no images found (expected t2w.nii.gz, mt_on.nii.gz, dwi_b2000.nii.gz, ...)")
    for role, vol in subject.images.items():
        if role != "mask" and not np.any(vol.data):
            raise MRHNetError(f"{vol.name}: image is all zeros")
    subject.check_grid(resample=resample_to_reference)
    if "mask" in subject.images and not np.any(subject.images["mask"].data > 0):
        raise MRHNetError(f"{subject.images['mask'].name}: brain mask is empty")
    return subject
