"""``mrhnet train`` and ``mrhnet finetune``: train a network on subject folders, or adapt a trained one.

Both run the same under ``torchrun --nproc_per_node N`` (distributed data parallel); only rank 0
prints, draws the progress bar and writes files.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import MRHNetError
from . import add_subject_args, subject_from_args, subject_files_given

OPTION_FIELDS = {"depth": "depth", "epochs": "epochs", "lr": "lr", "batch": "batch_size", "loss": "loss",
                 "init": "init", "patience": "patience", "device": "device", "seed": "seed",
                 "val_samples": "val_samples", "threads": "num_threads", "checkpoint_steps": "checkpoint_steps",
                 "normalisation": "normalisation", "weight_decay": "weight_decay", "clip": "clip_norm",
                 "momentum": "momentum", "lr_drop_every": "lr_drop_every", "lr_drop_factor": "lr_drop_factor",
                 "head_lr_factor": "head_lr_factor"}
SAMPLING_FIELDS = {"stride0": "stride0", "stride_fine": "stride_fine", "plane": "plane",
                   "half_patch": "half_patch", "min_nonzero": "min_nonzero", "min_sum_fraction": "min_sum_fraction"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a network on subject folders with histology",
        description="Train MRH-Net for one target on subject folders (inputs + the target's histology, "
                    "co-registered). Defaults are the original's recipe (MSE, SGD momentum 0.9, lr 0.1 "
                    "x0.1 every 10 epochs, L2 1e-4, clipping 0.01, batch 128, 300 epochs, last 1000 samples "
                    "held out). Resumable (--resume); runs under torchrun for several GPUs or processes.")
    p.add_argument("subjects", nargs="*", metavar="SUBJECT_DIR", help="training subject folders (or one subject "
                   "given file by file with the options below)")
    p.add_argument("--plot", metavar="RUN_DIR", help="only draw the loss curve of a run folder (curve.png)")
    p.add_argument("--depth", type=int, help="residual blocks (default 5; the paper's AF network: 30)")
    p.add_argument("--maps", action="store_true",
                   help="use parameter maps (T2w, MTR, FA, MD, MK) as inputs instead of the raw images")
    _common(p)
    p.set_defaults(func=run_train)

    f = subparsers.add_parser(
        "finetune", help="transfer learning from a trained network to a new target",
        description="Start from a trained model, replace Conv4 and Conv5 with new layers learning at 10x the "
                    "base rate (base lr 1e-4), and train on subject folders with the new target's histology "
                    "(as the original made MRH-NF and MRH-MBP from MRH-AF).")
    f.add_argument("base", metavar="BASE", help="trained model (.mrhnet folder or shipped model name)")
    f.add_argument("subjects", nargs="*", metavar="SUBJECT_DIR", help="training subject folders (or one subject "
                   "given file by file with the options below)")
    f.add_argument("--head-lr-factor", type=float, help="learning-rate factor of the new Conv4/Conv5 (10)")
    _common(f)
    f.set_defaults(func=run_finetune)


def _common(p: argparse.ArgumentParser) -> None:
    add_subject_args(p, targets=True, positional=False)
    p.add_argument("--target", default="af", help="target role in the subject folders: af, nf, mbp or your "
                                                  "own name (file TARGET.nii.gz); default af")
    p.add_argument("--out", metavar="MODEL.mrhnet", help="model folder to write")
    p.add_argument("--val", nargs="+", metavar="SUBJECT_DIR", help="held-out validation subject folders, given "
                   "after the training folders (default: the last --val-samples samples)")
    p.add_argument("--run-dir", metavar="DIR", help="checkpoints and logs (default: MODEL.run beside --out)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in the run folder")
    g = p.add_argument_group("training options")
    g.add_argument("--epochs", type=int, help="maximum epochs (300)")
    g.add_argument("--lr", type=float, help="initial learning rate (train 0.1, finetune 1e-4)")
    g.add_argument("--batch", type=int, help="mini-batch size (128)")
    g.add_argument("--loss", choices=("mse", "l1"), help="loss on the target patch (mse)")
    g.add_argument("--init", choices=("glorot", "orthogonal"), help="weight initialisation (glorot)")
    g.add_argument("--patience", type=int, help="early stopping after N epochs without better validation "
                                                "loss; keeps the best epoch (off)")
    g.add_argument("--keep-best", action="store_true", help="save the best-validation weights, not the last")
    g.add_argument("--val-samples", type=int, help="samples held out when no --val subjects (1000)")
    g.add_argument("--momentum", type=float, help="SGD momentum (0.9)")
    g.add_argument("--weight-decay", type=float, help="L2 regularisation of the weights (1e-4)")
    g.add_argument("--clip", type=float, help="gradient clipping, L2 norm per parameter (0.01; 0: off)")
    g.add_argument("--lr-drop-every", type=int, help="epochs between learning-rate drops (10)")
    g.add_argument("--lr-drop-factor", type=float, help="learning-rate drop factor (0.1)")
    g.add_argument("--normalisation", choices=("percentile", "global_max"),
                   help="input scaling: robust per-modality percentile (default) or the original's global max")
    g.add_argument("--seed", type=int, help="random seed (0)")
    g.add_argument("--device", help="auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    g.add_argument("--deterministic", action="store_true", help="reproducible kernels")
    g.add_argument("--threads", type=int, help="CPU threads")
    g.add_argument("--checkpoint-steps", type=int, help="also checkpoint every N steps inside an epoch")
    s = p.add_argument_group("sampling (as the original MRH_trainingPrep)")
    s.add_argument("--stride0", type=int, help="coarse grid step (20)")
    s.add_argument("--stride-fine", type=int, help="grid step on slices with more brain (6)")
    s.add_argument("--slice-range", type=int, nargs=2, metavar=("FIRST", "STOP"), help="slices to sample")
    s.add_argument("--plane", choices=("coronal", "axial", "sagittal"), help="patch plane (coronal)")
    s.add_argument("--half-patch", type=int, help="half patch size (1: 3x3 patches)")
    s.add_argument("--min-nonzero", type=int, help="minimum non-zero target voxels per patch (4)")
    s.add_argument("--min-sum-fraction", type=float, help="minimum target patch sum, as a fraction of the "
                                                          "target's robust maximum (30/255)")
    p.add_argument("--description", default="", help="text stored in the model file")


def _config(args: argparse.Namespace, **defaults):
    from ..network.train import TrainConfig

    values = dict(defaults)
    values.update({field: getattr(args, opt) for opt, field in OPTION_FIELDS.items()
                   if getattr(args, opt, None) is not None})
    for flag in ("amp", "deterministic", "keep_best"):
        if getattr(args, flag):
            values[flag] = True
    sampling = {field: getattr(args, opt) for opt, field in SAMPLING_FIELDS.items()
                if getattr(args, opt, None) is not None}
    if args.slice_range:
        sampling["slice_range"] = list(args.slice_range)
    values["sampling"] = sampling
    return TrainConfig(**values)


def _load(folders: list[str] | None, args: argparse.Namespace | None = None) -> list:
    """Subjects from folders, plus one given file by file (training subjects only)."""
    from ..data.subject import load_subject

    subjects = [load_subject(f) for f in folders or []]
    if args is not None and subject_files_given(args):
        subjects.append(subject_from_args(args))
    return subjects


def _progress_bar(total_epochs: int):
    """A tqdm bar in epochs with the running loss (rank 0 only); returns (callback, close)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total_epochs, unit="epoch", dynamic_ncols=True, bar_format=
               "{l_bar}{bar}| {n:.2f}/{total} epochs [{elapsed}<{remaining}{postfix}]")

    def callback(fraction: float, message: str) -> None:
        bar.update(fraction * total_epochs - bar.n)
        bar.set_postfix_str(message, refresh=False)

    return callback, bar.close


def _report(out: Path) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from ..network.modelfile import read_info

    info = read_info(out)
    print(f"wrote {out}: {info.training.get('summary', '')}")


def run_train(args: argparse.Namespace) -> int:
    from ..network.train import plot_log, train

    if args.plot:
        print(plot_log(args.plot))
        return 0
    if not (args.subjects or subject_files_given(args)) or not args.out:
        raise MRHNetError("give training subject folders (or files) and --out MODEL.mrhnet (or --plot RUN_DIR)")
    config = _config(args)
    protocol = None
    if args.maps:
        from ..data.protocol import maps_protocol

        protocol = maps_protocol()
    subjects, val = _load(args.subjects, args), _load(args.val)
    callback, close = _progress_bar(config.epochs)
    try:
        out = train(subjects, args.target, args.out, config, protocol=protocol, val_subjects=val or None,
                    progress=callback, resume=args.resume, run_dir=args.run_dir, description=args.description)
    finally:
        close()
    _report(Path(out))
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ..network.catalog import resolve
    from ..network.train import FINETUNE_LR, finetune

    if not (args.subjects or subject_files_given(args)) or not args.out:
        raise MRHNetError("give training subject folders (or files) and --out MODEL.mrhnet")
    config = _config(args, lr=FINETUNE_LR)
    subjects, val = _load(args.subjects, args), _load(args.val)
    callback, close = _progress_bar(config.epochs)
    try:
        out = finetune(resolve(args.base), subjects, args.target, args.out, config, val_subjects=val or None,
                       progress=callback, resume=args.resume, run_dir=args.run_dir, description=args.description)
    finally:
        close()
    _report(Path(out))
    return 0
