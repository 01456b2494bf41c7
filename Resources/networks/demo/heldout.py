"""Held-out table of the demo networks: network against the ridge and gradient-boosting baselines on a
simulated brain that no network saw (neither in training nor for validation), as ``mrhnet demo`` reports
it (a benchmark-like script, not a timed test).

For every model (one per target) it predicts the held-out subject, fits the engine's baselines
(:mod:`MRHNetLib.evaluation.baselines`: ridge and gradient boosting of the 67 centre-voxel inputs,
normalised as the network sees them) on the given training subjects, and compares each map with the
subject's simulated truth inside the brain mask through :func:`MRHNetLib.evaluation.evaluate.evaluate`
(R^2 = 1 - SS_res/SS_tot, Pearson r, SSIM, PSNR, RMSE, ROC-AUC of the voxels above the truth's 80th
percentile), on the target's own 0-255 scale. It prints one JSON line per target and map, then a
markdown table (network vs ridge vs boosting: R^2 (r, AUC)).

    python Resources/networks/demo/heldout.py SUBJECT_DIR MODEL.mrhnet [MODEL.mrhnet ...] \
        [--baseline-train TRAIN_DIR [TRAIN_DIR ...]] [--json OUT.json]

Without ``--baseline-train`` only the networks are scored. The held-out subject of the demo is brain R2,
medium size, noise seed 7, test-time shift 1 (``mrhnet phantom DIR --brains R2 --size medium --seed 7
--shift 1``, the subject ``mrhnet demo`` simulates).
"""
from __future__ import annotations

import argparse
import json

from MRHNetLib.data.subject import load_subject
from MRHNetLib.evaluation.baselines import BASELINES
from MRHNetLib.evaluation.evaluate import evaluate
from MRHNetLib.network.infer import predict
from MRHNetLib.network.modelfile import load_model

KEYS = ("r2", "pearson_r", "ssim", "psnr_db", "rmse", "auc")


def table(summary: dict) -> str:
    """Markdown table: per target, the network's and each baseline's R^2 (r, AUC); the best R^2 in bold."""
    kinds = [k for k in BASELINES if any(k in e.get("baselines", {}) for e in summary["targets"].values())]
    head = "| target | network R² (r, AUC) | " + " | ".join(f"{k} R² (r, AUC)" for k in kinds) + " |"
    rows = [head, "|" + "---|" * (2 + len(kinds))]
    for target, e in summary["targets"].items():
        scores = {"network": e["network"], **{k: e["baselines"][k] for k in kinds}}
        best = max(scores, key=lambda k: scores[k]["r2"])
        cells = []
        for name, s in scores.items():
            r2 = f"{s['r2']:.3f}"
            cells.append(f"{'**' + r2 + '**' if name == best else r2} ({s['pearson_r']:.3f}, {s['auc']:.3f})")
        rows.append(f"| {target.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("subject", help="held-out subject folder (with its truth maps)")
    p.add_argument("models", nargs="+", help="model folders (.mrhnet), one per target")
    p.add_argument("--baseline-train", nargs="+", default=[], metavar="TRAIN_DIR",
                   help="training subject folders of the ridge and boosting baselines")
    p.add_argument("--json", metavar="OUT.json", help="also write the summary as JSON")
    args = p.parse_args(argv)

    subject = load_subject(args.subject)
    models = [load_model(m) for m in args.models]
    maps = predict(subject, models, device="cpu")
    train = [load_subject(d) for d in args.baseline_train]
    ev = evaluate(maps, subject=subject, baseline_train=train, device="cpu",
                  data_label=f"held-out subject {args.subject}")
    for target, e in ev.summary["targets"].items():
        for name, s in {"network": e["network"], **e.get("baselines", {})}.items():
            print(json.dumps({"target": target, "map": name, "subject": subject.name,
                              **{k: round(float(s[k]), 3) for k in KEYS}}))
    print()
    print(table(ev.summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"subject": args.subject, "models": args.models, "baseline_train": args.baseline_train,
                       "targets": ev.summary["targets"]}, f, indent=1, default=float)
    return ev.summary


if __name__ == "__main__":
    main()
