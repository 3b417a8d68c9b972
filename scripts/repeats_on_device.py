"""Run single repeats of a paper experiment, each in its own process, e.g. on a GPU machine, and save them
exactly as `cincer experiment` checkpoints its repeats: copy OUT's `q*/.<method>.partial/` folders into the
experiment folder and `cincer experiment` / `cincer sweep` resume past them (they check the configuration).

    python scripts/repeats_on_device.py --dataset fashion_mnist --model convnet --bits 32 \\
        --device cuda --out OUT q1:none:1 q3:random:0 ...      # question:method:repeat

How docs/REPRODUCTION.md's GPU repeats were run: one process per repeat, all at once, under CUDA MPS.
Repeats on a GPU are not bit-identical to the CPU's (cuDNN's convolution kernels differ), only equivalent.
"""
import argparse
import time
from pathlib import Path

import torch

from cincer import load_dataset
from cincer.device import resolve_device
from cincer.experiments import simulate
from cincer.experiments.protocols import ExperimentConfig, method_config, partial_folder


class PrintProgress:
    """tqdm's ``update`` as a line every 10 rounds: readable in a log of many interleaved processes."""

    def __init__(self, unit: str) -> None:
        self.unit, self.rounds, self.start = unit, 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.rounds += n
        if self.rounds % 10 == 0:
            print(f"{self.unit} round {self.rounds} {time.perf_counter() - self.start:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("units", nargs="+", help="question:method:repeat, e.g. q1:none:3")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=5, help="the experiment's (part of the configuration it checks)")
    parser.add_argument("--rounds", type=int, default=100, help="the paper's 100; fewer for a quick check")
    parser.add_argument("--epochs", type=int, default=100, help="the paper's 100; fewer for a quick check")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, seed=0)
    for unit in args.units:
        question, method, repeat = unit.split(":")
        exp = ExperimentConfig(question=question, dataset=args.dataset, model=args.model, bits=args.bits,
                               repeats=args.repeats, rounds=args.rounds, epochs=args.epochs).resolved()
        config = method_config(exp, method)
        saved = simulate.compute_repeat(config, data, int(repeat), progress=PrintProgress(unit), device=device,
                                        checkpoint=partial_folder(args.out / question, method))
        print(f"{unit} done {saved['seconds']:.1f}s on {saved['device']}", flush=True)


if __name__ == "__main__":
    main()
