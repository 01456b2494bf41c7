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

def register(subparsers: argparse._SubParsersAction) -> None:
    from ..network.config import config_for

    train, tune = config_for("train"), config_for("finetune")
    p = subparsers.add_parser(
        "train", help="train a network on subject folders with histology",
        description=f"Train MRH-Net for one target on subject folders (inputs + the target's histology, "
                    f"co-registered). Defaults are the original's recipe ({train.loss.upper()}, SGD momentum "
                    f"{train.momentum:g}, lr {train.lr:g} x{train.lr_drop_factor:g} every {train.lr_drop_every} "
                    f"epochs, L2 {train.weight_decay:g}, clipping {train.clip_norm:g}, batch {train.batch_size}, "
                    f"{train.epochs} epochs, last {train.val_samples} samples held out). Resumable (--resume); "
                    f"runs under torchrun for several GPUs or processes.")
    p.add_argument("subjects", nargs="*", metavar="SUBJECT_DIR", help="training subject folders (or one subject "
                   "given file by file with the options below)")
    p.add_argument("--plot", metavar="RUN_DIR", help="only draw the loss curve of a run folder (curve.png)")
    p.add_argument("--maps", action="store_true",
                   help="use parameter maps (T2w, MTR, FA, MD, MK) as inputs instead of the raw images")
    _common(p, "train")
    p.set_defaults(func=run_train)

    f = subparsers.add_parser(
        "finetune", help="transfer learning from a trained network to a new target",
        description=f"Start from a trained model, replace Conv4 and Conv5 with new layers learning at "
                    f"{tune.head_lr_factor:g}x the base rate (base lr {tune.lr:g}), and train on subject folders "
                    f"with the new target's histology (as the original made MRH-NF and MRH-MBP from MRH-AF). "
                    f"Depth, width, input protocol, normalisation and patch geometry are the base model's.")
    f.add_argument("base", metavar="BASE", help="trained model (.mrhnet folder or shipped model name)")
    f.add_argument("subjects", nargs="*", metavar="SUBJECT_DIR", help="training subject folders (or one subject "
                   "given file by file with the options below)")
    _common(f, "finetune")
    f.set_defaults(func=run_finetune)


def _common(p: argparse.ArgumentParser, command: str) -> None:
    add_subject_args(p, targets=True, positional=False)
    p.add_argument("--target", default="af", help="target role in the subject folders: af, nf, mbp or your "
                                                  "own name (file TARGET.nii.gz); default af")
    p.add_argument("--out", metavar="MODEL.mrhnet", help="model folder to write (a new NAME.mrhnet, or an "
                                                         "earlier model to replace)")
    p.add_argument("--val", nargs="+", metavar="SUBJECT_DIR", help="held-out validation subject folders, given "
                   "after the training folders (default: the last --val-samples samples)")
    p.add_argument("--run-dir", metavar="DIR", help="checkpoints and logs (default: MODEL.run beside --out)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in the run folder")
    p.add_argument("--description", default="", help="text stored in the model file")
    _add_options(p, command)


def _add_options(p: argparse.ArgumentParser, command: str) -> None:
    """One flag per option of ``command``, derived from its config (:mod:`MRHNetLib.network.config`):
    training options default to the config's values, sampling options to SamplingConfig's (left
    unset, so the stored config lists only what differs)."""
    from ..network.config import option_specs

    groups = {"training": p.add_argument_group("training options"),
              "sampling": p.add_argument_group("sampling (as the original MRH_trainingPrep)")}
    for spec in option_specs(command):
        kwargs: dict = {"dest": spec.name, "help": spec.help_with_default(),
                        "default": spec.default if spec.group == "training" else None}
        if spec.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=spec.type, choices=spec.choices, nargs=spec.nargs,
                          metavar=("FIRST", "STOP") if spec.nargs == 2 else
                          None if spec.choices else spec.flag.lstrip("-").replace("-", "_").upper())
        groups[spec.group].add_argument(spec.flag, **kwargs)


def _config(args: argparse.Namespace, command: str):
    """The TrainConfig of the parsed options of ``command``."""
    from ..network.config import config_for, option_specs

    specs = option_specs(command)
    values = {s.name: getattr(args, s.name) for s in specs if s.group == "training"}
    sampling = {s.name: getattr(args, s.name) for s in specs
                if s.group == "sampling" and getattr(args, s.name) is not None}
    return config_for(command, **values, sampling=sampling)


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
    from ..network.modelfile import check_model_path
    from ..network.train import plot_log, train

    if args.plot:
        print(plot_log(args.plot))
        return 0
    if not (args.subjects or subject_files_given(args)) or not args.out:
        raise MRHNetError("give training subject folders (or files) and --out MODEL.mrhnet (or --plot RUN_DIR)")
    check_model_path(args.out)  # before loading anything
    config = _config(args, "train")
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
    from ..network.modelfile import check_model_path
    from ..network.train import finetune

    if not (args.subjects or subject_files_given(args)) or not args.out:
        raise MRHNetError("give training subject folders (or files) and --out MODEL.mrhnet")
    check_model_path(args.out)  # before loading anything
    config = _config(args, "finetune")
    subjects, val = _load(args.subjects, args), _load(args.val)
    callback, close = _progress_bar(config.epochs)
    try:
        out = finetune(resolve(args.base), subjects, args.target, args.out, config, val_subjects=val or None,
                       progress=callback, resume=args.resume, run_dir=args.run_dir, description=args.description)
    finally:
        close()
    _report(Path(out))
    return 0
