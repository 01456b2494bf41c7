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


def _physics(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=VALUE (for example d_axon=0.00045)") from None


def register(subparsers) -> None:
    from ..simulation.shift import describe_ranges

    p = subparsers.add_parser(
        "phantom", help="simulate ex vivo mouse brains with ground-truth histology",
        description="Simulate multi-contrast ex vivo mouse-brain MRI (T2w, MT-on/off, DWI b2000/b5000) and "
                    "ground-truth AF/NF/MBP maps from the shipped real anatomy; one subject folder per brain. "
                    "Test-time shift options make a held-out brain differ as a new real brain would.",
        epilog="test-time shift factors and their ranges (--shift draws each uniformly inside its range; "
               "bias, misregistration and stain gain are drawn from 0.05..0.2, 0.05..0.15, 0.05..0.15):\n  "
               + describe_ranges().replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter)
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
    g = p.add_argument_group("test-time shift (held-out brains; ranges below)")
    g.add_argument("--shift", type=int, metavar="SEED",
                   help="draw every factor below independently inside its range from SEED (> 0): physics "
                        "constants, SNR, bias, hidden tissue factors, misregistration and staining; the named "
                        "options below override single factors")
    g.add_argument("--physics", type=_physics, action="append", default=[], metavar="NAME=VALUE",
                   help="set one ex vivo 7 T constant inside its range (for example r2_myelin=0.05)")
    g.add_argument("--bias", type=float, metavar="SD", help="receive-coil bias field strength, 0..0.2 (default 0.1)")
    g.add_argument("--hidden", type=int, metavar="N",
                   help="redraw the brain's hidden random tissue fields (myelin per axon, dispersion, extra T2, "
                        "pigment, cell density) and coil profile with number N > 0")
    g.add_argument("--misregistration", type=float, metavar="MM",
                   help="smooth misregistration of each truth map, RMS displacement 0..0.2 mm")
    g.add_argument("--stain-gain", type=float, metavar="SD",
                   help="smooth multiplicative stain gain field of each truth map, SD of its log 0..0.2")
    g.add_argument("--stain-gamma", type=float, metavar="G",
                   help="nonlinear stain response 255 (v/255)^G of each truth map, 0.8..1.25")
    p.add_argument("--physics-set", choices=("default", "calibrated"), default="default",
                   help="named physics set: default (literature values; unchanged output) or calibrated "
                        "(T2, MT, diffusion and receiver scaling calibrated against the original authors' AF networks, "
                        "meant for the original protocol, --protocol Resources/protocols/original.json; see "
                        "Resources/networks/original/README.md)")
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
    shift = shift_from_args(args)
    if shift is not None:
        print("test-time shift: " + ", ".join(f"{k} {v:.4g}" for k, v in shift_summary(shift).items()))
    with tqdm(total=100, unit="%", desc="phantom", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}") as bar:
        def report(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        folders = write_phantoms(args.outdir, args.brains, size=args.size, seed=args.seed, protocol=protocol,
                                 noise=noise, overwrite=args.overwrite, shift=shift, progress=report,
                                 physics_set=args.physics_set)
    for folder in folders:
        print(f"wrote {folder}")
    if args.figure:
        from ..data.subject import load_subject

        print(f"wrote {phantom_figure(load_subject(folders[0]), args.figure)}")
    return 0


def shift_from_args(args: argparse.Namespace):
    """The test-time shift the options ask for (None when none): ``--shift`` drawn, then named overrides;
    an explicit ``--snr`` keeps its own meaning (0: no noise) and overrides a drawn SNR."""
    import dataclasses

    from ..simulation.shift import Shift, draw_shift

    named = {"bias": args.bias, "hidden": args.hidden, "misregistration_mm": args.misregistration,
             "stain_gain": args.stain_gain, "stain_gamma": args.stain_gamma}
    named = {k: v for k, v in named.items() if v is not None}
    if args.shift is None and not named and not args.physics:
        return None
    shift = draw_shift(args.shift) if args.shift is not None else Shift()
    physics = dict(shift.physics)
    physics.update(dict(args.physics))
    return dataclasses.replace(shift, physics=physics, snr=None if args.snr is not None else shift.snr, **named)


def shift_summary(shift) -> dict[str, float]:
    """Flat name -> value of a shift's factors (for printing)."""
    out = dict(shift.physics)
    for k in ("snr", "bias", "hidden", "misregistration_mm", "stain_gain", "stain_gamma"):
        v = getattr(shift, k)
        if v is not None:
            out[k] = float(v)
    return out
