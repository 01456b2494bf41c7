"""Run the original MRH-AF networks through the product's inference (:func:`MRHNetLib.network.infer.predict`, the
path of ``mrhnet predict`` and the Slicer module) on a brain simulated with the original protocol, and
report the Pearson correlation of their AF map with the phantom's AF truth inside the brain, for both
T2/MT channel orders. Writes ``af_vs_phantom_<brain>.json`` (and, with ``--figure``, the ``.png``) into
OUT_DIR.

    python Resources/networks/original/phantom_check.py OUT_DIR [--brain C1] [--seed 0] [--slices 12] [--figure]

The brain is simulated at full size (200 x 280 x 128 at 0.0625 mm, the original grid, so no resampling)
with exactly the protocol of ``Resources/protocols/original.json`` (b-values and directions from the
original method files). To keep the run short, the brain mask handed to ``predict`` is restricted to
``--slices`` evenly spaced coronal slices: the networks' 3 x 3 patches lie in coronal slices and the
original global-maximum normalisation is taken over the whole volume, not the mask, so the values at
those voxels are exactly those of a whole-brain prediction. The shipped networks record the original
code's order (T2w, MT-on, MT-off: one T2/MTON/MTOFF file appended after the DWI shells); the other order
(the original README's T2w, MT-off, MT-on) is the same subject with its MT-on and MT-off images swapped.
About 4 minutes and 7 GB on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from MRHNetLib.network.infer import as_model, predict
from MRHNetLib.simulation.phantom import coronal_slice, simulate_subject
from MRHNetLib.data.protocol import Protocol, plane_axes
from MRHNetLib.resources import resource

NETWORKS = {"4 blocks": "af-original-4blocks", "9 blocks": "af-original-9blocks"}
ORDERS = ("t2w,mt_on,mt_off", "t2w,mt_off,mt_on")  # the shipped (original code's) order first, then the README's


def shipped_order() -> str:
    """The T2/MT order both shipped networks record (they must agree)."""
    orders = {",".join(c.role for c in as_model(name).info.protocol.channels[-3:]) for name in NETWORKS.values()}
    if len(orders) != 1:
        raise SystemExit(f"the shipped original networks record different T2/MT orders: {sorted(orders)}")
    return orders.pop()


def slab_mask(mask: np.ndarray, affine: np.ndarray, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask restricted to ``n_slices`` evenly spaced coronal slices inside the brain, their indices)."""
    s_ax = plane_axes(affine, "coronal")[0]
    occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != s_ax)))
    chosen = np.unique(np.linspace(occupied.min() + 5, occupied.max() - 5, n_slices).astype(int))
    keep = np.zeros(mask.shape[s_ax], bool)
    keep[chosen] = True
    shape = [1, 1, 1]
    shape[s_ax] = -1
    return mask & keep.reshape(shape), chosen


def main(out_dir: Path, brain: str = "C1", seed: int = 0, n_slices: int = 12, figure: bool = False) -> dict:
    start = time.monotonic()
    proto = Protocol.from_json(resource("protocols", "original.json").read_text())
    subject = simulate_subject(brain, seed=seed, size="full", protocol=proto)
    simulated_s = time.monotonic() - start
    affine, full_mask, af = subject.affine, subject.mask, subject.target("af")
    mask, chosen = slab_mask(full_mask, affine, n_slices)
    subject.images["mask"] = subject.reference.with_data(mask.astype(np.float32), "mask")
    truth = af[mask]
    result: dict = {"brain": brain, "seed": seed, "grid": "200x280x128 at 0.0625 mm",
                    "protocol": "Resources/protocols/original.json",
                    "inference": "MRHNetLib.network.infer.predict (device cpu, fp32), brain mask restricted to the "
                                 "coronal slices below",
                    "coronal_slices": chosen.tolist(), "voxels": int(mask.sum()),
                    "truth_mean": round(float(truth.mean()), 1), "simulation_s": round(simulated_s)}
    print(f"simulated {brain} in {simulated_s:.0f} s; {mask.sum():,} voxels in {len(chosen)} coronal slices",
          flush=True)
    maps: dict[tuple[str, str], np.ndarray] = {}
    images = dict(subject.images)
    for order in ORDERS:
        if order != shipped_order():  # the network's MT-on channel gets MT-off and vice versa
            subject.images["mt_on"], subject.images["mt_off"] = images["mt_off"], images["mt_on"]
        for label, name in NETWORKS.items():
            t0 = time.monotonic()
            pred = predict(subject, [as_model(name)], device="cpu")["af"].data
            values = pred[mask]
            r = float(np.corrcoef(values, truth)[0, 1])
            result[f"{name} {order}"] = {"pearson_r": round(r, 3), "pred_mean": round(float(values.mean()), 1),
                                         "pred_sd": round(float(values.std()), 1),
                                         "seconds": round(time.monotonic() - t0, 1)}
            print(name, order, result[f"{name} {order}"], flush=True)
            maps[(label, order)] = pred
    subject.images.update(images)
    result["total_s"] = round(time.monotonic() - start)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"af_vs_phantom_{brain}.json").write_text(json.dumps(result, indent=1) + "\n")
    if figure:
        make_figure(out_dir / f"af_vs_phantom_{brain}.png", subject, af, mask, chosen, maps, result)
    return result


def make_figure(path: Path, subject, af: np.ndarray, mask: np.ndarray, chosen: np.ndarray,
                maps: dict[tuple[str, str], np.ndarray], result: dict) -> Path:
    """One row per T2/MT order: AF truth (or T2w) | 4-block map | 9-block map (middle chosen slice,
    each with its own 1-99 % window) | prediction vs truth scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    affine = subject.affine
    mid = int(chosen[len(chosen) // 2])
    inside = coronal_slice(mask, affine, mid) > 0
    truth = af[mask]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(truth), size=min(4000, len(truth)), replace=False)
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.4), gridspec_kw={"width_ratios": [1, 1, 1, 1.15]})
    for row, order in enumerate(ORDERS):
        first = ("phantom AF truth", coronal_slice(af, affine, mid), "gray") if row == 0 else \
            ("simulated T2w (input)", coronal_slice(subject.images["t2w"].data * (af > 0), affine, mid), "gray")
        panels = [first] + [(f"original {label}, {order}\nr = {result[f'{NETWORKS[label]} {order}']['pearson_r']:.2f}",
                             coronal_slice(maps[(label, order)], affine, mid), "viridis") for label in NETWORKS]
        for ax, (title, img, cmap) in zip(axes[row, :3], panels):
            lo, hi = np.percentile(img[inside], [1, 99])
            shown = np.ma.masked_where(~inside, img)
            im = ax.imshow(shown.T, origin="lower", cmap=cmap, vmin=lo, vmax=hi)
            fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        ax = axes[row, 3]
        for label, colour in zip(NETWORKS, ("tab:blue", "tab:orange")):
            pred = maps[(label, order)][mask]
            ax.scatter(truth[pick], pred[pick], s=2, alpha=0.3, color=colour,
                       label=f"{label}: r = {result[f'{NETWORKS[label]} {order}']['pearson_r']:.2f}")
        ax.set_xlabel("phantom AF truth (0-255)", fontsize=8)
        ax.set_ylabel("predicted AF", fontsize=8)
        ax.set_title(f"{order}: {len(pick):,} of {len(truth):,} voxels", fontsize=8)
        ax.legend(fontsize=8, markerscale=4, loc="upper left")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Original MRH-AF networks via mrhnet predict on simulated brain {subject.name} "
                 f"(original protocol, 0.0625 mm), coronal slice {mid}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=".", type=Path)
    parser.add_argument("--brain", default="C1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--figure", action="store_true", help="also write af_vs_phantom_<brain>.png")
    a = parser.parse_args()
    main(a.out_dir, a.brain, a.seed, a.slices, a.figure)
