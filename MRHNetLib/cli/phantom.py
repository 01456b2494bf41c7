"""``mrhnet phantom OUTDIR``: write simulated subject folders (MRI inputs, FA, mask, AF/NF/MBP truth)."""
from __future__ import annotations

import argparse

from ..errors import MRHNetError


def _size(text: str):
    if text in ("small", "medium", "full"):
        return text
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"size '{text}' is not small, medium, full or a shape X,Y,Z")
    return shape


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "phantom", help="simulate ex vivo mouse brains with ground-truth histology",
        description="Simulate multi-contrast ex vivo mouse-brain MRI (T2w, MT-on/off, DWI b2000/b5000) and "
                    "ground-truth AF/NF/MBP maps from the shipped real anatomy; one subject folder per brain.")
    p.add_argument("outdir", help="folder to write OUTDIR/<brain>/ subject folders into")
    p.add_argument("--brains", nargs="+", default=["C1", "R2"], metavar="BRAIN",
                   help="brains to simulate: C1, R2, or deformed variants such as C1-d1 (default: C1 R2)")
    p.add_argument("--size", type=_size, default="medium",
                   help="small (procedural 24x24x12), medium (100x140x64, 0.125 mm; default), full "
                        "(200x280x128, 0.0625 mm) or a shape X,Y,Z")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--snr", type=float, default=None,
                   help="signal-to-noise ratio of the unweighted images (default 40; 0 for no noise)")
    p.add_argument("--protocol", metavar="PROTOCOL.json",
                   help="protocol whose DWI b-values and directions to simulate (default: the published "
                        "67-channel layout)")
    p.add_argument("--overwrite", action="store_true", help="replace files in existing subject folders")
    p.add_argument("--figure", metavar="PNG", help="also save a figure of the first brain (one coronal slice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ..simulation.phantom import DEFAULT_NOISE, phantom_figure, write_phantoms
    from ..data.protocol import Protocol

    protocol = None
    if args.protocol:
        path = Path(args.protocol)
        if not path.is_file():
            raise MRHNetError(f"{path}: protocol file does not exist")
        try:
            protocol = Protocol.from_json(path.read_text())
        except ValueError as exc:
            raise MRHNetError(f"{path}: not a protocol JSON file ({str(exc).splitlines()[0]})") from None
    if args.snr is not None and args.snr < 0:
        raise MRHNetError(f"--snr {args.snr}: must be positive (or 0 for no noise)")
    noise = DEFAULT_NOISE if args.snr is None else (0.0 if args.snr == 0 else 1.0 / args.snr)
    with tqdm(total=100, unit="%", desc="phantom", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}") as bar:
        def report(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        folders = write_phantoms(args.outdir, args.brains, size=args.size, seed=args.seed, protocol=protocol,
                                 noise=noise, overwrite=args.overwrite, progress=report)
    for folder in folders:
        print(f"wrote {folder}")
    if args.figure:
        from ..data.subject import load_subject

        print(f"wrote {phantom_figure(load_subject(folders[0]), args.figure)}")
    return 0
