"""Test-time shift of a simulated brain: what makes a held-out brain differ as a new real brain would.

A :class:`Shift` changes, for one simulated subject only:

* **physics** (:data:`PHYSICS_RANGES`): relaxation, magnetisation-transfer and diffusion constants of
  :class:`~MRHNetLib.simulation.tissue.ExVivo7T`, each inside a stated range around the default (fixed
  ex vivo mouse brain at 7 T, sources in :mod:`MRHNetLib.simulation.tissue`), and the saturation pulse
  amplitude (B1 calibration error);
* **acquisition** (:data:`ACQUISITION_RANGES`): SNR, strength of the receive-coil bias field;
* **hidden factors**: ``hidden`` redraws the brain's own random tissue fields (myelin per axon,
  dispersion, extra T2 rate, pigment, cell-density jitter) and its coil profile independently;
* **histology against MRI** (:data:`HISTOLOGY_RANGES`): a smooth misregistration of each truth map
  (RMS displacement in mm; the paper's registration put 70 % of displacements within a voxel) and
  staining variability: a smooth multiplicative gain field (SD of its logarithm) and a nonlinear stain
  response ``255 * (value / 255) ** gamma``.

:func:`draw_shift` draws every factor independently and uniformly inside its range from one seed.
Functions here take and return arrays; :func:`MRHNetLib.simulation.phantom.simulate_subject` applies them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import MRHNetError
from .tissue import PHYSICS, ExVivo7T

# Physics constants (ExVivo7T field: (low, high, what it is)); every default lies inside its range.
PHYSICS_RANGES: dict[str, tuple[float, float, str]] = {
    "r2_base": (1 / 55.0, 1 / 42.0, "1/ms, T2 42-55 ms of tissue without myelin or cell bodies"),
    "r2_myelin": (0.035, 0.055, "1/ms per unit myelin fraction (white matter T2 about 25-30 ms)"),
    "r2_cells": (0.015, 0.025, "1/ms per unit cell fraction"),
    "t2_free": (150.0, 400.0, "ms, free fixative / PBS"),
    "r1_tissue": (1 / 1000.0, 1 / 800.0, "1/ms, T1 0.8-1.0 s of fixed tissue"),
    "r1_myelin": (1.2e-3, 2.0e-3, "1/ms per unit myelin fraction"),
    "bound_per_tissue": (0.05, 0.09, "bound-pool fraction of non-myelin tissue"),
    "bound_per_myelin": (0.35, 0.55, "bound-pool fraction per unit myelin"),
    "k_exchange": (6.0, 10.0, "1/s, effective exchange rate"),
    "t2_bound_us": (10.0, 14.0, "us, bound-pool T2 (super-Lorentzian line)"),
    "mt_b1_ut": (18.0, 22.0, "uT, saturation amplitude (20 uT nominal, +-10 % B1 calibration)"),
    "d_axon": (0.4e-3, 0.6e-3, "mm^2/s, intra-axonal parallel diffusivity (fixed tissue)"),
    "d_extra": (0.4e-3, 0.6e-3, "mm^2/s, extra-axonal parallel diffusivity"),
    "d_cells": (0.07e-3, 0.15e-3, "mm^2/s, cell-body water"),
    "d_free": (1.8e-3, 2.2e-3, "mm^2/s, free water at 18-24 C"),
}
ACQUISITION_RANGES: dict[str, tuple[float, float, str]] = {
    "snr": (25.0, 60.0, "SNR of the unweighted images (default 40)"),
    "bias": (0.0, 0.2, "SD of the log receive-coil profile (default 0.1)"),
}
HISTOLOGY_RANGES: dict[str, tuple[float, float, str]] = {
    "misregistration_mm": (0.0, 0.2, "RMS displacement of each truth map, mm (smooth, 1 mm correlation length)"),
    "stain_gain": (0.0, 0.2, "SD of the log multiplicative stain gain field (1.5 mm correlation length)"),
    "stain_gamma": (0.8, 1.25, "exponent of the stain response 255 (v/255)^gamma"),
}
# draw_shift keeps bias and the histology imperfections away from zero: a held-out brain always has some
DRAW_RANGES: dict[str, tuple[float, float]] = {"bias": (0.05, 0.2), "misregistration_mm": (0.05, 0.15),
                                               "stain_gain": (0.05, 0.15)}
MISREGISTRATION_LENGTH_MM = 1.0
STAIN_LENGTH_MM = 1.5


@dataclass(frozen=True)
class Shift:
    """A test-time shift; the defaults change nothing. ``physics`` overrides fields of ``ExVivo7T``;
    ``snr`` / ``bias`` replace the simulation's (None: keep); ``hidden`` > 0 redraws the hidden factors;
    ``seed`` seeds the misregistration and stain fields."""

    physics: dict[str, float] = field(default_factory=dict)
    snr: float | None = None
    bias: float | None = None
    hidden: int = 0
    misregistration_mm: float = 0.0
    stain_gain: float = 0.0
    stain_gamma: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_shift(self)

    @property
    def histology(self) -> bool:
        """Whether the truth maps are changed."""
        return self.misregistration_mm > 0 or self.stain_gain > 0 or self.stain_gamma != 1.0

    def apply(self, physics: ExVivo7T = PHYSICS) -> ExVivo7T:
        """``physics`` with this shift's constants."""
        return dataclasses.replace(physics, **self.physics) if self.physics else physics

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _inside(name: str, value: float, ranges: dict[str, tuple[float, float, str]]) -> None:
    lo, hi, what = ranges[name]
    if not (lo - 1e-12 <= value <= hi + 1e-12):
        raise MRHNetError(f"shift {name} = {value:g} is outside its range {lo:g}..{hi:g} ({what})")


def check_shift(shift: Shift) -> None:
    """Raise :class:`MRHNetError` when a factor of ``shift`` lies outside its stated range."""
    for name, value in shift.physics.items():
        if name not in PHYSICS_RANGES:
            raise MRHNetError(f"unknown shift constant '{name}' (use {', '.join(PHYSICS_RANGES)})")
        _inside(name, float(value), PHYSICS_RANGES)
    for name in ("snr", "bias"):
        value = getattr(shift, name)
        if value is not None:
            _inside(name, float(value), ACQUISITION_RANGES)
    for name in HISTOLOGY_RANGES:
        _inside(name, float(getattr(shift, name)), HISTOLOGY_RANGES)
    if shift.hidden < 0:
        raise MRHNetError(f"shift hidden = {shift.hidden} must not be negative")


def draw_shift(seed: int) -> Shift:
    """A shift with every factor drawn independently and uniformly inside its range (physics, SNR, bias,
    hidden factors, misregistration, stain gain and response), deterministic for ``seed`` (> 0)."""
    if seed <= 0:
        raise MRHNetError(f"shift seed {seed} must be a positive integer")
    rng = np.random.default_rng(np.random.SeedSequence([0x5A1F7, int(seed)]))
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    physics = {name: u(lo, hi) for name, (lo, hi, _) in PHYSICS_RANGES.items()}
    acq = {name: u(*DRAW_RANGES.get(name, (lo, hi))) for name, (lo, hi, _) in ACQUISITION_RANGES.items()}
    hist = {name: u(*DRAW_RANGES.get(name, (lo, hi))) for name, (lo, hi, _) in HISTOLOGY_RANGES.items()}
    return Shift(physics=physics, snr=acq["snr"], bias=acq["bias"], hidden=int(seed), seed=int(seed), **hist)


def describe_ranges() -> str:
    """One line per factor: name, range and meaning (for help texts and the README)."""
    rows = []
    for ranges in (PHYSICS_RANGES, ACQUISITION_RANGES, HISTOLOGY_RANGES):
        rows += [f"{name}: {lo:.4g}..{hi:.4g} ({what})" for name, (lo, hi, what) in ranges.items()]
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Histology against MRI


def displacement_field(fields: list[np.ndarray], rms_mm: float) -> np.ndarray:
    """(3, X, Y, Z) displacement in mm from three unit-SD smooth fields, scaled so that the RMS length of
    the displacement vector is ``rms_mm``."""
    u = np.stack([np.asarray(f, dtype=np.float32) for f in fields])
    rms = float(np.sqrt(np.mean(np.sum(u * u, axis=0))))
    return (u * (rms_mm / max(rms, 1e-12))).astype(np.float32)


def warp(volume: np.ndarray, displacement_mm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``volume`` sampled at ``x + u(x)`` (linear interpolation, edge values beyond the grid)."""
    shape = volume.shape
    coords = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    coords = [c + displacement_mm[k] / float(spacing[k]) for k, c in enumerate(coords)]
    return ndimage.map_coordinates(volume, coords, order=1, mode="nearest").astype(np.float32)


def stain_response(values: np.ndarray, gain_log: np.ndarray, gamma: float, scale: float = 255.0) -> np.ndarray:
    """Staining variability: ``scale * clip(values * exp(gain_log) / scale, 0, 1) ** gamma``."""
    v = np.clip(np.asarray(values, dtype=np.float64) * np.exp(gain_log) / scale, 0.0, 1.0)
    return (scale * v ** gamma).astype(np.float32)
