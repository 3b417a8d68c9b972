"""``cincer project init|demo``: turn a user's labelled data (or a built-in demo) into a project folder."""

from __future__ import annotations

import argparse
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
    SessionConfig.add_arguments(init)
    init.add_argument("--force", action="store_true", help="overwrite an existing project (its session is kept)")
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


def init_main(args: argparse.Namespace) -> int:
    from ..app.project import SessionConfig, init_project

    config = SessionConfig.from_args(args)
    config.validate()
    if args.images is not None and args.text is not None:
        raise CincerError("--images and --text exclude each other")
    if args.data.suffix != ".npz" and args.labels is None:
        raise CincerError("--labels COLUMN is required for CSV/Parquet data")
    root = init_project(args.dir, data=args.data, labels=args.labels, images=args.images, text=args.text,
                        files=args.files, holdout=args.holdout, n_known=args.known, seed=config.seed,
                        config=config, force=args.force)
    print(f"cincer: project created in {root}; start it with `cincer serve --project {root}`")
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
