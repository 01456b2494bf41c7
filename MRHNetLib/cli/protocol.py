"""``mrhnet protocol``: print or write the input protocol of a model, a subject folder or Bruker method files."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("protocol", help="print or write the protocol of a model, a subject folder or Bruker "
                                        "method files",
                       description="Show the input protocol (channels, b-values, directions, patch plane, "
                                   "normalisation) of a model folder or shipped model name, of a subject folder, "
                                   "or read it from Bruker ParaVision method files (files or a folder of them).")
    p.add_argument("source", nargs="+", metavar="MODEL|SUBJECT_DIR|METHOD_FILES",
                   help="a .mrhnet model (or shipped model name), a subject folder, or method files / a folder of them")
    p.add_argument("--json", metavar="OUT", help="write the protocol as JSON to OUT ('-' for standard output)")
    p.add_argument("--mt-order", metavar="ORDER",
                   help="method files only: order of the T2/MT channels (default t2w,mt_on,mt_off, the original code's)")
    p.add_argument("--original-settings", action="store_true",
                   help="method files only: the original networks' settings (inputs divided by the global maximum, "
                        "0.0625 mm voxels, coronal 3x3 patches, targets on the 0-255 scale)")
    p.add_argument("--voxel-size", type=float, metavar="MM", help="method files only: voxel size of the data fed "
                                                                  "to the network (default: not recorded)")
    p.set_defaults(func=run)


def protocol_of(sources: list[str], mt_order: str | None = None, original_settings: bool = False,
                voxel_size: float | None = None):
    """(Protocol, extra description lines) of a model, subject folder or method files."""
    from ..data.bruker import DEFAULT_MT_ORDER
    from ..errors import MRHNetError

    mt_order = mt_order or DEFAULT_MT_ORDER
    first = Path(sources[0])
    if len(sources) == 1 and (first / "model.json").is_file() or (len(sources) == 1 and not first.exists()):
        from ..network.catalog import resolve
        from ..network.modelfile import read_info

        info = read_info(resolve(sources[0]))
        return info.protocol, [f"model {sources[0]}: target {info.target.upper()}, depth {info.depth}"]
    if len(sources) == 1 and first.is_dir() and not any(q.name.lower().endswith("method") for q in first.iterdir()):
        from ..data.subject import load_subject

        subject = load_subject(first)
        return subject.protocol(), [f"subject {first}"]
    missing = [s for s in sources if not Path(s).exists()]
    if missing:
        raise MRHNetError(f"{missing[0]}: no such file or folder")
    from ..data.bruker import classify_method_files, protocol_from_method_files

    roles = classify_method_files(sources)
    lines = [f"  {role:9s} {m.describe()}" for role, m in roles.items()]
    if original_settings:
        from ..network.matlab import original_protocol

        proto, _ = original_protocol(mt_order, [roles[r].path for r in roles])
    else:
        for role in ("dwi_b2000", "dwi_b5000"):
            if role not in roles:
                raise MRHNetError(f"{', '.join(sources)}: no {role} diffusion method file among them")
        proto = protocol_from_method_files(roles["dwi_b2000"].path, roles["dwi_b5000"].path, mt_order,
                                           voxel_size_mm=voxel_size)
    if voxel_size is not None:
        proto.voxel_size_mm = voxel_size
    return proto, ["method files:"] + lines


def run(args: argparse.Namespace) -> int:
    proto, lines = protocol_of(args.source, args.mt_order, args.original_settings, args.voxel_size)
    text = proto.to_json() + "\n"
    if args.json == "-":
        print(text, end="")
        return 0
    for line in lines:
        print(line)
    print(proto.describe())
    if args.json:
        from ..files import atomic_write_text

        out = atomic_write_text(args.json, text)
        print(f"wrote {out}")
    return 0
