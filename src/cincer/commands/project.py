"""``cincer project init|demo|user``: turn a user's labelled data (or a built-in demo) into a project folder,
and manage its annotators."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CincerError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("project", help="create an annotation project folder for `cincer serve`")
    actions = p.add_subparsers(dest="project_command", required=True, parser_class=type(p))
    from ..app.project import SessionConfig

    init = actions.add_parser("init",
                              help="from CSV/Parquet (tabular or text), a folder of images + CSV, or .npz (X, y)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              description="The session settings are stored in the project; `cincer serve` can "
                                          "override them. --seed also draws the held-out split.")
    init.add_argument("dir", type=Path, help="project folder to create")
    init.add_argument("--data", type=Path, required=True, help=".csv, .tsv, .parquet or .npz (arrays X and y)")
    init.add_argument("--labels", default=None, help="label column (CSV/Parquet)")
    init.add_argument("--images", type=Path, default=None, help="folder of image files named in the --files column")
    init.add_argument("--files", default=None, help="file-name column (default: the first column besides --labels)")
    init.add_argument("--text", default=None, help="text column (features: TF-IDF + TruncatedSVD)")
    init.add_argument("--holdout", type=float, default=0.0, help="fraction held out to chart the model's F1")
    init.add_argument("--known", type=int, default=None, help="examples known before the stream starts "
                      "(default: a fifth, between 10 and 100)")
    init.add_argument("--id", dest="id_column", default=None, metavar="COLUMN",
                      help="key column: each example keeps its value through the app, the audit log and "
                           "`cincer export` (default: the file name for --images, else the 0-based row number)")
    init.add_argument("--classes", default=None,
                      help="the classes in the order shown, comma-separated, e.g. 'cat,dog,bird' (default: integer "
                           "labels ascending, others in order of first appearance); may list classes not in the data")
    init.add_argument("--hotkeys", default=None,
                      help="keys for classes, e.g. 'cat=c,dog=d' (default: a digit class gets its digit, the others "
                           "1, 2, ...; a, n, s, u and ? are commands); stored in project.json")
    init.add_argument("--instructions", type=Path, default=None,
                      help="a Markdown file of instructions for the annotators, shown on first open and behind ?")
    init.add_argument("--from-audit", type=Path, default=None, metavar="FILE",
                      help="a `cincer audit` table of --data (same --labels and --id): the review queue is its issues "
                           "in its order, each with its counter-examples; the session runs in audit mode")
    SessionConfig.add_arguments(init)
    init.add_argument("--force", action="store_true",
                      help="replace an existing project: the old folder is moved aside to DIR.old-<time> "
                           "(refused while it is served)")
    init.set_defaults(func=init_main)
    demo = actions.add_parser("demo", help="a demo project: a scikit-learn data set with noisy labels",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("dir", type=Path)
    demo.add_argument("--dataset", default="digits", choices=("digits", "breast"))
    demo.add_argument("--noise", type=float, default=0.2)
    demo.add_argument("--size", type=int, default=None, help="use only this many examples")
    demo.add_argument("--known", type=int, default=100)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=demo_main)
    user = actions.add_parser("user", help="the project's annotators: each gets a token (then `cincer serve` "
                                           "runs in token mode and the token decides who answered)")
    user_actions = user.add_subparsers(dest="user_command", required=True, parser_class=type(p))
    add = user_actions.add_parser("add", help="add an annotator; prints their token (once; stored hashed)")
    add.add_argument("dir", type=Path, help="project folder")
    add.add_argument("name", help="the name written in the audit log")
    add.set_defaults(func=user_add_main)
    listing = user_actions.add_parser("list", help="list the annotators (tokens are not shown: only hashes are kept)")
    listing.add_argument("dir", type=Path, help="project folder")
    listing.set_defaults(func=user_list_main)
    revoke = user_actions.add_parser("revoke", help="refuse an annotator's token from now on (401), even while "
                                                    "the project is served; the audit log keeps their name")
    revoke.add_argument("dir", type=Path, help="project folder")
    revoke.add_argument("name")
    revoke.set_defaults(func=user_revoke_main)


def parse_hotkeys(text: str | None) -> dict[str, str]:
    """``'cat=c,dog=d'`` -> ``{"cat": "c", "dog": "d"}`` (a class name may hold '=': the last one splits)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, key = item.rpartition("=")
        if not sep or not name.strip():
            raise CincerError(f"--hotkeys: expected CLASS=KEY, got {item!r}")
        out[name.strip()] = key.strip()
    return out


def init_main(args: argparse.Namespace) -> int:
    from ..app.project import SessionConfig, build_project

    config = SessionConfig.from_args(args)
    config.validate()
    if args.images is not None and args.text is not None:
        raise CincerError("--images and --text exclude each other")
    if args.data.suffix != ".npz" and args.labels is None:
        raise CincerError("--labels COLUMN is required for CSV/Parquet data")
    classes = None if args.classes is None else args.classes.split(",")
    root, old = build_project(args.dir, data=args.data, labels=args.labels, images=args.images, text=args.text,
                              files=args.files, holdout=args.holdout, n_known=args.known, seed=config.seed,
                              config=config, force=args.force, id_column=args.id_column, classes=classes,
                              hotkeys=parse_hotkeys(args.hotkeys), instructions=args.instructions,
                              from_audit=args.from_audit)
    if old is not None:
        print(f"cincer: the previous project was moved to {old}")
    print(f"cincer: project created in {root}; start it with `cincer serve --project {root}`")
    return 0


def _annotators(root: Path):
    from ..app.project import PROJECT_FILE
    from ..app.users import Annotators

    if not (root / PROJECT_FILE).is_file():
        raise CincerError(f"{root} is not a cincer project (no {PROJECT_FILE})")
    return Annotators(root)


def user_add_main(args: argparse.Namespace) -> int:
    token = _annotators(args.dir).add(args.name)
    print(token)  # alone on stdout, for scripts: TOKEN=$(cincer project user add DIR alice)
    print(f"cincer: annotator {args.name.strip()!r} added; this token is shown once (only its hash is kept). "
          f"They open http://HOST:PORT/?token={token} once `cincer serve --project {args.dir}` runs "
          "(token mode: every annotator needs their own token)", file=sys.stderr)
    return 0


def user_list_main(args: argparse.Namespace) -> int:
    users = _annotators(args.dir).users()
    if not users:
        print(f"cincer: {args.dir} has no annotators (add one with `cincer project user add {args.dir} NAME`)")
    for u in users:
        status = "active" if u.get("revoked") is None else f"revoked {u['revoked']}"
        print(f"{u['name']}\t{status}\tadded {u['created']}\tid {u['id']}")
    return 0


def user_revoke_main(args: argparse.Namespace) -> int:
    _annotators(args.dir).revoke(args.name)
    print(f"cincer: the token of {args.name!r} is refused from now on")
    return 0


def demo_main(args: argparse.Namespace) -> int:
    from ..app.project import PROJECT_FILE, create_demo

    if (args.dir / PROJECT_FILE).exists():
        raise CincerError(f"{args.dir} already holds a project")
    if not 0.0 <= args.noise < 1.0:
        raise CincerError(f"--noise must be in [0, 1), got {args.noise}")
    if args.size is not None and args.size < 20:
        raise CincerError(f"--size must be at least 20, got {args.size}")
    create_demo(args.dir, dataset=args.dataset, noise=args.noise, seed=args.seed, n_known=args.known, limit=args.size)
    print(f"cincer: demo project created in {args.dir}; start it with `cincer serve --project {args.dir}`")
    return 0
