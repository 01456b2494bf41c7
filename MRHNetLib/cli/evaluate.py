"""``mrhnet evaluate``: compare predicted maps with ground truth, single MRI markers and fitted baselines."""
from __future__ import annotations

import argparse

from ..errors import MRHNetError
from . import add_subject_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate predicted maps against ground truth and single MRI markers",
        description="R^2, SSIM, PSNR, Pearson r and ROC-AUC of high-target voxels for the network's maps and "
                    "for FA, MTR, T2w and MD alone; with --baseline-train, the same metrics for a ridge fit and "
                    "gradient-boosted trees of the same centre-voxel inputs; per-region numbers; input "
                    "contribution by perturbation. "
                    "Writes report.json, report.md and report.png. Either a subject folder (truth af/nf/mbp "
                    "and the MRI inside) with --pred-dir, or --pred FILE --truth FILE.")
    add_subject_args(p, targets=True)
    p.add_argument("--pred", action="append", default=[], metavar="FILE",
                   help="a predicted map; its target is the file name (af.nii.gz -> af) unless --target")
    p.add_argument("--truth", metavar="FILE", help="ground truth of a single --pred")
    p.add_argument("--target", help="target name of a single --pred (af, nf, mbp, ...)")
    p.add_argument("--pred-dir", metavar="DIR", help="folder of predicted maps <target>.nii.gz (af, nf, mbp)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="report folder")
    p.add_argument("--labels", metavar="FILE", help="label map (integer regions) for per-region numbers")
    p.add_argument("--model", action="append", default=[], metavar="MODEL",
                   help="model(s) that made the maps: enables the perturbation analysis (needs the subject)")
    p.add_argument("--percentile", type=float, default=80.0,
                   help="truth percentile above which a voxel counts as high-target for ROC (default 80)")
    p.add_argument("--noise", type=float, default=0.1, help="perturbation noise, x mean signal (default 0.1)")
    p.add_argument("--baseline-train", nargs="+", default=[], metavar="SUBJECT_DIR",
                   help="training subject folder(s) holding the evaluated targets: fit the ridge and "
                        "gradient-boosting baselines on their inputs and report them beside the network "
                        "(needs the evaluated subject folder)")
    p.add_argument("--baseline-samples", type=int, default=20000, metavar="N",
                   help="at most N training voxels (a seeded random sample) per baseline fit (default 20000)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (perturbation analysis)")
    p.set_defaults(func=run)


def _target_of(path: str) -> str:
    from pathlib import Path

    name = Path(path).name
    for suf in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".hdr", ".img"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return Path(path).stem


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from . import subject_from_args
    from ..evaluation.evaluate import evaluate
    from ..data.io import read_volume
    from ..data.protocol import TARGET_ROLES
    from ..data.subject import IMAGE_SUFFIXES, load_subject

    preds = {}
    for f in args.pred:
        key = args.target if (args.target and len(args.pred) == 1) else _target_of(f)
        preds[key] = read_volume(f, allow_4d=False)
    if args.pred_dir:
        folder = Path(args.pred_dir)
        if not folder.is_dir():
            raise MRHNetError(f"{folder}: prediction folder does not exist")
        for role in TARGET_ROLES:
            for suf in IMAGE_SUFFIXES:
                if (folder / f"{role}{suf}").exists():
                    preds.setdefault(role, read_volume(folder / f"{role}{suf}", allow_4d=False))
                    break
    if not preds:
        raise MRHNetError("no predicted maps given (--pred FILE or --pred-dir DIR)")
    has_subject = bool(args.subject) or any(getattr(args, r, None) for r in ("t2w", "dwi_b2000", "af", "nf", "mbp"))
    subject = subject_from_args(args) if has_subject else None
    truth = {}
    if args.truth:
        if len(preds) != 1:
            raise MRHNetError("--truth goes with a single --pred; use a subject folder for several maps")
        truth[next(iter(preds))] = read_volume(args.truth, allow_4d=False)
    if subject is None and not truth:
        raise MRHNetError("give the ground truth: --truth FILE or a subject folder with af/nf/mbp images")
    mask = None
    if subject is None and args.mask:
        mask = read_volume(args.mask, allow_4d=False).data > 0
    ref = subject.reference if subject is not None else next(iter(truth.values()))
    for key, vol in list(preds.items()) + list(truth.items()):
        if vol.shape3 != ref.shape3:
            raise MRHNetError(f"{vol.name}: shape {vol.shape3} differs from the subject/truth grid {ref.shape3}")
    labels = read_volume(args.labels, allow_4d=False) if args.labels else None
    if args.baseline_train and subject is None:
        raise MRHNetError("--baseline-train needs the evaluated subject's images (give its subject folder)")
    if args.baseline_samples <= 0:
        raise MRHNetError(f"--baseline-samples {args.baseline_samples}: must be positive")
    train = []
    for folder in args.baseline_train:
        if not Path(folder).is_dir():
            raise MRHNetError(f"{folder}: baseline training subject folder does not exist")
        train.append(load_subject(folder))
    with tqdm(total=100, unit="%", desc="evaluate", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}") as bar:
        def report(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        ev = evaluate(preds, truth, subject=subject, mask=mask, labels=labels, percentile=args.percentile,
                      models=args.model, noise=args.noise, baseline_train=train,
                      baseline_samples=args.baseline_samples, device=args.device, progress=report)
    for path in ev.save(args.out).values():
        print(f"wrote {path}")
    for t, e in ev.summary["targets"].items():
        n = e["network"]
        marks = ", ".join(f"{k}{m['sign']} {m['auc']:.3f}" for k, m in e["markers"].items())
        base = "".join(f"; {k}: R^2 {b['r2']:.3f}, r {b['pearson_r']:.3f}, AUC {b['auc']:.3f}"
                       for k, b in e.get("baselines", {}).items())
        print(f"{t}: R^2 {n['r2']:.3f}, SSIM {n['ssim']:.3f}, PSNR {n['psnr_db']:.2f} dB, r {n['pearson_r']:.3f}, "
              f"AUC {n['auc']:.3f}" + base + (f" (markers: {marks})" if marks else ""))
    return 0
