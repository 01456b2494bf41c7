"""The input protocol of a network: which channels, in which order, how patches are cut and scaled.

A :class:`Protocol` is JSON-serialisable and travels inside every model file. Channel roles:

* raw images: ``dwi_b2000`` / ``dwi_b5000`` (one channel per DWI volume, with its b-value and RAS
  gradient direction), ``t2w``, ``mt_on``, ``mt_off``;
* parameter maps (``input_kind="maps"``): ``t2w``, ``mtr``, ``fa``, ``md``, ``mk``.

The patch plane is anatomical (``coronal`` as the original, ``axial`` or ``sagittal``); the engine
derives the array axis from each subject's affine (:func:`plane_axes`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import MRHNetError

DWI_ROLES = ("dwi_b2000", "dwi_b5000")
IMAGE_ROLES = ("t2w", "mt_on", "mt_off")
MAP_ROLES = ("t2w", "mtr", "fa", "md", "mk")
TARGET_ROLES = ("af", "nf", "mbp")
PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}  # the RAS axis normal to each plane
NOMINAL_B = {"dwi_b2000": 2000.0, "dwi_b5000": 5000.0}
B0_MAX = 100.0  # s/mm^2: volumes below this count as unweighted (b0)


@dataclass
class Channel:
    """One input channel: its role and, for a DWI volume, the b-value (s/mm^2) and unit RAS direction."""

    role: str
    bval: float | None = None
    bvec: tuple[float, float, float] | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"role": self.role}
        if self.bval is not None:
            d["bval"] = float(self.bval)
        if self.bvec is not None:
            d["bvec"] = [round(float(x), 6) for x in self.bvec]
        return d


@dataclass
class Normalisation:
    """How inputs and targets are scaled.

    ``method``:
      * ``"percentile"`` (default): each scale group (a DWI shell, T2w, the MT pair, each map) divided by
        its own ``percentile`` inside the brain mask, computed per subject; robust to bright outliers.
      * ``"global_max"``: the original's: every input divided by the subject's global maximum of all inputs.
    ``target_scale``: targets are divided by this at training and predictions multiplied by it.
    ``reference_scales``: the scales seen in training (for information and sanity checks).
    """

    method: str = "percentile"
    percentile: float = 99.5
    target_scale: float = 1.0
    reference_scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "global_max"):
            raise MRHNetError(f"unknown normalisation '{self.method}' (use 'percentile' or 'global_max')")


@dataclass
class Protocol:
    """Everything needed to turn a subject into network input."""

    channels: list[Channel]
    input_kind: str = "raw"
    patch_plane: str = "coronal"
    half_patch: int = 1
    normalisation: Normalisation = field(default_factory=Normalisation)
    voxel_size_mm: float | None = None

    def __post_init__(self) -> None:
        if self.patch_plane not in PLANES:
            raise MRHNetError(f"unknown patch plane '{self.patch_plane}' (use {', '.join(PLANES)})")
        if self.input_kind not in ("raw", "maps"):
            raise MRHNetError(f"unknown input kind '{self.input_kind}' (use 'raw' or 'maps')")

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def patch_size(self) -> int:
        return 2 * self.half_patch + 1

    def roles(self) -> list[str]:
        """Roles in order of first appearance."""
        seen: list[str] = []
        for c in self.channels:
            if c.role not in seen:
                seen.append(c.role)
        return seen

    def shell(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """(bvals, bvecs) of one DWI role, in channel order."""
        chans = [c for c in self.channels if c.role == role]
        return (np.array([c.bval for c in chans], dtype=float),
                np.array([c.bvec for c in chans], dtype=float).reshape(-1, 3))

    # --- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "input_kind": self.input_kind, "patch_plane": self.patch_plane, "half_patch": self.half_patch,
            "voxel_size_mm": self.voxel_size_mm,
            "normalisation": asdict(self.normalisation),
            "channels": [c.to_dict() for c in self.channels],
        }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        try:
            chans = [Channel(c["role"], c.get("bval"), tuple(c["bvec"]) if c.get("bvec") is not None else None)
                     for c in d["channels"]]
            return cls(chans, d.get("input_kind", "raw"), d.get("patch_plane", "coronal"), int(d.get("half_patch", 1)),
                       Normalisation(**d.get("normalisation", {})), d.get("voxel_size_mm"))
        except (KeyError, TypeError) as exc:
            raise MRHNetError(f"protocol description is incomplete or malformed ({exc})") from None

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Protocol":
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """A few human-readable lines (used by the CLI and the Slicer panel)."""
        lines = [f"{self.n_channels} channels ({self.input_kind}), {self.patch_size}x{self.patch_size} "
                 f"{self.patch_plane} patches, normalisation {self.normalisation.method}"
                 + (f", voxel {self.voxel_size_mm:g} mm" if self.voxel_size_mm else "")]
        for role in self.roles():
            if role in DWI_ROLES:
                b, _ = self.shell(role)
                n0 = int((b < B0_MAX).sum())
                lines.append(f"  {role}: {len(b)} volumes ({n0} b0, {len(b) - n0} at b~{np.median(b[b >= B0_MAX]):.0f})")
            else:
                lines.append(f"  {role}")
        return "\n".join(lines)


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread evenly over a hemisphere (a stand-in for a scanner's direction table)."""
    i = np.arange(n) + 0.5
    z = 1 - i / n  # hemisphere z in (0, 1]
    r = np.sqrt(1 - z ** 2)
    phi = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def dwi_channels(role: str, bvals: np.ndarray, bvecs: np.ndarray) -> list[Channel]:
    return [Channel(role, float(b), tuple(float(x) for x in (g if b >= B0_MAX else (0.0, 0.0, 0.0))))
            for b, g in zip(bvals, bvecs)]


def default_protocol(n_b0: int = 2, n_dirs: int = 30, directions: np.ndarray | None = None,
                     bvalues: tuple[float, float] = (2000.0, 5000.0), voxel_size_mm: float | None = None,
                     **kwargs: Any) -> Protocol:
    """The published layout: per shell ``n_b0`` b0 then ``n_dirs`` directions, b2000 then b5000, then
    T2w, MT-on, MT-off: 67 channels with the defaults."""
    dirs = fibonacci_directions(n_dirs) if directions is None else np.asarray(directions, dtype=float)
    chans: list[Channel] = []
    for role, b in zip(DWI_ROLES, bvalues):
        bvals = np.r_[np.zeros(n_b0), np.full(len(dirs), b)]
        bvecs = np.vstack([np.zeros((n_b0, 3)), dirs])
        chans += dwi_channels(role, bvals, bvecs)
    chans += [Channel(r) for r in IMAGE_ROLES]
    return Protocol(chans, voxel_size_mm=voxel_size_mm, **kwargs)


def maps_protocol(roles: tuple[str, ...] = MAP_ROLES, **kwargs: Any) -> Protocol:
    """A protocol of parameter maps (portable across scanners; the paper's 5-map network)."""
    return Protocol([Channel(r) for r in roles], input_kind="maps", **kwargs)


def scale_group(role: str) -> str:
    """Channels that share one normalisation scale: MT-on and MT-off together (keeps MTR), each shell whole."""
    return "mt" if role in ("mt_on", "mt_off") else role


def plane_axes(affine: np.ndarray, plane: str) -> tuple[int, int, int]:
    """(slice_axis, row_axis, col_axis) of the array for patches in an anatomical ``plane``.

    The slice axis is the array axis closest to the plane's normal (sagittal: L-R, coronal: A-P,
    axial: I-S); rows and columns are the other two array axes in anatomical order (R, A, S). Axis
    directions (flips) are not looked at here: training and inference first put subjects in one voxel
    orientation (:mod:`MRHNetLib.data.orient`)."""
    if plane not in PLANES:
        raise MRHNetError(f"unknown patch plane '{plane}' (use {', '.join(PLANES)})")
    lin = np.abs(np.asarray(affine)[:3, :3])
    lin = lin / lin.sum(axis=0, keepdims=True)
    # assign each array axis to the world axis it points along most
    world_of_axis = _assign_axes(lin)
    axis_of_world = {w: a for a, w in enumerate(world_of_axis)}
    normal = PLANES[plane]
    in_plane = [axis_of_world[w] for w in range(3) if w != normal]
    return axis_of_world[normal], in_plane[0], in_plane[1]


def _assign_axes(lin: np.ndarray) -> list[int]:
    """For each array axis (column of ``lin``) the world axis it is closest to, one-to-one."""
    best, best_score = [0, 1, 2], -1.0
    for perm in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        score = sum(lin[perm[a], a] for a in range(3))
        if score > best_score:
            best, best_score = list(perm), score
    return best


def check_compatible(model: Protocol, subject: Protocol, angle_tol_deg: float = 5.0, b_tol: float = 0.1,
                     voxel_tol: float = 0.2) -> None:
    """Raise :class:`MRHNetError` with one line saying how ``subject`` does not fit ``model``.

    Directions are compared up to sign; b-values within ``b_tol`` relative; any two b0 volumes (below
    ``B0_MAX``) match, whatever their nominal or effective b-value.
    A subject that differs only in its gradient directions gets a message naming ``--adapt-protocol``."""
    if model.input_kind != subject.input_kind:
        raise MRHNetError(f"model expects {model.input_kind} inputs, subject provides {subject.input_kind}")
    mroles, sroles = model.roles(), subject.roles()
    missing = [r for r in mroles if r not in sroles]
    if missing:
        raise MRHNetError(f"subject lacks input(s) {', '.join(missing)} that the model needs")
    for role in mroles:
        if role not in DWI_ROLES:
            continue
        mb, mg = model.shell(role)
        sb, sg = subject.shell(role)
        if len(mb) != len(sb):
            raise MRHNetError(f"{role}: model expects {len(mb)} volumes, subject has {len(sb)}")
        mb0, sb0 = mb < B0_MAX, sb < B0_MAX
        bad = (mb0 != sb0) | (~mb0 & (np.abs(sb - mb) > b_tol * mb))  # any two b0 values match
        if bad.any():
            k = int(np.argmax(bad))
            raise MRHNetError(f"{role}: volume {k} has b={sb[k]:.0f} s/mm^2, model expects b={mb[k]:.0f}")
        cos = np.abs((mg[~mb0] * sg[~sb0]).sum(axis=1)).clip(0, 1)
        worst = float(np.degrees(np.arccos(cos.min()))) if len(cos) else 0.0
        if worst > angle_tol_deg:
            raise MRHNetError(f"{role}: gradient directions differ from the model's by up to {worst:.1f} deg "
                              f"(tolerance {angle_tol_deg:g}); b-values match, so --adapt-protocol can "
                              f"re-express the shell on the model's directions")
    if model.voxel_size_mm and subject.voxel_size_mm and \
            abs(subject.voxel_size_mm - model.voxel_size_mm) > voxel_tol * model.voxel_size_mm:
        raise MRHNetError(f"subject voxel size {subject.voxel_size_mm:.4g} mm differs from the model's "
                          f"{model.voxel_size_mm:.4g} mm; resample (--resample) or give matching data")
