"""Run the original MRH-AF networks on a simulated brain made with the original protocol and report the
Pearson correlation of their AF map with the phantom's AF truth inside the brain mask, for both T2/MT
channel orders. Writes ``af_vs_phantom_C1.png`` and ``af_vs_phantom_C1.json`` into OUT_DIR.

    python Resources/networks/original/phantom_check.py OUT_DIR

Brain C1, seed 0, full size (200 x 280 x 128 at 0.0625 mm, the original grid); every brain voxel of 12
evenly spaced coronal slices; inputs divided by the global maximum as the original testing code does.
About 6 minutes and 6 GB of memory on 2 CPU cores.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from MRHNetLib.matlab import original_protocol
from MRHNetLib.modelfile import load_model
from MRHNetLib.patches import extract_patches
from MRHNetLib.phantom import coronal_slice, simulate_subject
from MRHNetLib.protocol import plane_axes
from MRHNetLib.resources import resource

ORDERS = {"t2w,mt_off,mt_on": [64, 65, 66], "t2w,mt_on,mt_off": [64, 66, 65]}


def main(out_dir: Path, brain: str = "C1", n_slices: int = 12) -> dict:
    proto, _ = original_protocol("t2w,mt_off,mt_on")
    subj = simulate_subject(brain, seed=0, size="full", protocol=proto)
    mask, af, affine = subj.mask, subj.target("af"), subj.affine
    raw = subj.raw_inputs(proto)  # channel 65 = MT-off, 66 = MT-on
    gmax = float(raw.max())
    s_ax = plane_axes(affine, "coronal")[0]
    occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != s_ax)))
    chosen = np.unique(np.linspace(occupied.min() + 5, occupied.max() - 5, n_slices).astype(int))
    keep = np.zeros(mask.shape[s_ax], bool)
    keep[chosen] = True
    shape = [1, 1, 1]
    shape[s_ax] = -1
    centres = np.argwhere(mask & keep.reshape(shape))
    truth = af[tuple(centres.T)]
    mid = int(chosen[len(chosen) // 2])
    result = {"brain": brain, "seed": 0, "grid": "200x280x128 at 0.0625 mm", "coronal_slices": chosen.tolist(),
              "voxels": int(len(centres))}
    panels = {"t2w": ("simulated T2w", coronal_slice(subj.images["t2w"].data * mask, affine, mid)),
              "truth": ("phantom AF truth", coronal_slice(af * mask, affine, mid))}
    for name in ("mrh-af-original-4blocks", "mrh-af-original-9blocks"):
        loaded = load_model(resource("networks", "original", name + ".mrhnet"))
        for label, order in ORDERS.items():
            stack = raw[list(range(64)) + order] / gmax
            pred = np.zeros(len(centres), np.float32)
            with torch.no_grad():
                for s in range(0, len(centres), 8192):
                    patches = extract_patches(stack, centres[s:s + 8192], affine, "coronal", 1)
                    pred[s:s + 8192] = loaded.net(torch.from_numpy(patches))[:, 0, 1, 1].numpy()
            pred *= loaded.info.protocol.normalisation.target_scale
            r = float(np.corrcoef(pred, truth)[0, 1])
            result[f"{name} {label}"] = {"pearson_r": round(r, 3), "pred_mean": round(float(pred.mean()), 1),
                                         "truth_mean": round(float(truth.mean()), 1)}
            print(name, label, result[f"{name} {label}"], flush=True)
            vol = np.zeros(mask.shape, np.float32)
            vol[tuple(centres.T)] = pred
            panels[f"{name} {label}"] = (f"{name[4:]}\n{label}: r = {r:.2f}", coronal_slice(vol, affine, mid))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"af_vs_phantom_{brain}.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["t2w", "mrh-af-original-4blocks t2w,mt_off,mt_on", "mrh-af-original-4blocks t2w,mt_on,mt_off",
            "truth", "mrh-af-original-9blocks t2w,mt_off,mt_on", "mrh-af-original-9blocks t2w,mt_on,mt_off"]
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.2))
    for ax, key in zip(axes.ravel(), keys):
        title, img = panels[key]
        ax.imshow(img.T, origin="lower", cmap="gray", **({} if key == "t2w" else {"vmin": 0, "vmax": 255}))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / f"af_vs_phantom_{brain}.png", dpi=80)
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
