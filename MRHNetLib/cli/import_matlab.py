"""``mrhnet import-matlab``: convert an original MRH-Net MATLAB network (.mat) into a model folder."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-matlab", help="convert an original MRH-Net MATLAB network (.mat DAGNetwork) "
                                             "into a safe .mrhnet model folder",
                       description="Read an MRH-Net DAGNetwork saved by MATLAB (the original authors' networks, "
                                   "any depth), check that it is an MRH-Net, convert its weights and write a "
                                   ".mrhnet model folder recording its provenance and the original protocol.")
    p.add_argument("mat", metavar="NET.mat", help="MATLAB .mat file holding the DAGNetwork")
    p.add_argument("--out", required=True, metavar="MODEL.mrhnet", help="model folder to write")
    p.add_argument("--mt-order", metavar="ORDER",
                   help="order of the last three input channels: t2w,mt_on,mt_off (default; the original code "
                        "appends one T2/MTON/MTOFF file after the DWI shells) or t2w,mt_off,mt_on (the original "
                        "README's 'T2-weighted, non-MT-weighted, MT-weighted'), for data that say so")
    p.add_argument("--method-files", nargs="+", metavar="DIR_OR_FILE",
                   help="Bruker method files (or a folder of them) with the two DWI shells; default: the shipped "
                        "copies of the original protocol's files")
    p.add_argument("--target", default="af", help="what the network predicts (default af)")
    p.add_argument("--description", help="description stored in the model (default: provenance and protocol)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.bruker import DEFAULT_MT_ORDER
    from ..network.matlab import import_matlab
    from ..network.modelfile import read_info

    out = import_matlab(args.mat, args.out, mt_order=args.mt_order or DEFAULT_MT_ORDER, method_files=args.method_files,
                        target=args.target, description=args.description)
    info = read_info(out)
    print(f"wrote {out}: MRH-{info.target.upper()}, {info.depth} residual blocks, "
          f"source {info.provenance['source_file']} (sha256 {info.provenance['source_sha256'][:12]}...)")
    print(info.protocol.describe())
    return 0
