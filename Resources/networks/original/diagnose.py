"""Where the original MRH-AF networks and the phantom's AF truth part ways (issue 14, part 1).

    nice -n 10 python Resources/networks/original/diagnose.py OUT_DIR

On the 4,000 voxels of brain C1 that ``calibrate.py`` searches on (12 coronal slices, full size, original
protocol, the search's centre-voxel evaluation), for the default and the calibrated physics set:

1. **What the maps follow.** A least-squares fit of each network's AF map, and of the truth, to the tissue
   properties (each on its 0..1 scale: cell bodies / ``CELLS_MAX``, myelin / ``MYELIN_MAX``, axons /
   ``AXON_MAX``, free water, fibre dispersion, pigment), with the fit's R^2.
2. **Grey-matter response.** How much each map rises per unit volume fraction of cell bodies, myelin and
   axons in grey matter (myelin below 15 % of its maximum, no free water): the network's by the chain rule
   (its gradient with respect to its 67 inputs, by autograd, times the finite-difference change of the
   simulated inputs), the truth's from its formula; medians over the grey-matter voxels.
3. **Noise.** r and mean prediction / mean truth with no noise and at SNR 80, 40 (the phantom's) and 20.
4. **Ceilings.** r of the truth with the truth whose pigment is replaced by its mean (what a perfect
   MRI-based predictor could reach if the pigment were all it misses), and r of a gradient-boosting fit of
   the truth to the noise-free inputs (five folds split into left-right slabs): what the simulated MRI
   carries about the truth.
5. **Fibre orientation.** DTI FA of grey and white matter (dipy, b 2000, noise-free); r with every voxel's
   fibres made isotropic; with grey-matter fibres (myelin below ``GREY_MYELIN`` of its maximum) as the
   phantom had them before this version (along the NF map's ridges, that is along the cortical layers, and
   aligned as in white matter) instead of radial and more dispersed; and with the protocol's gradient
   directions under each of the 24 axis permutations and single-axis flips (the best, and the shipped one).
   Calibrated set only.
6. **Real maps.** The voxel correlation of the shipped real virtual-AF and virtual-Nissl maps (the
   phantom's anatomy sources: outputs of the original networks on two real brains, on one grid) where both
   are valid (AF above 0, Nissl above 10, as the phantom reads them).

Writes ``diagnose_C1.json`` into OUT_DIR. About 50 s on 2 cores.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibrate import HEADROOM, FastEvaluator, full_tissue, split  # noqa: E402
from phantom_check import NETWORKS  # noqa: E402

from MRHNetLib.data.protocol import Protocol  # noqa: E402
from MRHNetLib.network.infer import as_model  # noqa: E402
from MRHNetLib.resources import resource  # noqa: E402
from MRHNetLib.simulation import calibration  # noqa: E402
from MRHNetLib.simulation.phantom import AF_SOURCE, NISSL_SOURCE  # noqa: E402
from MRHNetLib.simulation.tissue import (  # noqa: E402
    AXON_MAX, CELLS_MAX, MYELIN_MAX, TARGET_SCALE, Tissue, dwi_signal, histology)

PROPERTIES = {"cells": CELLS_MAX, "myelin": MYELIN_MAX, "axon": AXON_MAX, "water": 1.0, "dispersion": 1.0,
              "lipofuscin": 1.0}
FRACTIONS = ("cells", "myelin", "axon")  # fractions whose grey-matter response is measured (they displace extra)
NOISE_LEVELS = {"none": 0.0, "SNR 80": 0.0125, "SNR 40 (phantom)": 0.025, "SNR 20": 0.05}


def grey_matter(t: Tissue) -> np.ndarray:
    """Grey matter as the diagnosis uses it: myelin below 15 % of its maximum, no free water."""
    return (t.myelin / MYELIN_MAX < 0.15) & (t.water < 0.05)


def linear_weights(t: Tissue, y: np.ndarray) -> dict[str, float]:
    """Least-squares weights of ``y`` / 255 on the tissue properties (each on its 0..1 scale), and the R^2."""
    x = np.column_stack([getattr(t, k) / scale for k, scale in PROPERTIES.items()] + [np.ones(len(y))])
    coef, *_ = np.linalg.lstsq(x, y / TARGET_SCALE, rcond=None)
    fit = x @ coef
    r2 = 1.0 - float(((y / TARGET_SCALE - fit) ** 2).sum() / ((y / TARGET_SCALE - (y / TARGET_SCALE).mean()) ** 2).sum())
    return {**{k: round(float(c), 3) for k, c in zip(PROPERTIES, coef)}, "R2": round(r2, 3)}


def with_more(t: Tissue, name: str, step: float) -> Tissue:
    """``t`` with ``step`` more volume fraction of ``name``, taken from the extra-cellular space."""
    out = t.subset(np.arange(len(t.index)))
    setattr(out, name, getattr(out, name) + np.float32(step))
    out.extra = (1.0 - out.axon - out.myelin - out.cells - out.water).astype(np.float32)
    return out


def grey_response(ev: FastEvaluator, values: dict[str, float], model, step: float = 0.02) -> dict[str, float]:
    """Median change of the network's map per unit volume fraction of each of ``FRACTIONS`` in grey matter."""
    torch = ev.torch
    p, gains = split(values)
    t = ev.sample
    grey = grey_matter(t)
    top = float(ev.signals(ev.bright, p, gains)[:, [0, 32, 64, 65, 66]].max()) * HEADROOM
    base = ev.signals(t, p, gains)
    x = torch.from_numpy((ev.noisy(base) / top).astype(np.float32))[:, :, None, None].expand(-1, -1, 3, 3)
    x = x.contiguous().requires_grad_(True)
    (model.net(x)[:, 0, 1, 1] * TARGET_SCALE).sum().backward()
    grad = x.grad.sum(dim=(2, 3)).numpy()  # a uniform patch: the centre output's gradient summed over the patch
    return {k: round(float(np.median(((ev.signals(with_more(t, k, step), p, gains) - base) / top / step * grad)
                                     .sum(axis=1)[grey])), 1) for k in FRACTIONS}


def truth_response(t: Tissue, step: float = 0.02) -> dict[str, float]:
    grey = grey_matter(t)
    base = histology(t)["af"]
    return {k: round(float(np.median(((histology(with_more(t, k, step))["af"] - base) / step)[grey])), 1)
            for k in FRACTIONS}


def boosting_ceiling(ev: FastEvaluator, values: dict[str, float], folds: int = 5) -> float:
    """r of a gradient-boosting fit of the truth to the noise-free inputs, out of fold (left-right slabs)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    p, gains = split(values)
    x = ev.signals(ev.sample, p, gains)
    lr = np.unravel_index(ev.sample.index, ev.sample.shape)[0]
    slab = np.searchsorted(np.quantile(lr, np.linspace(0, 1, folds + 1)[1:-1]), lr, side="right")
    pred = np.empty(len(x))
    for k in range(folds):
        test = slab == k
        fit = HistGradientBoostingRegressor(max_iter=300, random_state=0).fit(x[~test], ev.truth[~test])
        pred[test] = fit.predict(x[test])
    return round(float(np.corrcoef(pred, ev.truth)[0, 1]), 3)


def real_maps_r() -> float:
    """Voxel r of the shipped real virtual-AF and virtual-Nissl maps where both are valid."""
    import nibabel as nib

    af, nissl = (np.asarray(nib.load(str(resource("anatomy", name))).dataobj, dtype=np.float32)
                 for name in (AF_SOURCE, NISSL_SOURCE))
    valid = (af > 0) & (nissl > 10)
    return round(float(np.corrcoef(af[valid], nissl[valid])[0, 1]), 3)


def orientation_probes(ev: FastEvaluator, values: dict[str, float], nets: dict) -> dict:
    """Item 5 of the module docstring (restores the evaluator's directions, dispersion and shells)."""
    from MRHNetLib.data.io import rotation_of
    from MRHNetLib.simulation.phantom import GREY_ALIGNMENT, GREY_MYELIN, structure_orientation

    t = ev.sample
    physics, _ = split(values)
    fa = calibration.dti_fa(t, physics)
    myelin = t.myelin / MYELIN_MAX
    grey, white = grey_matter(t), myelin > 0.6
    score = lambda: {label: round(ev.score(values, m)[0], 3) for label, m in nets.items()}  # noqa: E731
    out: dict = {"fa_grey": round(float(np.median(fa[grey])), 3), "fa_white": round(float(np.median(fa[white])), 3)}
    direction, dispersion, shells = t.direction.copy(), t.dispersion.copy(), list(ev.shells)
    try:
        t.dispersion[:] = 1.0
        out["isotropic_fibres"] = score()
        full, affine = full_tissue("C1")
        ridge = structure_orientation(full.to_volume(full.axon / AXON_MAX), np.sqrt((affine[:3, :3] ** 2).sum(0)),
                                      t.index)[0] @ rotation_of(affine).T.astype(np.float32)
        ridge /= np.maximum(np.linalg.norm(ridge, axis=1, keepdims=True), 1e-6)
        old = (myelin < GREY_MYELIN)[:, None]
        t.direction[:] = np.where(old, ridge, direction)
        t.dispersion[:] = np.where(old[:, 0], 1 - (1 - dispersion) / GREY_ALIGNMENT, dispersion)
        out["grey_along_ridges_as_before"] = {**score(), "fa_grey": round(float(np.median(
            calibration.dti_fa(t, physics)[grey])), 3)}
        t.direction[:], t.dispersion[:] = direction, dispersion
        scan = []
        for perm in itertools.permutations(range(3)):
            for flip in ((1, 1, 1), (-1, 1, 1), (1, -1, 1), (1, 1, -1)):
                ev.shells = [(bs, gs[:, perm] * np.array(flip)) for bs, gs in shells]
                scan.append({"axes": "".join("RAS"[k] for k in perm), "flip": list(flip), "r": score()})
        out["gradient_frames_shipped"] = scan[0]
        out["gradient_frames_best"] = max(scan, key=lambda e: sum(e["r"].values()))
    finally:
        t.direction[:], t.dispersion[:], ev.shells = direction, dispersion, shells
    return out


def main(out_dir: Path) -> dict:
    t0 = time.monotonic()
    proto = Protocol.from_json(resource("protocols", "original.json").read_text())
    ev = FastEvaluator(proto)
    nets = {label: as_model(name) for label, name in NETWORKS.items()}
    sets = {"default": {"gain_mt": 1.0, "gain_dwi": 1.0},
            "calibrated": {p.name: p.value for p in calibration.parameters()}}
    t = ev.sample
    flat = t.subset(np.arange(len(t.index)))
    flat.lipofuscin[:] = t.lipofuscin.mean()
    grey = grey_matter(t)
    result: dict = {"brain": "C1", "voxels": len(t.index), "grey_matter_voxels": int(grey.sum()),
                    "truth": {"linear_weights": linear_weights(t, ev.truth), "grey_response": truth_response(t)},
                    "pigment_ceiling_r": round(float(np.corrcoef(histology(flat)["af"], ev.truth)[0, 1]), 3),
                    "real_maps_r_af_nissl": real_maps_r()}
    for set_name, values in sets.items():
        entry: dict = {"boosting_ceiling_r": boosting_ceiling(ev, values)}
        for label, model in nets.items():
            noise = {}
            for level, sigma in NOISE_LEVELS.items():
                ev.noise = sigma
                noise[level] = [round(v, 3) for v in ev.score(values, model)]
            ev.noise = NOISE_LEVELS["SNR 40 (phantom)"]
            entry[label] = {"linear_weights": linear_weights(t, ev.predict(values, model)),
                            "grey_response": grey_response(ev, values, model), "r_and_mean_ratio_by_noise": noise}
        result[set_name] = entry
        print(set_name, json.dumps(entry), flush=True)
    result["orientation"] = orientation_probes(ev, sets["calibrated"], nets)
    print("orientation", json.dumps(result["orientation"]), flush=True)
    result["wall_s"] = round(time.monotonic() - t0)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diagnose_C1.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=".", type=Path)
    main(parser.parse_args().out_dir)
