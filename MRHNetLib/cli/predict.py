"""``mrhnet predict``: virtual-histology maps of a subject from one or more networks."""
from __future__ import annotations

import argparse

from ..errors import MRHNetError
from . import add_subject_args, subject_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="compute virtual histology maps (AF, NF, MBP) of a subject",
        description="Run MRH-Net networks over every brain voxel of a subject (exact, fast) and write one map "
                    "per target with the input's geometry. Several --model of one target form an ensemble: "
                    "the mean is written as <target> and the spread as <target>_std.")
    add_subject_args(p)
    p.add_argument("--model", "-m", action="append", required=True, metavar="MODEL",
                   help="model folder (NAME.mrhnet) or a shipped model's name; repeat for several")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--suffix", default=".nii.gz", help="output file suffix: .nii.gz (default), .nii, .nrrd, .hdr")
    p.add_argument("--device", default="auto", help="auto (CUDA when present; default), cpu or cuda")
    p.add_argument("--adapt-protocol", action="store_true",
                   help="re-express DWI shells on the model's gradient directions (spherical-harmonic fit) "
                        "when only the directions differ")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resample", dest="resample", action="store_true", default=None,
                   help="always resample to the model's voxel size and back (default: only when they differ)")
    g.add_argument("--no-resample", dest="resample", action="store_false",
                   help="never resample: refuse a subject whose voxel size differs from the model's")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="fp32 (exact; default), tf32 (CUDA tensor cores) or bf16")
    p.add_argument("--chunk-voxels", type=int, default=None, metavar="N",
                   help="voxels per chunk (memory is bounded by this; default 2048 per CPU thread, 65536 on a GPU)")
    p.set_defaults(func=run)


def input_files(args: argparse.Namespace, subject=None) -> list:
    """Every file the subject was read from (outputs must never replace one)."""
    from pathlib import Path

    files = [getattr(args, k) for k in vars(args) if k.startswith(("t2w", "mt_", "fa", "mask", "dwi_"))
             and isinstance(getattr(args, k), str)]
    if args.subject:
        folder = Path(args.subject)
        files += [str(p) for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return files


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..network.infer import as_model, map_keys, output_paths, predict, write_maps

    if args.chunk_voxels is not None and args.chunk_voxels < 1:
        raise MRHNetError(f"--chunk-voxels {args.chunk_voxels}: must be at least 1")
    models = [as_model(m) for m in args.model]
    # the outputs must be writable before any work (reading the subject included)
    output_paths(map_keys([m.info.target for m in models]), args.out, suffix=args.suffix,
                 protect=input_files(args))
    subject = subject_from_args(args)
    with tqdm(total=100, unit="%", desc="predict", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}") as bar:
        def report(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        maps = predict(subject, models, device=args.device, progress=report, adapt_protocol=args.adapt_protocol,
                       resample=args.resample, precision=args.precision,
                       chunk_voxels=args.chunk_voxels)
    written = write_maps(maps, args.out, suffix=args.suffix, protect=input_files(args, subject))
    for key, path in written.items():
        print(f"wrote {path}")
    return 0
