"""``cincer serve``: the annotation web app over a project folder (the built-in demo by default)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
from pathlib import Path

from ..errors import CincerError

DEMO_SETS = ("digits", "breast")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..app.project import SessionConfig

    p = sub.add_parser("serve", help="clean labels in the browser: suspicious example and counter-example side by side",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="The session settings below default to the project's (`cincer project init`).")
    p.add_argument("--project", type=Path, default=None,
                   help="project folder (`cincer project init`); default: the demo in ~/.cache/cincer/demo-DATASET")
    p.add_argument("--demo", default="digits", choices=DEMO_SETS,
                   help="data set of the demo, created in --project when that folder holds no project")
    p.add_argument("--demo-size", type=int, default=None, help="use only this many demo examples (quick tries)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs a token")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="shared access token (generated and printed when --host is not "
                   "loopback); a project with annotators (`cincer project user add`) uses their tokens instead")
    SessionConfig.add_arguments(p)
    p.add_argument("--user", default=os.environ.get("USER", "annotator"),
                   help="name written in the audit log (without annotators; with them, each token names its holder)")
    p.set_defaults(func=main)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(args: argparse.Namespace) -> int:
    from ..app import Session, create_demo, load_project
    from ..app.lock import ProjectLock
    from ..app.project import PROJECT_FILE
    from ..app.users import Annotators

    if not 0 < args.port < 65536:
        raise CincerError(f"--port must be in 1..65535, got {args.port}")
    root = args.project or Path.home() / ".cache" / "cincer" / f"demo-{args.demo}"
    if not (root / PROJECT_FILE).is_file():
        if args.project is not None and root.exists() and any(root.iterdir()):
            raise CincerError(f"{root} is neither a cincer project nor empty")
        print(f"cincer: creating the {args.demo} demo project in {root}", flush=True)
        create_demo(root, dataset=args.demo, limit=args.demo_size)
    lock = ProjectLock(root).acquire()  # before anything else: a second server names the first one's PID
    try:
        project = load_project(root)
        project.config = type(project.config).from_args(args, project.config)
        registry = Annotators(root)
        names = [u["name"] for u in registry.active()]
        annotators = registry if registry.users() else None
        if annotators is not None and args.token:
            raise CincerError(f"{root} has annotators ({', '.join(names) or 'all revoked'}): each uses their own "
                              "token from `cincer project user add`, so --token is not used")
        token = args.token
        if annotators is None and not is_loopback(args.host) and not token:
            token = secrets.token_urlsafe(18)
        _check_port(args.host, args.port)
    except BaseException:
        lock.release()
        raise

    import uvicorn

    from ..app.server import create_app

    print(f"cincer: training the first model on {project.name} …", flush=True)
    session = Session(project, who=args.user, project_lock=lock, per_user=annotators is not None)
    try:
        session.start()
        app = create_app(session, token=token, annotators=annotators)
        url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
        if annotators is not None:
            print(f"cincer: serving {project.name} ({project.config.mode} mode) at {url} in token mode for "
                  f"{', '.join(names) or 'nobody (every annotator is revoked)'}: each opens {url}?token=<their token> "
                  "(`cincer project user add` printed it)  (Ctrl-C to stop)", flush=True)
        else:
            print(f"cincer: serving {project.name} ({project.config.mode} mode) at {url}"
                  + (f"?token={token}" if token else "") + "  (Ctrl-C to stop)", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        session.close()
    return 0


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise CincerError(f"cannot listen on {host}:{port}: {err.strerror} (try --port)") from None

