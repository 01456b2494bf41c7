"""Named physics sets of the simulator: the literature defaults and a set calibrated against the original
authors' MRH-AF networks (issue 14, part 1).

The authors' AF networks were trained on real ex vivo mouse MRI (7 T, original protocol, inputs divided by
the subject's global maximum), so how well their maps agree with the phantom's AF truth measures how real
the simulated contrast looks to them. ``Resources/networks/original/calibrate.py`` searches a handful of
physical parameters, each inside a stated range, for the values that make the 4-block network agree best
(the 9-block network is the check) and writes the numbers quoted in the README.

A set is a few :class:`~MRHNetLib.simulation.tissue.ExVivo7T` overrides plus the receiver scaling of each
acquisition (T2w, MT-on/off, DWI): real scanners store every scan with its own receiver gain and
reconstruction scaling, and the original networks divide all 67 inputs by one global maximum, so the
relative scaling of the scans changes what the networks see. The default set changes nothing: the
default-protocol phantom (what the demo networks are trained on) stays bit-identical. Only
``mrhnet phantom --physics-set calibrated`` (or ``physics_set("calibrated")``) uses the calibrated one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import MRHNetError
from .shift import PHYSICS_RANGES
from .tissue import PHYSICS, ExVivo7T


@dataclass(frozen=True)
class Parameter:
    """One calibrated parameter: its value, the range it must stay in, and where the range comes from."""

    name: str
    value: float
    low: float
    high: float
    unit: str
    source: str


GAIN_RANGE = (0.25, 4.0)
GAIN_SOURCE = ("assumption: each scan is stored with its own receiver gain (set per scan by the scanner's "
               "automatic adjustment) and reconstruction scaling, not recorded with the original data; "
               "relative to the T2w scan, a factor of 4 either way")

# Calibrated values (Resources/networks/original/calibrate.py; README table). Physics ranges are those
# of MRHNetLib.simulation.shift.PHYSICS_RANGES (sources in MRHNetLib.simulation.tissue).
CALIBRATED_PHYSICS: dict[str, float] = {
    "k_exchange": 9.86,         # 1/s; default 8
    "d_cells": 0.000149,        # mm^2/s; default 0.0001
    "r2_base": 0.0235,          # 1/ms (T2 42.6 ms); default 1/48
    "r2_myelin": 0.0354,        # 1/ms per unit myelin; default 0.045
}
CALIBRATED_GAINS: dict[str, float] = {"mt": 0.609, "dwi": 0.28}  # relative to T2w (default 1, 1)

PHYSICS_SOURCES: dict[str, str] = {
    "bound_per_myelin": "Stanisz et al., Magn Reson Med 2005; Sled & Pike, Magn Reson Med 2001 (F 0.1 grey, "
                        "0.2 white matter); Schmierer et al., Magn Reson Med 2008 (fixation raises MTR)",
    "mt_b1_ut": "Liang et al., eLife 2022 (20 uT nominal); +-10 % B1 calibration error (assumption)",
    "r2_base": "Shepherd et al., Magn Reson Med 2009; Birkl et al., NMR Biomed 2016 (fixed grey matter "
               "T2 35-45 ms at 7 T)",
    "r2_myelin": "Shepherd et al., Magn Reson Med 2009 (fixed white matter T2 25-30 ms at 7 T)",
    "k_exchange": "Henkelman et al., Magn Reson Med 1993; effective value (assumption)",
    "bound_per_tissue": "Stanisz et al., Magn Reson Med 2005",
    "r2_cells": "assumption (cell-dense grey matter slightly shorter T2)",
    "d_cells": "assumption: restricted water in cell bodies, below the fixed-tissue diffusivities of "
               "Alexander et al., NeuroImage 2010 and D'Arceuil et al., NeuroImage 2007",
    "d_axon": "Alexander et al., NeuroImage 2010; D'Arceuil et al., NeuroImage 2007",
    "d_extra": "Alexander et al., NeuroImage 2010; D'Arceuil et al., NeuroImage 2007",
}

SETS = ("default", "calibrated")


def parameters(name: str = "calibrated") -> list[Parameter]:
    """The parameters a set changes, with their ranges and sources (empty for ``default``)."""
    check_set(name)
    if name == "default":
        return []
    out = []
    for key, value in CALIBRATED_PHYSICS.items():
        lo, hi, what = PHYSICS_RANGES[key]
        out.append(Parameter(key, float(value), lo, hi, what, PHYSICS_SOURCES.get(key, "see tissue.py")))
    for key, value in CALIBRATED_GAINS.items():
        out.append(Parameter(f"gain_{key}", float(value), *GAIN_RANGE,
                             f"receiver scaling of the {key.upper()} images relative to T2w", GAIN_SOURCE))
    return out


def check_set(name: str) -> None:
    if name not in SETS:
        raise MRHNetError(f"unknown physics set '{name}' (use {', '.join(SETS)})")


def physics_set(name: str = "calibrated", base: ExVivo7T = PHYSICS) -> tuple[ExVivo7T, dict[str, float] | None]:
    """(physics constants, receiver gains or None) of a named set; ``default`` returns ``base`` and None."""
    check_set(name)
    if name == "default":
        return base, None
    return dataclasses.replace(base, **CALIBRATED_PHYSICS), {"t2w": 1.0, **CALIBRATED_GAINS}


def out_of_range(name: str = "calibrated") -> list[str]:
    """Parameters of a set outside their stated range (empty when all are inside)."""
    return [f"{p.name} = {p.value:g} outside {p.low:g}..{p.high:g}" for p in parameters(name)
            if not (p.low - 1e-12 <= p.value <= p.high + 1e-12)]
