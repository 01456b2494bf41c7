"""Calibrate the simulator's physics against the original authors' MRH-AF networks (issue 14, part 1).

    nice -n 10 python Resources/networks/original/calibrate.py OUT_DIR [--generations 15] [--figure]
        [--check-only | --extended]

(The shipped set came from ``--generations 30``, its first generation holding the set shipped before it:
``x0`` in ``calibration_C1.json``.)

1. **Search** (4-block network only): differential evolution (scipy) over the parameters of
   ``CALIBRATION_RANGES`` in ``MRHNetLib/simulation/calibration.py`` (tissue T2 rates, MT exchange, bound
   pool per myelin and saturation duty, extra-axonal and cell-body diffusivity) and the receiver scaling of
   the MT and DWI scans relative to T2w, each kept inside its published range. Each evaluation simulates
   the signals of 4,000 voxels drawn from the 12 coronal slices of ``phantom_check.py`` (brain C1, full
   size, original protocol) with Rician noise at the phantom's SNR 40, divides them by the global maximum
   (the brightest voxels of every scan, times the 1.13 that the coil profile and noise add in a full
   simulation, measured at the default physics) and runs the network on uniform 3 x 3 patches (the paper:
   uniform patches lose little). The objective is ``-r`` plus ``|log(mean prediction / mean truth)|``
   beyond a 10 % tolerance (the goal is within 20 %) plus a penalty for every published contrast
   (``REFERENCE_CONTRASTS``: grey- and white-matter T2 and MTR, grey-matter MD and FA) the parameters
   leave, on C1's 4,000 voxels and on 4,000 voxels of the same slices of brain R2 (contrasts only: the
   network is not run on R2): fits that please the network but are not MRI are refused. The first
   generation includes the shipped set. Values are rounded to 3 significant digits.
2. **Check** (both networks, exact product path): brain C1 simulated by ``simulate_subject`` with the
   default and with the calibrated set (noise, bias field and all), both networks run through
   ``MRHNetLib.network.infer.predict`` on the 12 slices, as ``phantom_check.py`` does: Pearson r and
   mean prediction / mean truth, before and after, and the contrasts of both sets; then the same on brain
   R2 (its own anatomy source for axons, not used in the search). Writes
   ``calibration_C1.json`` (and with ``--figure`` ``calibration_C1.png``: inputs and maps before and
   after) into OUT_DIR.

``--extended`` searches ``EXTENDED_RANGES`` too (tissue T1 and its myelin term, intra-axonal diffusivity, tissue
water density: 14 parameters, about 30 CPU-minutes) and writes ``calibration_C1_extended.json``; it found no
better agreement than the shipped search, which is why the shipped set leaves those constants at their defaults.

The search prints the values it found; the shipped set (``CALIBRATED_PHYSICS`` / ``CALIBRATED_GAINS``
in ``MRHNetLib/simulation/calibration.py``) is what ``--check-only`` evaluates. About 10 minutes of CPU
on 2 cores (the check alone 2 minutes).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from phantom_check import NETWORKS, slab_mask  # noqa: E402

from MRHNetLib.data.protocol import Protocol  # noqa: E402
from MRHNetLib.network.infer import as_model, predict  # noqa: E402
from MRHNetLib.resources import resource  # noqa: E402
from MRHNetLib.simulation import calibration  # noqa: E402
from MRHNetLib.simulation.phantom import (  # noqa: E402
    DEFAULT_NOISE, SIGNAL_SCALE, SIZES, anatomy_tissue, coronal_slice, simulate_subject)
from MRHNetLib.simulation.tissue import PHYSICS, Tissue, dwi_signal, histology, mt_signals, t2w_signal  # noqa: E402

MEAN_WEIGHT = 1.0  # weight of |log(mean prediction / mean truth)| against -r in the search objective ...
MEAN_TOLERANCE = 0.1  # ... beyond this relative distance (the goal is within 20 %: inside 10 % costs nothing)
CONTRAST_WEIGHT = 5.0  # weight of the relative distance outside each published contrast range
HEADROOM = 1.13  # global maximum of a full simulation (coil profile, noise) / noise-free maximum, default physics
# the acquisition whose unweighted signal sets each channel's noise: b0 of each DWI shell, T2w, MT-off for both MT
NOISE_REFERENCE = np.repeat([0, 32, 64, 66], [32, 32, 1, 2])


@functools.lru_cache(maxsize=2)
def full_tissue(brain: str) -> tuple[Tissue, np.ndarray]:
    """A brain's tissue on the original grid (built once: the search and each check's contrasts share it)."""
    return anatomy_tissue(brain, SIZES["full"])


def search_space(extended: bool = False) -> dict[str, tuple[float, float]]:
    """The searched parameters and their ranges: the physics of ``CALIBRATION_RANGES`` (with ``extended`` also
    ``EXTENDED_RANGES``), then the MT and DWI receiver scalings (searched on a log scale)."""
    ranges = {**calibration.CALIBRATION_RANGES, **(calibration.EXTENDED_RANGES if extended else {})}
    return {**{n: r[:2] for n, r in ranges.items()}, "gain_mt": calibration.GAIN_RANGE,
            "gain_dwi": calibration.GAIN_RANGE}


def decode(u: np.ndarray, space: dict[str, tuple[float, float]]) -> dict[str, float]:
    out = {}
    for (name, (lo, hi)), v in zip(space.items(), np.clip(u, 0.0, 1.0)):
        out[name] = float(np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * v)) if name.startswith("gain") \
            else float(lo + (hi - lo) * v)
    return out


def encode(values: dict[str, float], space: dict[str, tuple[float, float]]) -> np.ndarray:
    """Inverse of :func:`decode`."""
    return np.array([(np.log(values[n]) - np.log(lo)) / (np.log(hi) - np.log(lo)) if n.startswith("gain")
                     else (values[n] - lo) / (hi - lo) for n, (lo, hi) in space.items()])


def shipped(space: dict[str, tuple[float, float]]) -> dict[str, float]:
    """The shipped calibrated set's value of every searched parameter (the default where it has none): the
    search starts from it (one member of the first generation)."""
    values = {p.name: p.value for p in calibration.parameters()}
    return {n: values.get(n, getattr(PHYSICS, n, 1.0)) for n in space}


def split(values: dict[str, float]) -> tuple:
    """(physics constants, receiver gains) of a parameter dict as the search and the check use it."""
    physics = dataclasses.replace(PHYSICS, **{k: v for k, v in values.items() if not k.startswith("gain")})
    return physics, {"t2w": 1.0, "mt": values.get("gain_mt", 1.0), "dwi": values.get("gain_dwi", 1.0)}


def slab_sample(brain: str, n_voxels: int, n_slices: int, rng: np.random.Generator) -> Tissue:
    """``n_voxels`` random voxels of a brain's tissue (original grid) inside the 12 coronal slices of
    ``phantom_check.py``."""
    tissue, affine = full_tissue(brain)
    smask, _ = slab_mask(tissue.to_volume(tissue.partial >= 0.5) > 0, affine, n_slices)
    inside = np.flatnonzero(smask.reshape(-1)[tissue.index])
    return tissue.subset(np.sort(rng.choice(inside, size=min(n_voxels, len(inside)), replace=False)))


class FastEvaluator:
    """Centre-voxel evaluation of one network on sampled voxels of the 12 slices, with Rician noise."""

    def __init__(self, proto: Protocol, n_voxels: int = 4000, n_slices: int = 12, noise: float = DEFAULT_NOISE,
                 guard_brains: tuple[str, ...] = ()):
        import torch

        self.torch = torch
        tissue = full_tissue("C1")[0]
        rng = np.random.default_rng(0)
        self.sample = slab_sample("C1", n_voxels, n_slices, rng)
        # candidates for the global maximum: the brightest 0.5 % of every unweighted scan (default physics)
        bright = np.zeros(len(tissue.index), bool)
        on, off = mt_signals(tissue)
        b0 = dwi_signal(tissue, np.zeros(1), np.zeros((1, 3)))[:, 0]
        for v in (t2w_signal(tissue), on, off, b0):
            bright |= v >= np.percentile(v, 99.5)
        self.bright = tissue.subset(np.flatnonzero(bright))
        self.shells = [proto.shell(r) for r in ("dwi_b2000", "dwi_b5000")]
        self.truth = histology(self.sample)["af"]
        self.noise = noise
        n = len(self.sample.index)
        self.draws = rng.standard_normal((2, n, 67)).astype(np.float32)  # common random numbers
        # brains whose contrasts must stay in range too (the network is not run on them)
        self.guard = [slab_sample(b, n_voxels, n_slices, np.random.default_rng(1)) for b in guard_brains]

    def signals(self, t: Tissue, p, gains: dict[str, float]) -> np.ndarray:
        return calibration.original_inputs(t, p, gains, self.shells) * SIGNAL_SCALE

    def noisy(self, x: np.ndarray) -> np.ndarray:
        """Rician noise, sigma = noise x the median unweighted signal of each acquisition (as simulate_subject)."""
        sigma = np.median(x[:, NOISE_REFERENCE], axis=0).astype(np.float32)
        sigma *= self.noise
        return np.sqrt((x + sigma * self.draws[0]) ** 2 + (sigma * self.draws[1]) ** 2)

    def predict(self, values: dict[str, float], model) -> np.ndarray:
        p, gains = split(values)
        x = self.noisy(self.signals(self.sample, p, gains))
        top = float(self.signals(self.bright, p, gains)[:, [0, 32, 64, 65, 66]].max()) * HEADROOM
        xt = self.torch.from_numpy((x / top).astype(np.float32))[:, :, None, None].expand(-1, -1, 3, 3).contiguous()
        with self.torch.no_grad():
            return model.net(xt)[:, 0, 1, 1].numpy() * 255.0

    def score(self, values: dict[str, float], model) -> tuple[float, float]:
        pred = self.predict(values, model)
        return float(np.corrcoef(pred, self.truth)[0, 1]), float(pred.mean() / self.truth.mean())

    def contrast_penalty(self, values: dict[str, float]) -> float:
        """Summed relative distance of the contrasts of the sample (and of each guard brain's sample) outside
        their published ranges (0 inside)."""
        physics = split(values)[0]
        return float(sum(sum(calibration.contrast_excess(calibration.contrasts(t, physics)).values())
                         for t in [self.sample, *self.guard]))


def search(proto: Protocol, generations: int, extended: bool = False) -> dict:
    from scipy.optimize import differential_evolution

    t0 = time.process_time()
    space = search_space(extended)
    x0 = shipped(space)
    ev = FastEvaluator(proto, guard_brains=("R2",))
    net4 = as_model(NETWORKS["4 blocks"])
    history = []

    def loss(u: np.ndarray) -> float:
        values = decode(u, space)
        r, ratio = ev.score(values, net4)
        off = max(abs(np.log(max(ratio, 1e-3))) - np.log(1 + MEAN_TOLERANCE), 0.0)
        value = -r + MEAN_WEIGHT * off + CONTRAST_WEIGHT * ev.contrast_penalty(values)
        history.append(value)
        return value

    res = differential_evolution(loss, [(0.0, 1.0)] * len(space), maxiter=generations, popsize=10, seed=0,
                                 tol=1e-4, polish=False, init="sobol", x0=encode(x0, space))
    found = {k: float(f"{v:.3g}") for k, v in decode(res.x, space).items()}
    start = {n: 1.0 if n.startswith("gain") else getattr(PHYSICS, n) for n in space}
    out = {"ranges": space, "start": start, "x0": x0, "generations": generations, "found": found,
           "evaluations": len(history), "objective": round(float(res.fun), 4),
           "contrast_penalty": round(ev.contrast_penalty(found), 4), "fast_before": {}, "fast_after": {}}
    for label, name in NETWORKS.items():
        m = as_model(name)
        out["fast_before"][label] = [round(v, 3) for v in ev.score(start, m)]
        out["fast_after"][label] = [round(v, 3) for v in ev.score(found, m)]
    out["cpu_s"] = round(time.process_time() - t0)
    print("search:", json.dumps(out), flush=True)
    return out


def check(proto: Protocol, physics_set: str, n_slices: int = 12, values: dict[str, float] | None = None,
          brain: str = "C1"):
    """(result dict, subject, maps, mask, chosen slices) of the exact product path for one physics set
    (or, with ``values``, the default set with these parameter values, as the search reports them)."""
    physics, gains = calibration.physics_set(physics_set) if values is None else split(values)
    subject = simulate_subject(brain, seed=0, size="full", protocol=proto, physics=physics, gains=gains)
    mask, chosen = slab_mask(subject.mask, subject.affine, n_slices)
    subject.images["mask"] = subject.reference.with_data(mask.astype(np.float32), "mask")
    truth = subject.target("af")[mask]
    result, maps = {}, {}
    for label, name in NETWORKS.items():
        pred = predict(subject, [as_model(name)], device="cpu")["af"].data
        values = pred[mask]
        result[label] = {"pearson_r": round(float(np.corrcoef(values, truth)[0, 1]), 3),
                         "mean_ratio": round(float(values.mean() / truth.mean()), 3),
                         "pred_mean": round(float(values.mean()), 1)}
        maps[label] = pred
    result["truth_mean"] = round(float(truth.mean()), 1)
    result["contrasts"] = {k: round(v, 3) for k, v in calibration.contrasts(full_tissue(brain)[0], physics).items()}
    result["voxels"] = int(mask.sum())
    print(brain, physics_set, json.dumps(result), flush=True)
    return result, subject, maps, mask, chosen


def make_figure(path: Path, runs: dict) -> Path:
    """Rows: default and calibrated set. Columns: T2w, MT-on, MT-off, b0 and one b~4800 DWI (each divided by
    the subject's global maximum, one shared window per column), AF truth, 4- and 9-block maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 8, figsize=(20, 3.4 * len(runs)))
    for row, (name, (result, subject, maps, mask, chosen)) in enumerate(runs.items()):
        aff = subject.affine
        mid = int(chosen[len(chosen) // 2])
        inside = coronal_slice(mask, aff, mid) > 0
        top = max(float(v.data.max()) for k, v in subject.images.items() if k in ("t2w", "mt_on", "mt_off"))
        top = max([top] + [float(d.volume.data.max()) for d in subject.dwi.values()])
        d5 = subject.dwi["dwi_b5000"].volume.data
        panels = [("T2w / max", subject.images["t2w"].data / top, (0, 1), "gray"),
                  ("MT-on / max", subject.images["mt_on"].data / top, (0, 1), "gray"),
                  ("MT-off / max", subject.images["mt_off"].data / top, (0, 1), "gray"),
                  ("DWI b0 / max", subject.dwi["dwi_b2000"].volume.data[..., 0] / top, (0, 1), "gray"),
                  ("DWI b~4800 (one dir.) / max", d5[..., 2] / top, (0, 0.3), "gray"),
                  ("AF truth", subject.target("af"), (0, 255), "viridis")]
        panels += [(f"original {label}\nr = {result[label]['pearson_r']:.2f}, mean x{result[label]['mean_ratio']:.2f}",
                    maps[label], (0, 255), "viridis") for label in NETWORKS]
        for ax, (title, vol, (lo, hi), cmap) in zip(axes[row], panels):
            img = np.ma.masked_where(~inside, coronal_slice(vol, aff, mid))
            ax.imshow(img.T, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(f"{name}:\n{title}", fontsize=8)
            ax.axis("off")
    fig.suptitle("Brain C1, original protocol, coronal slice: inputs (divided by the global maximum, as the "
                 "networks see them) and AF maps, default vs calibrated physics set", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


def main(out_dir: Path, generations: int = 15, figure: bool = False, check_only: bool = False,
         extended: bool = False) -> dict:
    t0, c0 = time.monotonic(), time.process_time()
    stem = "calibration_C1_extended" if extended else "calibration_C1"
    proto = Protocol.from_json(resource("protocols", "original.json").read_text())
    result: dict = {"brain": "C1", "seed": 0, "grid": "200x280x128 at 0.0625 mm",
                    "protocol": "Resources/protocols/original.json"}
    found = None
    if not check_only:
        result["search"] = search(proto, generations, extended)
        found = result["search"]["found"]
        result["checked"] = "the values found by this search"
    else:
        result["checked"] = "the shipped calibrated set (MRHNetLib/simulation/calibration.py)"
    if found is None:
        result["parameters"] = {p.name: {"value": p.value, "range": [p.low, p.high]} for p in calibration.parameters()}
    else:
        result["parameters"] = {k: {"value": v, "range": list(result["search"]["ranges"][k])} for k, v in found.items()}
    runs = {"default": check(proto, "default"), "calibrated": check(proto, "calibrated", values=found)}
    result["before"], result["after"] = runs["default"][0], runs["calibrated"][0]
    out_dir.mkdir(parents=True, exist_ok=True)
    if figure:
        make_figure(out_dir / f"{stem}.png", runs)
    del runs  # keep memory low: brain R2 is a check of the numbers only
    result["R2"] = {"before": check(proto, "default", brain="R2")[0],
                    "after": check(proto, "calibrated", values=found, brain="R2")[0]}
    result["reference_contrasts"] = {k: [lo, hi] for k, (lo, hi, _) in calibration.REFERENCE_CONTRASTS.items()}
    result["contrast_problems"] = {k: calibration.contrast_problems(r["contrasts"]) for k, r in
                                   (("before", result["before"]), ("after", result["after"]))}
    result["wall_s"] = round(time.monotonic() - t0)
    result["cpu_s"] = round(time.process_time() - c0)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=".", type=Path)
    parser.add_argument("--generations", type=int, default=15, help="differential-evolution generations (default 15)")
    parser.add_argument("--figure", action="store_true")
    parser.add_argument("--check-only", action="store_true", help="skip the search; check the shipped set")
    parser.add_argument("--extended", action="store_true",
                        help="also search EXTENDED_RANGES (tissue T1, axon diffusivity, water density); writes "
                             "calibration_C1_extended.json")
    a = parser.parse_args()
    if a.extended and a.check_only:
        parser.error("--extended searches; --check-only checks the shipped set: use one of them")
    main(a.out_dir, a.generations, a.figure, a.check_only, a.extended)
