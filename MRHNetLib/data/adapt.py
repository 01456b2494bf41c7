"""Protocol adaptation: re-express a subject's DWI shells on a model's gradient directions.

A network trained on raw images expects each DWI channel at one gradient direction. When a subject
was scanned with the same b-values but other directions, each shell's signal is fitted, voxel by
voxel, with a real symmetric spherical-harmonic series (dipy's ``descoteaux07`` basis, even orders
only, a small Laplace-Beltrami smoothing) and evaluated at the model's directions; b0 volumes are
kept (or averaged when their counts differ). The fit is linear, so a whole shell is one
(n_model x n_subject) matrix applied to the 4D data.

Limits (state them to users):

* shell-wise only: every diffusion-weighted volume of a shell must share one b-value (within 10 %);
  no b-value interpolation between shells;
* even orders only (antipodal symmetry); the order is chosen so that the fit has at least twice as
  many directions as coefficients (30 directions -> order 4, 60 -> order 6); sharper angular
  structure than that order (crossing fibres at b = 5000) is smoothed;
* noise is fitted as signal: the re-expressed volumes are slightly smoother than real acquisitions,
  which a network trained on real data did not see;
* at least 6 diffusion-weighted directions per shell are needed.
"""
from __future__ import annotations

import numpy as np

from ..errors import MRHNetError, Progress, as_progress
from .io import Gradients
from .protocol import DWI_ROLES, Channel, Protocol

B0_LIMIT = 100.0  # s/mm^2: below is a b0 volume (as protocol.check_compatible)
B_TOL = 0.1
DEFAULT_SMOOTH = 0.006  # Laplace-Beltrami regularisation weight (dipy's sf_to_sh default for this basis)


def n_coefficients(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def sh_order_for(n_directions: int) -> int:
    """The largest even order whose coefficient count is at most half the number of directions (min 2)."""
    if n_directions < 6:
        raise MRHNetError(f"a shell needs at least 6 diffusion-weighted directions to adapt, it has {n_directions}")
    order = 2
    while n_coefficients(order + 2) * 2 <= n_directions:
        order += 2
    return order


def _basis(directions: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux

    d = np.asarray(directions, dtype=float).reshape(-1, 3)
    _, theta, phi = cart2sphere(d[:, 0], d[:, 1], d[:, 2])
    basis, _, l_values = real_sh_descoteaux(order, theta, phi, legacy=False)
    return basis, l_values


def direction_matrix(source: np.ndarray, target: np.ndarray, order: int | None = None,
                     smooth: float = DEFAULT_SMOOTH) -> np.ndarray:
    """(n_target, n_source) matrix mapping signals at ``source`` directions to ``target`` directions
    through a regularised even-order spherical-harmonic fit."""
    from dipy.reconst.shm import smooth_pinv

    order = sh_order_for(len(source)) if order is None else int(order)
    if order % 2 or order < 0:
        raise MRHNetError(f"spherical-harmonic order must be even and >= 0, got {order}")
    b_src, l_values = _basis(source, order)
    b_dst, _ = _basis(target, order)
    fit = smooth_pinv(b_src, np.sqrt(smooth) * (-l_values * (l_values + 1.0)))
    return b_dst @ fit


def _split(bvals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b0 = np.asarray(bvals) < B0_LIMIT
    return np.flatnonzero(b0), np.flatnonzero(~b0)


def check_adaptable(role: str, source: Gradients, model_bvals: np.ndarray) -> None:
    """Raise :class:`MRHNetError` when a subject shell cannot be re-expressed on a model shell."""
    s0, sw = _split(source.bvals)
    m0, mw = _split(model_bvals)
    if len(m0) and not len(s0):
        raise MRHNetError(f"{role}: the model needs b0 volumes but the subject's shell has none")
    if len(mw) == 0:
        return
    if len(sw) < 6:
        raise MRHNetError(f"{role}: {len(sw)} diffusion-weighted volumes; adapting needs at least 6 directions")
    b_model = float(np.median(model_bvals[mw]))
    off = np.abs(source.bvals[sw] - b_model) > B_TOL * b_model
    if off.any():
        k = int(sw[np.argmax(off)])
        raise MRHNetError(f"{role}: volume {k} has b={source.bvals[k]:.0f} s/mm^2 but the model's shell is "
                          f"b={b_model:.0f}; --adapt-protocol re-expresses directions within one shell only")


def adapt_shell(data: np.ndarray, source: Gradients, model_bvals: np.ndarray, model_bvecs: np.ndarray,
                order: int | None = None, smooth: float = DEFAULT_SMOOTH, progress: Progress | None = None,
                role: str = "dwi") -> np.ndarray:
    """A 4D shell (X, Y, Z, n_source) re-expressed on the model's table: (X, Y, Z, n_model) float32."""
    check_adaptable(role, source, model_bvals)
    prog = as_progress(progress)
    s0, sw = _split(source.bvals)
    m0, mw = _split(model_bvals)
    out = np.empty(data.shape[:3] + (len(model_bvals),), dtype=np.float32)
    if len(m0):
        if len(m0) == len(s0):
            out[..., m0] = data[..., s0]
        else:
            out[..., m0] = data[..., s0].mean(axis=3, keepdims=True)
    if len(mw):
        mat = direction_matrix(source.bvecs[sw], np.asarray(model_bvecs)[mw], order, smooth).astype(np.float32)
        n = data.shape[0]
        for i in range(n):  # slab by slab: bounded memory
            out[i][..., mw] = data[i][..., sw] @ mat.T
            if i % 16 == 0:
                prog.update(i / n, f"{role}: re-expressing on the model's directions")
    prog.update(1.0, f"{role}: adapted")
    return out


def same_table(source: Gradients, bvals: np.ndarray, bvecs: np.ndarray, angle_tol_deg: float = 5.0) -> bool:
    """True when a subject shell already matches the model's (b0 pattern, b-values, directions up to sign)."""
    if len(source.bvals) != len(bvals):
        return False
    s0, m0 = source.bvals < B0_LIMIT, np.asarray(bvals) < B0_LIMIT
    if (s0 != m0).any() or np.any(np.abs(source.bvals - bvals) > B_TOL * np.maximum(bvals, 100)):
        return False
    cos = np.abs((source.bvecs[~s0] * np.asarray(bvecs)[~m0]).sum(axis=1))
    return bool(len(cos) == 0 or cos.min() >= np.cos(np.radians(angle_tol_deg)))


def adapt_subject(subject, model: Protocol, order: int | None = None, progress=None):
    """A copy of ``subject`` whose DWI shells are re-expressed on ``model``'s gradient tables (other
    images shared, not copied). Shells that already match are kept as they are; shells the model does
    not use are dropped."""
    from .subject import DWI, Subject

    prog = as_progress(progress)
    out = Subject(images=dict(subject.images), name=subject.name)
    roles = [r for r in model.roles() if r in DWI_ROLES]
    for k, role in enumerate(roles):
        if role not in subject.dwi:
            raise MRHNetError(f"{subject.name}: lacks the {role} shell that the model needs")
        d = subject.dwi[role]
        bvals, bvecs = model.shell(role)
        if same_table(d.gradients, bvals, bvecs):
            out.dwi[role] = d
            continue
        data = adapt_shell(d.volume.data, d.gradients, bvals, bvecs, order, progress=prog.sub(k / len(roles), (k + 1) / len(roles)),
                           role=role)
        out.dwi[role] = DWI(d.volume.with_data(data), Gradients(bvals, bvecs))
    return out


def adapted_protocol(subject_protocol: Protocol, model: Protocol) -> Protocol:
    """The protocol a subject has after :func:`adapt_subject`: the model's DWI channels, its own others."""
    chans = [c for c in model.channels if c.role in DWI_ROLES and c.role in subject_protocol.roles()]
    chans += [Channel(c.role, c.bval, c.bvec) for c in subject_protocol.channels if c.role not in DWI_ROLES]
    return Protocol(chans, subject_protocol.input_kind, subject_protocol.patch_plane, subject_protocol.half_patch,
                    subject_protocol.normalisation, subject_protocol.voxel_size_mm)
