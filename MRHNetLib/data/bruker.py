"""Acquisition protocols from Bruker ParaVision ``method`` files.

A ``method`` file is a JCAMP-DX parameter list (``##$PVM_DwEffBval=( 32 )`` followed by the values on
the next lines, strings in ``<>``). It is parsed with BrkRaw's parameter reader
(:class:`brkraw.core.parameters.Parameters`), which reads a bare method file without the rest of a
ParaVision study folder; this module only interprets the parameters.

Read per file (:class:`MethodFile`): the method name, echo / repetition time (``PVM_EchoTime``,
``EffectiveTE``, ``PVM_RepetitionTime``), resolution, matrix and field of view, the slice / read
orientation, magnetisation transfer settings (``PVM_MagTransOnOff``, ``PVM_MagTransPower``,
``PVM_MagTransOffset``) and, for diffusion scans, the effective b-value of every volume
(``PVM_DwEffBval``), the number of b0 images (``PVM_DwAoImages``) and the unit direction of every volume
(``PVM_DwDir``, or ``PVM_DwGradVec`` normalised when ``PVM_DwDir`` is absent).

Direction frame (an assumption, recorded here and in every protocol made from method files):
``PVM_DwDir`` and ``PVM_DwGradVec`` are given in ParaVision's gradient frame (read, phase, slice), which
is the frame of the image axes; in the original files the columns of ``PVM_DwGradVec`` are exactly
``PVM_DwGradRead`` / ``PVM_DwGradPhase`` / ``PVM_DwGradSlice`` and parallel to ``PVM_DwDir``, and
``PVM_SPackArrGradOrient`` is the identity. Method files do not record how the animal lay in the magnet,
so the anatomical meaning of read / phase / slice is not in them. For the original protocol the image
axes are the brain's left-right, inferior-superior and anterior-posterior axes (field of view
12.8 x 10.4 x 18 mm against the 12.5 x 8 x 17.5 mm brain grid of the original outputs, axial slice package
read L_R), so directions are recorded in RAS as (read, slice, phase) -> (R, A, S), i.e.
``R = read, A = slice, S = phase`` with positive signs (the signs are not recorded; a global sign does
not change diffusion contrast). Pass ``to_ras`` to state another mapping.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import MRHNetError
from .protocol import DWI_ROLES, IMAGE_ROLES, Channel, Normalisation, Protocol, dwi_channels

# rows: R, A, S; columns: read, phase, slice (see the module docstring)
GRADIENT_TO_RAS = np.array([[1.0, 0.0, 0.0],
                            [0.0, 0.0, 1.0],
                            [0.0, 1.0, 0.0]])
B0_MAX = 100.0  # s/mm^2: volumes below this are b0 images (the engine's convention)
# order of the T2/MT channels: the original code's first (the default), then the original README's
MT_ORDERS = ("t2w,mt_on,mt_off", "t2w,mt_off,mt_on")
DEFAULT_MT_ORDER = MT_ORDERS[0]


@dataclass
class MethodFile:
    """The parts of one ParaVision method file that describe the acquisition."""

    path: Path
    method: str
    echo_time_ms: float | None
    effective_te_ms: float | None
    repetition_time_ms: float | None
    resolution_mm: tuple[float, ...]
    matrix: tuple[int, ...]
    fov_mm: tuple[float, ...]
    slice_orient: str | None
    read_orient: str | None
    mt_on: bool = False
    mt_power_uT: float | None = None
    mt_offset_hz: float | None = None
    bvals: np.ndarray | None = None  # effective b-value of every volume (s/mm^2)
    directions: np.ndarray | None = None  # (n, 3) unit vectors in the gradient frame, zero for b0 volumes
    n_b0: int = 0
    nominal_b: float | None = None
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dwi(self) -> bool:
        return self.bvals is not None

    def bvecs_ras(self, to_ras: np.ndarray = GRADIENT_TO_RAS) -> np.ndarray:
        """Directions as unit RAS vectors (see the module docstring for the frame)."""
        if self.directions is None:
            raise MRHNetError(f"{self.path}: not a diffusion method file (no PVM_DwEffBval)")
        return self.directions @ np.asarray(to_ras, dtype=float).T

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (recorded in model files and printed by ``mrhnet protocol``)."""
        d: dict[str, Any] = {"file": self.path.name, "sha256": self.sha256, "method": self.method,
                             "TE_ms": self.echo_time_ms, "effective_TE_ms": self.effective_te_ms,
                             "TR_ms": self.repetition_time_ms, "resolution_mm": list(self.resolution_mm),
                             "matrix": list(self.matrix), "fov_mm": list(self.fov_mm),
                             "slice_orient": self.slice_orient, "read_orient": self.read_orient,
                             "mt": ({"on": True, "power_uT": self.mt_power_uT, "offset_hz": self.mt_offset_hz}
                                    if self.mt_on else {"on": False})}
        if self.is_dwi:
            b = self.bvals
            d["dwi"] = {"volumes": int(len(b)), "b0": self.n_b0, "nominal_b": self.nominal_b,
                        "mean_effective_b": round(float(b[b >= B0_MAX].mean()), 2) if (b >= B0_MAX).any() else None}
        d.update(self.extra)
        return d

    def describe(self) -> str:
        s = self.summary()
        te = f"TE {s['effective_TE_ms'] or s['TE_ms']:g} ms" if (s["effective_TE_ms"] or s["TE_ms"]) else "TE ?"
        line = (f"{self.path.name}: {self.method}, {te}, TR {s['TR_ms']:g} ms, "
                f"{'x'.join(f'{r:g}' for r in self.resolution_mm)} mm, matrix {'x'.join(map(str, self.matrix))}")
        if self.is_dwi:
            line += f", {s['dwi']['volumes']} volumes ({self.n_b0} b0, mean b {s['dwi']['mean_effective_b']:.0f})"
        if self.mt_on:
            line += f", MT {self.mt_power_uT:g} uT at {self.mt_offset_hz:g} Hz"
        return line


def _scalar(params: Any, key: str, kind: type = float) -> Any:
    v = params.get(key)
    if v is None:
        return None
    arr = np.atleast_1d(np.asarray(v))
    if arr.size == 0:
        return None
    try:
        return kind(arr.ravel()[0])
    except (TypeError, ValueError):
        return None


def _text(params: Any, key: str) -> str | None:
    v = params.get(key)
    if v is None:
        return None
    if isinstance(v, np.ndarray):
        v = v.ravel()[0] if v.size else None
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return None if v is None else str(v).strip("<>")


def _vector(params: Any, key: str, dtype: type = float) -> tuple:
    v = params.get(key)
    if v is None:
        return ()
    return tuple(dtype(x) for x in np.atleast_1d(np.asarray(v, dtype=float)).ravel())


def _array(params: Any, key: str, where: Path) -> np.ndarray | None:
    """A numeric array parameter; BrkRaw returns a flat list when the values do not fill the declared shape."""
    v = params.get(key)
    if v is None:
        return None
    if isinstance(v, list) or not isinstance(v, np.ndarray):
        raise MRHNetError(f"{where}: {key} does not hold the number of values its header declares (damaged file?)")
    try:
        return np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise MRHNetError(f"{where}: {key} is not numeric") from None


def read_method(path: str | os.PathLike) -> MethodFile:
    """Read one ParaVision method file. Raises :class:`MRHNetError` when it is not one."""
    from brkraw.core.parameters import Parameters

    path = Path(path)
    if not path.is_file():
        raise MRHNetError(f"{path}: method file does not exist")
    data = path.read_bytes()
    if b"##$" not in data[:4096] or b"##" not in data[:16]:
        raise MRHNetError(f"{path}: not a Bruker ParaVision method file (no JCAMP-DX '##$' parameters)")
    try:
        params = Parameters(path)
    except Exception as exc:  # BrkRaw raises plain exceptions on malformed text
        raise MRHNetError(f"{path}: cannot parse the JCAMP-DX parameters ({exc})") from None
    if params.get("Method") is None:
        raise MRHNetError(f"{path}: no ##$Method parameter: not a ParaVision method file")
    mf = MethodFile(
        path=path, method=_text(params, "Method") or "?",
        echo_time_ms=_scalar(params, "PVM_EchoTime"), effective_te_ms=_scalar(params, "EffectiveTE"),
        repetition_time_ms=_scalar(params, "PVM_RepetitionTime"),
        resolution_mm=_vector(params, "PVM_SpatResol"), matrix=_vector(params, "PVM_Matrix", int),
        fov_mm=_vector(params, "PVM_Fov"), slice_orient=_text(params, "PVM_SPackArrSliceOrient"),
        read_orient=_text(params, "PVM_SPackArrReadOrient"),
        mt_on=_text(params, "PVM_MagTransOnOff") == "On",
        mt_power_uT=_scalar(params, "PVM_MagTransPower"), mt_offset_hz=_scalar(params, "PVM_MagTransOffset"),
        sha256=hashlib.sha256(data).hexdigest())
    if params.get("PVM_DwEffBval") is not None:
        _read_diffusion(mf, params)
    return mf


def _read_diffusion(mf: MethodFile, params: Any) -> None:
    """Fill b-values, b0 count and unit directions of a diffusion method file (in place)."""
    where = mf.path
    bvals = np.atleast_1d(_array(params, "PVM_DwEffBval", where)).ravel()
    n = len(bvals)
    n_b0 = _scalar(params, "PVM_DwAoImages", int) or 0
    gradvec = _array(params, "PVM_DwGradVec", where)
    dwdir = _array(params, "PVM_DwDir", where)
    dirs = np.zeros((n, 3))
    if gradvec is not None:
        g = np.asarray(gradvec, dtype=float).reshape(-1, 3)
        if len(g) != n:
            raise MRHNetError(f"{where}: PVM_DwGradVec has {len(g)} rows but PVM_DwEffBval {n} values")
        norm = np.linalg.norm(g, axis=1)
        weighted = norm > 1e-6 * max(norm.max(), 1e-12)
        dirs[weighted] = g[weighted] / norm[weighted, None]
        if int((~weighted).sum()) != n_b0:
            raise MRHNetError(f"{where}: PVM_DwGradVec has {int((~weighted).sum())} zero rows but "
                              f"PVM_DwAoImages says {n_b0} b0 images")
    else:
        weighted = np.r_[np.zeros(n_b0, bool), np.ones(n - n_b0, bool)]
    if dwdir is not None:
        d = np.asarray(dwdir, dtype=float).reshape(-1, 3)
        n_exp = _scalar(params, "PVM_DwNDiffExpEach", int) or 1
        d = np.repeat(d, n_exp, axis=0) if len(d) * n_exp == int(weighted.sum()) else d
        if len(d) != int(weighted.sum()):
            raise MRHNetError(f"{where}: PVM_DwDir has {len(d)} directions for {int(weighted.sum())} "
                              f"diffusion-weighted volumes")
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        if gradvec is not None:
            cos = np.abs((d * dirs[weighted]).sum(axis=1))
            if cos.size and cos.min() < np.cos(np.radians(2.0)):
                k = int(np.argmin(cos))
                raise MRHNetError(f"{where}: PVM_DwDir row {k} disagrees with PVM_DwGradVec "
                                  f"({np.degrees(np.arccos(min(cos[k], 1.0))):.1f} deg apart)")
        dirs[weighted] = d
    elif gradvec is None:
        raise MRHNetError(f"{where}: diffusion method file without PVM_DwDir or PVM_DwGradVec")
    mf.bvals, mf.directions, mf.n_b0 = bvals, dirs, n_b0
    mf.nominal_b = _scalar(params, "PVM_DwBvalEach")


def classify_method_files(paths: Iterable[str | os.PathLike]) -> dict[str, MethodFile]:
    """Read method files and assign each a role: the two diffusion shells (``dwi_b2000``: the lower
    b-value, ``dwi_b5000``: the higher), ``t2w`` (no magnetisation transfer, or the longest effective TE),
    ``mt_on`` / ``mt_off`` (MT module on: the stronger saturation is MT-on, the other MT-off; an MT-off scan
    is often the same sequence with negligible power). Folders are searched for files ending in ``method``."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith("method"))
        else:
            files.append(p)
    if not files:
        raise MRHNetError("no method files given (expected files named *method)")
    read = [read_method(f) for f in files]
    dwi = sorted((m for m in read if m.is_dwi), key=lambda m: float(np.median(m.bvals[m.bvals >= B0_MAX])))
    other = [m for m in read if not m.is_dwi]
    roles: dict[str, MethodFile] = {}
    if len(dwi) > 2:
        raise MRHNetError(f"{len(dwi)} diffusion method files given ({', '.join(m.path.name for m in dwi)}); "
                          f"the protocol has two shells")
    for role, m in zip(DWI_ROLES if len(dwi) == 2 else (), dwi):
        roles[role] = m
    if len(dwi) == 1:
        b = float(np.median(dwi[0].bvals[dwi[0].bvals >= B0_MAX]))
        roles["dwi_b2000" if b < 3500 else "dwi_b5000"] = dwi[0]
    mt = sorted((m for m in other if m.mt_on), key=lambda m: m.mt_power_uT or 0.0)
    plain = [m for m in other if not m.mt_on]
    if len(mt) > 2:
        raise MRHNetError(f"{len(mt)} magnetisation-transfer method files given; expected MT-on and MT-off")
    if len(mt) == 2:
        roles["mt_off"], roles["mt_on"] = mt
    elif len(mt) == 1:
        roles["mt_on"] = mt[0]
    plain.sort(key=lambda m: m.effective_te_ms or m.echo_time_ms or 0.0)
    if plain:
        roles["t2w"] = plain.pop()
    if plain and "mt_off" not in roles and "mt_on" in roles:
        roles["mt_off"] = plain.pop()
    if plain:
        raise MRHNetError(f"cannot tell the role of {', '.join(m.path.name for m in plain)} "
                          f"(more non-diffusion method files than T2w, MT-on and MT-off)")
    return roles


def protocol_from_method_files(dwi_b2000: str | os.PathLike, dwi_b5000: str | os.PathLike,
                               mt_order: str = DEFAULT_MT_ORDER, *, voxel_size_mm: float | None = None,
                               normalisation: Normalisation | None = None, patch_plane: str = "coronal",
                               half_patch: int = 1, to_ras: np.ndarray = GRADIENT_TO_RAS) -> Protocol:
    """The 67-channel protocol of the original networks from the two diffusion method files.

    Channels: the b2000 shell in acquisition order (its b0 images then its directions), the b5000 shell,
    then the three T2/MT images in ``mt_order`` (``"t2w,mt_on,mt_off"``, the default: the original
    code's, which appends one file ``t2MTONOFF`` "t2/MTON/MTOFF" after the DWI shells;
    ``"t2w,mt_off,mt_on"``: the original README's "T2-weighted, non-MT-weighted, MT-weighted").
    b-values are the effective ones (``PVM_DwEffBval``; b0 images carry their small imaging b of about
    43 s/mm^2); directions are unit RAS vectors under the frame assumption of this module."""
    chans: list[Channel] = []
    for role, path in zip(DWI_ROLES, (dwi_b2000, dwi_b5000)):
        m = read_method(path)
        if not m.is_dwi:
            raise MRHNetError(f"{path}: not a diffusion method file (no PVM_DwEffBval); {role} needs one")
        chans += dwi_channels(role, m.bvals, m.bvecs_ras(to_ras))
    chans += [Channel(r) for r in parse_mt_order(mt_order)]
    return Protocol(chans, "raw", patch_plane, half_patch, normalisation or Normalisation(), voxel_size_mm)


def parse_mt_order(text: str) -> list[str]:
    """``"t2w,mt_on,mt_off"`` (also with '-' or spaces, or 'T2/MTON/MTOFF'-like names) -> the three roles."""
    aliases = {"t2": "t2w", "t2w": "t2w", "mton": "mt_on", "mt_on": "mt_on", "mtoff": "mt_off",
               "mt_off": "mt_off", "mt-on": "mt_on", "mt-off": "mt_off"}
    parts = [p.strip().lower() for p in text.replace("/", ",").replace(" ", ",").split(",") if p.strip()]
    roles = [aliases.get(p, p) for p in parts]
    if sorted(roles) != sorted(IMAGE_ROLES):
        raise MRHNetError(f"--mt-order '{text}': give the three images T2w, MT-on and MT-off in the order of "
                          f"the input channels, e.g. {MT_ORDERS[0]} or {MT_ORDERS[1]}")
    return roles


def acquisition_summary(files: dict[str, MethodFile]) -> dict[str, Any]:
    """Role -> :meth:`MethodFile.summary` (recorded in model files)."""
    return {role: m.summary() for role, m in files.items()}
