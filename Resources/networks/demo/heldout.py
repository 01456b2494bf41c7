"""Held-out numbers of the demo networks on a simulated brain that no network saw (neither in training
nor for validation): the engine's agreement measures (:func:`MRHNetLib.evaluation.evaluate.agreement`: SSIM, PSNR,
Pearson r, RMSE, ROC-AUC of the top-20 % voxels) plus the coefficient of determination R^2, inside the
brain mask, on the target's own 0-255 scale.

    python Resources/networks/demo/heldout.py SUBJECT_DIR MODEL.mrhnet [MODEL.mrhnet ...]
"""
from __future__ import annotations

import json
import sys

import numpy as np

from MRHNetLib.evaluation.evaluate import agreement
from MRHNetLib.network.infer import predict
from MRHNetLib.network.modelfile import load_model
from MRHNetLib.data.subject import load_subject


def main(subject_dir: str, *models: str) -> None:
    subject = load_subject(subject_dir)
    mask = subject.mask
    for path in models:
        model = load_model(path)
        target = model.info.target
        pred = predict(subject, [model], device="cpu")[target].data
        truth = subject.target(target)
        t, p = truth[mask].astype(np.float64), pred[mask].astype(np.float64)
        r2 = 1 - float(((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum())
        scores = {k: round(v, 3) for k, v in {"r2": r2, **agreement(truth, pred, mask)}.items()}
        print(json.dumps({"model": model.name, "target": target, "subject": subject.name, **scores}))


if __name__ == "__main__":
    main(*sys.argv[1:])
