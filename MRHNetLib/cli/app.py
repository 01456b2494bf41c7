"""``mrhnet app``: the web app (trame-slicer) on real Slicer slice views, serving one data folder."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the MRHNet web app (browser GUI on real Slicer views)",
                       description="Start the MRHNet web app. It reads and writes files only inside DATA_DIR. "
                       "It prints the address to open, http://127.0.0.1:PORT/?token=TOKEN: the page, its files "
                       "and its websocket are refused (403) without that secret token, so other users of the "
                       "machine cannot use the app. The token is random unless --token or $MRHNET_APP_TOKEN "
                       "gives one (the variable keeps it out of ps). It listens on 127.0.0.1 only unless --host "
                       "says otherwise; from another machine use an SSH tunnel, "
                       "ssh -L 8080:127.0.0.1:8080 SERVER, and open the printed address.")
    p.add_argument("data_dir", nargs="?", default=".", metavar="SUBJECT_OR_DATA_DIR",
                   help="data folder with subject folders and model folders (*.mrhnet), or one subject folder "
                        "(default: the current folder)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1). Any other address (0.0.0.0, a network "
                        "interface) exposes the app to the network, over plain HTTP: it is never served "
                        "without a token")
    access = p.add_mutually_exclusive_group()
    access.add_argument("--token", metavar="TOKEN",
                        help="the access token to require (default: $MRHNET_APP_TOKEN, else a new random one). "
                             "Prefer the environment variable: options show in ps")
    access.add_argument("--no-token", action="store_true",
                        help="serve without a token: every user of this machine can then use the app and "
                             "its data folder. Refused for any --host other than 127.0.0.1, localhost, ::1")
    p.add_argument("--simulated-size", choices=("small", "medium", "full"), default="small",
                   help="grid of the built-in simulated brain (default small)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import MRHNetError
    from ..gui.webapp import LOOPBACK, access_token, access_url

    # every refusal happens here, before the (slow) app is built and long before anything listens
    token = access_token(args.host, args.token, args.no_token)
    folder = Path(args.data_dir)
    if not folder.is_dir():
        raise MRHNetError(f"{folder}: data folder does not exist")
    if token is None:
        print(f"warning: no token: every user of this machine can use the MRHNet app, run models and read and "
              f"write files in {folder.resolve()}.", file=sys.stderr)
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who can reach this address and has the token can run "
              f"models and read and write files in {folder.resolve()}, and the token travels unencrypted "
              f"(plain HTTP). Prefer the default 127.0.0.1 and an SSH tunnel "
              f"(ssh -L {args.port}:127.0.0.1:{args.port} SERVER).", file=sys.stderr)

    check_address(args.host, args.port)
    from ..gui.webapp import WebApp

    app = WebApp(folder, simulated_size=args.simulated_size)
    app.ctrl.on_server_ready.add(lambda **_: print(f"MRHNet app serving {folder.resolve()} at "
                                                   f"{access_url(args.host, app.server.port, token)}", flush=True))
    try:
        app.start(host=args.host, port=args.port, token=token)
    except OSError as exc:  # the address was taken meanwhile
        raise cannot_serve(args.host, args.port, exc) from None
    return 0


def check_address(host: str, port: int) -> None:
    """Refuse, in one line and before the app is built, an address this machine cannot listen on (a port in
    use, a host name that does not resolve or is not this machine's)."""
    import os
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            if os.name != "nt":  # as the server binds: a port that just closed is free again
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise cannot_serve(host, port, exc) from None


def cannot_serve(host: str, port: int, exc: OSError):
    from ..errors import MRHNetError

    return MRHNetError(f"cannot serve on {host}:{port}: {exc.strerror or exc}")
