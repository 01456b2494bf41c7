"""``mrhnet app``: the web app (trame-slicer) on real Slicer slice views, serving one data folder."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the MRHNet web app (browser GUI on real Slicer views)",
                       description="Start the MRHNet web app. It reads and writes files only inside DATA_DIR "
                       "and has no login: it listens on 127.0.0.1 only unless --host says otherwise. "
                       "From another machine use an SSH tunnel: ssh -L 8080:127.0.0.1:8080 SERVER")
    p.add_argument("data_dir", nargs="?", default=".", metavar="SUBJECT_OR_DATA_DIR",
                   help="data folder with subject folders and model folders (*.mrhnet), or one subject folder "
                        "(default: the current folder)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1). Anything else exposes the app, which has "
                        "no login, to the network")
    p.add_argument("--simulated-size", choices=("small", "medium", "full"), default="small",
                   help="grid of the built-in simulated brain (default small)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import MRHNetError
    from ..gui.webapp import LOOPBACK, WebApp

    folder = Path(args.data_dir)
    if not folder.is_dir():
        raise MRHNetError(f"{folder}: data folder does not exist")
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: the MRHNet app has NO login; anyone who can reach this "
              f"address can run models and read and write files in {folder.resolve()}. Prefer the default "
              f"127.0.0.1 and an SSH tunnel (ssh -L {args.port}:127.0.0.1:{args.port} SERVER).",
              file=sys.stderr)
    app = WebApp(folder, simulated_size=args.simulated_size)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    app.ctrl.on_server_ready.add(lambda **_: print(f"MRHNet app serving {folder.resolve()} at "
                                                   f"http://{shown}:{app.server.port}/", flush=True))
    app.start(host=args.host, port=args.port)
    return 0
