"""Tissue properties of a fixed mouse brain and the MRI signals and histology they produce.

A :class:`Tissue` holds, for the voxels of a support region, the volume fractions of five water / tissue
compartments and the fibre geometry; the functions below turn it into the three RARE images, DWI
shells at any b-values and directions, and the AF / NF / MBP histology maps. Every signal is
noise-free here (see :mod:`MRHNetLib.simulation.phantom` for bias and Rician noise).

Compartments (volume fractions, summing to 1 in every voxel):

* ``axon`` intra-axonal space (neurofilament-rich axoplasm): sticks along ``direction``;
* ``myelin`` myelin sheaths: short-T2 myelin water, most of the MT bound pool;
* ``cells`` cell bodies (Nissl substance): restricted isotropic diffusion, some bound pool;
* ``extra`` extra-cellular space: hindered (zeppelin) diffusion with a tortuous radial diffusivity;
* ``water`` free fluid (ventricles, surface fixative / PBS): fast isotropic diffusion, long T2 and T1.

Ex vivo constants (perfusion-fixed adult mouse brain at 7 T, room temperature, as scanned by Liang et
al., eLife 2022;11:e72331) are collected in :class:`ExVivo7T`; each field cites its source. They are
literature ranges, not fits to one data set; the goal is contrasts in the right order and proportion.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

# Upper ends of the fractions, used to put targets on a 0..255 scale like the real virtual-histology maps
AXON_MAX = 0.55
MYELIN_MAX = 0.30
CELLS_MAX = 0.30
TARGET_SCALE = 255.0


@dataclass(frozen=True)
class ExVivo7T:
    """Physical constants of fixed mouse brain at 7 T and the acquisition of the original study.

    Acquisition (Liang et al. 2022, Methods; Bruker method files in the original repository):
    DW-GRASE TE 30 ms (method file 32.9 ms), TR 400 ms, delta/Delta 5/15 ms; T2-weighted RARE TE 50 ms,
    TR 3000 ms; MT RARE TE 8 ms, TR 800 ms, saturation at -3 kHz with 20 uT (a train of Gaussian
    pulses; MT-off is the same sequence without saturation).

    Relaxation: aldehyde fixation shortens T2 and T1 (Shepherd et al., Magn Reson Med 2009;62:26-34;
    Birkl et al., NMR Biomed 2016). Fixed rodent grey matter T2 is about 35-45 ms and white
    matter about 25-30 ms at 7 T; fixed-tissue T1 about 0.6-1.0 s; free fixative / PBS T2 some hundreds of
    ms. Myelin water has T2 of about 10 ms (MacKay et al., Magn Reson Med 1994;31:673-7), so at TE 50 ms
    myelin adds almost nothing and myelinated white matter is darker than grey matter in T2w ex vivo.
    Tissue T2 is modelled as ``1 / (r2_base + r2_myelin * myelin + r2_cells * cells)`` with fast exchange
    between axon, cell and extra-cellular water (one tissue T2 per voxel).

    Magnetisation transfer: binary spin-bath model of Henkelman et al. (Magn Reson Med 1993;29:759-66)
    in steady state with a super-Lorentzian bound-pool line (T2b about 12 us; Morrison & Henkelman, Magn
    Reson Med 1995;33:475-82). Bound-pool fraction F = M0b / M0f about 0.1 in grey and 0.2 in white matter
    (Stanisz et al., Magn Reson Med 2005;54:507-12; Sled & Pike, Magn Reson Med 2001;46:923-31), most of
    it from myelin lipids; fixation raises MTR, which ex vivo is about 0.3-0.6 (Schmierer et al., Magn
    Reson Med 2008;59:268-77). ``k_exchange`` and ``mt_duty`` are effective values that fold the pulse
    train and the RARE readout into the continuous-wave steady state, chosen to give that MTR range.

    Diffusion: fixed tissue at room temperature has intrinsic diffusivities of about 0.2-0.6 um^2/ms
    (Alexander et al., NeuroImage 2010;52:1374-89 used 0.6 um^2/ms for fixed tissue; D'Arceuil et al.,
    NeuroImage 2007;35:553-65 report a two- to three-fold drop from in vivo); free water at about 20 C
    has 2.0 um^2/ms. Compartments as in the taxonomy of Panagiotaki et al. (NeuroImage 2012;59:2241-54):
    stick (intra-axonal), zeppelin with tortuosity (extra-axonal, Szafer et al., Magn Reson Med 1995;
    33:697-712), isotropic "dot/sphere" (cell bodies), ball (free water). Orientation dispersion is
    a mixture of the aligned and the powder-averaged (fully dispersed) compartment signal. Cell bodies
    (somata, radius 5-10 um) are larger than the diffusion length of fixed tissue at Delta 15 ms (about
    4 um), and cell layers of fixed hippocampus have a higher MD than the neuropil around them (Shepherd et
    al., NeuroImage 2006;32:1499-509), so ``d_cells`` need not be slow; the default keeps the slow value
    and the calibrated set (:mod:`MRHNetLib.simulation.calibration`) raises it.
    Diffusivities below are in mm^2/s (1 um^2/ms = 1e-3 mm^2/s) to match b in s/mm^2.
    """

    te_dwi: float = 30.0          # ms
    tr_dwi: float = 400.0         # ms
    te_t2w: float = 50.0          # ms
    tr_t2w: float = 3000.0        # ms
    te_mt: float = 8.0            # ms
    tr_mt: float = 800.0          # ms
    mt_offset_hz: float = -3000.0
    mt_b1_ut: float = 20.0
    mt_duty: float = 0.15         # effective fraction of time the saturation is on
    t2_bound_us: float = 12.0
    k_exchange: float = 8.0       # 1/s, exchange rate per unit bound-pool fraction (effective)
    r1_bound: float = 1.0         # 1/s
    bound_per_tissue: float = 0.07   # F of non-myelin tissue (proteins, membranes)
    bound_per_myelin: float = 0.45   # F added per unit myelin volume fraction
    r2_base: float = 1.0 / 48.0   # 1/ms: tissue without myelin or cell bodies
    r2_myelin: float = 0.045      # 1/ms per unit myelin fraction
    r2_cells: float = 0.02        # 1/ms per unit cell fraction
    t2_myelin_water: float = 10.0   # ms
    t2_free: float = 250.0        # ms
    r1_tissue: float = 1.0 / 950.0   # 1/ms
    r1_myelin: float = 1.6e-3     # 1/ms per unit myelin fraction
    t1_free: float = 2500.0       # ms
    pd_tissue: float = 0.80       # water density of axons, cells, extra-cellular space
    pd_myelin: float = 0.40       # water density of myelin (myelin water)
    pd_free: float = 1.0
    d_axon: float = 0.5e-3        # intra-axonal parallel diffusivity, mm^2/s
    d_extra: float = 0.5e-3       # extra-axonal parallel diffusivity
    d_cells: float = 0.1e-3       # apparent diffusivity of water in cell bodies
    d_free: float = 2.0e-3        # free fluid at room temperature


PHYSICS = ExVivo7T()


@dataclass
class Tissue:
    """Tissue properties of the voxels ``index`` (flat indices into ``shape``), each an (N,) float32 array
    except ``direction`` (N, 3) unit vectors in RAS world coordinates.

    ``dispersion`` is 0 for perfectly aligned fibres and 1 for an isotropic fibre distribution. ``r2_extra``
    (1/ms) and ``lipofuscin`` (0..1) are nuisance properties: fixation / temperature variation of T2, and
    the autofluorescent pigment that AF shows but no MRI contrast sees. ``partial`` is the fraction of the
    voxel inside the brain (the rest is Fomblin, which gives no signal)."""

    shape: tuple[int, int, int]
    index: np.ndarray
    axon: np.ndarray
    myelin: np.ndarray
    cells: np.ndarray
    water: np.ndarray
    direction: np.ndarray
    dispersion: np.ndarray
    r2_extra: np.ndarray
    lipofuscin: np.ndarray
    partial: np.ndarray
    extra: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        total = self.axon + self.myelin + self.cells + self.water
        over = total > 0.95  # leave at least 5 % extra-cellular space
        if over.any():
            solid = (self.axon + self.myelin + self.cells)[over]
            scale = np.clip((0.95 - self.water[over]) / np.maximum(solid, 1e-6), 0.0, 1.0)
            for name in ("axon", "myelin", "cells"):
                getattr(self, name)[over] *= scale
        self.extra = (1.0 - self.axon - self.myelin - self.cells - self.water).astype(np.float32)

    def subset(self, sel: np.ndarray) -> "Tissue":
        """The voxels ``sel`` (indices or a boolean mask into ``index``) as a tissue of their own (copies)."""
        fields = ("axon", "myelin", "cells", "water", "direction", "dispersion", "r2_extra", "lipofuscin", "partial")
        return Tissue(self.shape, self.index[sel], **{k: getattr(self, k)[sel].copy() for k in fields})

    def to_volume(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Scatter (N,) or (N, T) values onto the full grid (float32)."""
        values = np.asarray(values, dtype=np.float32)
        out = np.full((int(np.prod(self.shape)),) + values.shape[1:], fill, dtype=np.float32)
        out[self.index] = values
        return out.reshape(tuple(self.shape) + values.shape[1:])


# ---------------------------------------------------------------------------------------------
# Relaxation and MT


def tissue_t2(t: Tissue, p: ExVivo7T = PHYSICS) -> np.ndarray:
    """T2 (ms) of the fast-exchanging tissue water (axon, cell and extra-cellular)."""
    tissue = np.maximum(1.0 - t.water, 1e-3)
    return 1.0 / (p.r2_base + p.r2_myelin * t.myelin / tissue + p.r2_cells * t.cells / tissue + t.r2_extra)


def tissue_t1(t: Tissue, p: ExVivo7T = PHYSICS) -> np.ndarray:
    tissue = np.maximum(1.0 - t.water, 1e-3)
    return 1.0 / (p.r1_tissue + p.r1_myelin * t.myelin / tissue)


def _pools(t: Tissue, te: float, tr: float, p: ExVivo7T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signals of tissue water, myelin water and free water for a spin echo at ``te``/``tr``."""
    t2, t1 = tissue_t2(t, p), tissue_t1(t, p)
    sat = 1.0 - np.exp(-tr / t1)
    tissue = p.pd_tissue * (t.axon + t.cells + t.extra) * sat * np.exp(-te / t2)
    myelin = p.pd_myelin * t.myelin * sat * np.exp(-te / p.t2_myelin_water)
    free = p.pd_free * t.water * (1.0 - np.exp(-tr / p.t1_free)) * np.exp(-te / p.t2_free)
    return tissue, myelin, free


def t2w_signal(t: Tissue, p: ExVivo7T = PHYSICS) -> np.ndarray:
    """T2-weighted RARE (TE 50 ms, TR 3000 ms) signal, proton density 1 = free water at full recovery."""
    return (sum(_pools(t, p.te_t2w, p.tr_t2w, p)) * t.partial).astype(np.float32)


def super_lorentzian(offset_hz: float, t2_us: float, n: int = 2001) -> float:
    """Super-Lorentzian absorption line g(offset) in seconds (Morrison & Henkelman 1995)."""
    u = np.linspace(0.0, 1.0, n)
    a = np.abs(3 * u ** 2 - 1)
    a = np.maximum(a, 1e-4)
    t2 = t2_us * 1e-6
    g = np.sqrt(2 / np.pi) * t2 / a * np.exp(-2 * (2 * np.pi * offset_hz * t2 / a) ** 2)
    return float(np.trapezoid(g, u) if hasattr(np, "trapezoid") else np.trapz(g, u))


def bound_fraction(t: Tissue, p: ExVivo7T = PHYSICS) -> np.ndarray:
    """Bound-pool fraction F = M0b / M0f of the tissue water (myelin lipids and other macromolecules)."""
    tissue = np.maximum(1.0 - t.water, 1e-3)
    return p.bound_per_tissue + p.bound_per_myelin * t.myelin / tissue


def mt_saturation(t: Tissue, p: ExVivo7T = PHYSICS) -> np.ndarray:
    """Steady-state Mz/M0 of tissue water under off-resonance saturation of the bound pool.

    Two pools a (free) and b (bound), exchange ``k_f = k F`` (a->b) and ``k_r = k`` (b->a), bound-pool
    saturation rate ``W = pi * w1^2 * g(offset) * duty``; direct saturation of the free pool at 3 kHz is
    negligible. Solving dM/dt = 0 (Henkelman et al. 1993) gives
    ``Ma/M0a = (Ra + k_r Rb F / (Rb + k_r + W)) / (Ra + k_f - k_r k_f / (Rb + k_r + W))``."""
    w1 = 2 * np.pi * 42.577e6 * p.mt_b1_ut * 1e-6  # rad/s
    w = np.pi * w1 ** 2 * super_lorentzian(p.mt_offset_hz, p.t2_bound_us) * p.mt_duty
    ra = 1000.0 / tissue_t1(t, p)  # 1/s
    f = bound_fraction(t, p)
    kf, kr, rb = p.k_exchange * f, p.k_exchange, p.r1_bound
    den = rb + kr + w
    return ((ra + kr * rb * f / den) / (ra + kf - kr * kf / den)).astype(np.float32)


def mt_signals(t: Tissue, p: ExVivo7T = PHYSICS) -> tuple[np.ndarray, np.ndarray]:
    """(MT-on, MT-off) RARE signals (TE 8 ms, TR 800 ms); free fluid is not saturated."""
    tissue, myelin, free = _pools(t, p.te_mt, p.tr_mt, p)
    off = tissue + myelin + free
    on = (tissue + myelin) * mt_saturation(t, p) + free
    return (on * t.partial).astype(np.float32), (off * t.partial).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Diffusion


def _powder_stick(x: np.ndarray) -> np.ndarray:
    """Orientation average of exp(-x cos^2): sqrt(pi / (4x)) erf(sqrt(x)), 1 at x = 0."""
    x = np.maximum(x, 1e-8)
    return np.sqrt(np.pi / (4 * x)) * erf(np.sqrt(x))


def dwi_signal(t: Tissue, bvals: np.ndarray, bvecs: np.ndarray, p: ExVivo7T = PHYSICS,
               out: np.ndarray | None = None) -> np.ndarray:
    """DW-GRASE signal (TE 30 ms, TR 400 ms) of every voxel for each (b, g): returns (N, T) float32.

    Stick (axons, d_axon) and zeppelin (extra-cellular, parallel d_extra, radial ``d_extra * (1 - v)`` with
    v the axon share of the hindered + axon space, the tortuosity limit) along ``direction``, each mixed
    with its powder average by ``dispersion``; cell bodies as isotropic diffusion (``d_cells``); free water
    as a ball; myelin water (T2 10 ms) as non-diffusing. Weights are the compartments' T2/T1-weighted
    signals."""
    bvals = np.asarray(bvals, dtype=float).reshape(-1)
    bvecs = np.asarray(bvecs, dtype=float).reshape(-1, 3)
    tissue_w, myelin_w, free_w = _pools(t, p.te_dwi, p.tr_dwi, p)
    hind = np.maximum(t.axon + t.cells + t.extra, 1e-6)
    w_axon, w_cells, w_extra = (tissue_w * t.axon / hind, tissue_w * t.cells / hind, tissue_w * t.extra / hind)
    v = t.axon / np.maximum(t.axon + t.extra, 1e-6)
    d_perp = p.d_extra * (1.0 - v)
    disp = t.dispersion
    keep = 1.0 - disp
    n = len(t.index)
    if out is None:
        out = np.empty((n, len(bvals)), dtype=np.float32)
    cached_b, parts = None, ()
    for k, (b, g) in enumerate(zip(bvals, bvecs)):
        if b != cached_b:  # the parts that do not depend on the direction, once per run of equal b-values
            iso = (w_cells * np.exp(-b * p.d_cells) + myelin_w + free_w * np.exp(-b * p.d_free)
                   + w_axon * disp * _powder_stick(b * p.d_axon))
            radial = w_extra * np.exp(-b * d_perp)
            iso += radial * disp * _powder_stick(b * (p.d_extra - d_perp))
            parts = (iso.astype(np.float32), (radial * keep).astype(np.float32), (w_axon * keep).astype(np.float32),
                     (b * (p.d_extra - d_perp)).astype(np.float32))
            cached_b = b
        iso, radial_keep, axon_keep, bpar = parts
        if np.any(g):
            cos2 = (t.direction @ (g / np.linalg.norm(g)).astype(np.float32)) ** 2
        else:  # a b0 (or an unweighted volume without direction): orientation does not matter
            cos2 = np.float32(1 / 3)
        s = iso + axon_keep * np.exp(cos2 * np.float32(-b * p.d_axon)) + radial_keep * np.exp(-bpar * cos2)
        out[:, k] = s * t.partial
    return out


# ---------------------------------------------------------------------------------------------
# Histology


def histology(t: Tissue) -> dict[str, np.ndarray]:
    """Ground-truth histology on a 0..255 scale (like the real virtual-histology maps), (N,) each.

    * ``nf`` (neurofilament immunostain) = axon density: ``255 * axon / AXON_MAX``;
    * ``mbp`` (myelin basic protein) = myelin: ``255 * myelin / MYELIN_MAX``;
    * ``af`` (tissue autofluorescence, as in the Allen serial two-photon data): bright in cellular grey
      matter (cell bodies and their lipofuscin), dark in myelinated tracts and in fluid:
      ``255 * clip(0.25 + 0.55 cells/CELLS_MAX - 0.45 myelin/MYELIN_MAX + 0.3 lipofuscin, 0, 1) * (1 - water)``.

    Each depends on properties that every single MRI contrast sees only in part (FA: axons and their
    dispersion; MTR: myelin and tissue; T2: myelin, cells, fluid and fixation), so no single contrast
    determines a target."""
    nf = TARGET_SCALE * np.clip(t.axon / AXON_MAX, 0, 1)
    mbp = TARGET_SCALE * np.clip(t.myelin / MYELIN_MAX, 0, 1)
    af = TARGET_SCALE * np.clip(0.25 + 0.55 * t.cells / CELLS_MAX - 0.45 * t.myelin / MYELIN_MAX
                                + 0.3 * t.lipofuscin, 0, 1) * (1 - t.water)
    return {"af": af.astype(np.float32), "nf": nf.astype(np.float32), "mbp": mbp.astype(np.float32)}
