"""The ``mrhnet`` command line. Each sub-command lives in its own module of this package and defines
``register(subparsers)``, which adds its parser and sets ``func`` (a handler taking the parsed args and
returning an exit code). Heavy imports happen inside handlers, so ``mrhnet --help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import Cancelled, MRHNetError

COMMANDS = ("phantom", "protocol", "train", "predict", "evaluate", "demo", "import_matlab", "models", "app", "job")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="mrhnet", description="Virtual mouse-brain histology (AF, NF, MBP) "
                                     "from multi-contrast MRI (MRH-Net, Liang et al., eLife 2022).")
    parser.add_argument("--version", action="version", version=f"mrhnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return int(args.func(args) or 0)
    except MRHNetError as exc:
        print(f"mrhnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"mrhnet {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"mrhnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a program that stopped reading (e.g. head)
        sys.stderr.close()
        return 0


def add_subject_args(parser: argparse.ArgumentParser, targets: bool = False, positional: bool = True) -> None:
    """The options every command that takes a subject shares: a folder and/or the files one by one
    (``positional=False`` for commands that take several folders themselves: the files then make one
    more subject)."""
    from ..data.protocol import DWI_ROLES, IMAGE_ROLES, TARGET_ROLES

    g = parser.add_argument_group("subject (a folder and/or files by role)")
    if positional:
        g.add_argument("subject", nargs="?", help="subject folder (t2w.nii.gz, mt_on.nii.gz, ... see README)")
    for role in IMAGE_ROLES + ("fa", "mask"):
        g.add_argument(f"--{role.replace('_', '-')}", dest=role, metavar="FILE", help=f"{role} image")
    for role in DWI_ROLES:
        flag = role.replace("_", "-")
        g.add_argument(f"--{flag}", dest=role, metavar="FILE", help=f"4D DWI of the {role[4:]} shell")
        g.add_argument(f"--{flag}-bval", dest=f"{role}_bval", metavar="FILE")
        g.add_argument(f"--{flag}-bvec", dest=f"{role}_bvec", metavar="FILE")
        g.add_argument(f"--{flag}-table", dest=f"{role}_table", metavar="FILE", help="'gx gy gz b' table")
    if targets:
        for role in TARGET_ROLES:
            g.add_argument(f"--{role}", dest=role, metavar="FILE", help=f"{role.upper()} histology / truth")
    g.add_argument("--resample-to-reference", action="store_true",
                   help="resample inputs that are not on the T2w grid onto it (SimpleITK, linear)")


def subject_from_args(args: argparse.Namespace):
    """Load the subject described by :func:`add_subject_args` options."""
    from ..data.protocol import DWI_ROLES, IMAGE_ROLES, TARGET_ROLES
    from ..data.subject import load_subject

    roles = list(IMAGE_ROLES + ("fa", "mask") + TARGET_ROLES + DWI_ROLES)
    roles += [f"{r}_{k}" for r in DWI_ROLES for k in ("bval", "bvec", "table")]
    files = {r: getattr(args, r) for r in roles if getattr(args, r, None)}
    folder = getattr(args, "subject", None)
    if not folder and not files:
        raise MRHNetError("give a subject folder or input files (see --help)")
    return load_subject(folder, resample_to_reference=args.resample_to_reference, **files)


def subject_files_given(args: argparse.Namespace) -> bool:
    """Whether any file-by-role option of :func:`add_subject_args` was used."""
    from ..data.protocol import DWI_ROLES, IMAGE_ROLES, TARGET_ROLES

    return any(getattr(args, r, None) for r in IMAGE_ROLES + ("fa", "mask") + TARGET_ROLES + DWI_ROLES)
