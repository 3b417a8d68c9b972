"""``cincer bench``: speed of the fast selection paths against naive per-candidate autograd baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import CincerError

SECTION_NAMES = ("1 top_fisher scaling, 2 mnist/logreg top_fisher, 3 influence/practical_fisher, 4 rounds, "
                 "5 Q1 run, 6 convnet memory layout, 7 or scale: the product at 60k images / 1e6 rows (minutes), "
                 "8 or batched: a question's methods trained one by one vs together (minutes)")
NAMED_SECTIONS = {"scale": 7, "batched": 8}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark selection and rounds against naive baselines",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced sizes (CI, smoke test); skips the Q1 run")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    p.add_argument("--plot", type=Path, default=None, help="write the latency-vs-candidates plot (PNG) here")
    p.add_argument("--from-json", type=Path, default=None, help="re-print/re-plot a saved result instead of running")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of: {SECTION_NAMES}")
    p.add_argument("--sizes", default=None, help="comma-separated candidate counts of section 1 "
                   "(default 100,10000,1000000; quick 100,10000,100000)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per fast measurement")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=main)


def parse_sections(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    bad = CincerError(f"--sections must be comma-separated numbers 1-8, 'scale' or 'batched', got {text!r}")
    try:
        sections = tuple(NAMED_SECTIONS.get(s.strip()) or int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise bad from None
    if not sections or any(s not in range(1, 9) for s in sections):
        raise bad
    return sections


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(float(s)) for s in text.split(",") if s.strip())
    except ValueError:
        raise CincerError(f"--sizes must be comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise CincerError(f"--sizes must be comma-separated positive integers, got {text!r}")
    return sizes


def main(args: argparse.Namespace) -> int:

    from ..experiments.bench import BenchConfig, format_table, plot_latency, run_benchmark

    if args.from_json is not None:
        try:
            result = json.loads(args.from_json.read_text())
            table = format_table(result)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CincerError(f"cannot read benchmark result {args.from_json}: {err}") from None
        print(table)
        if args.plot is not None:
            plot_latency(result, args.plot)
            print(f"plot in {args.plot}")
        return 0

    sections = parse_sections(args.sections)
    if args.repeats is not None and args.repeats < 1:
        raise CincerError(f"--repeats must be at least 1, got {args.repeats}")
    if args.out is not None and args.out.exists() and args.out.is_dir():
        raise CincerError(f"--out {args.out} is a directory; give a file name such as bench.json")
    overrides = {"seed": args.seed}
    if sections is not None:
        overrides["sections"] = sections
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    if args.sizes is not None:
        overrides["sizes"] = parse_sizes(args.sizes)
    cfg = BenchConfig.quick(**overrides) if args.quick else BenchConfig(**overrides)
    result = run_benchmark(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["command"] = " ".join(["cincer", *sys.argv[1:]]) if "bench" in sys.argv[1:] else "cincer bench"
    print(format_table(result))
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, "
          f"numpy {m['numpy']}, load {m['load_average_at_start']} -> {m['load_average_at_end']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
        print(f"figures in {args.out}")
    if args.plot is not None:
        plot_latency(result, args.plot)
        print(f"plot in {args.plot}")
    return 0
