"""Wrong labels an audit reaches at budgets 50/200/1000 on MNIST and Fashion-MNIST (60k, 20% noise, an MLP
trained long enough to memorise), with and without a cross-fitted audit (cv=5). Writes JSON lines.

Usage: .venv/bin/python scripts/audit_cv.py OUT.jsonl [--n 60000] [--epochs 30]
"""

import argparse
import json

import torch

from cincer.experiments.scale import audit_recall

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--n", type=int, default=60_000)
parser.add_argument("--epochs", type=int, default=30)
args = parser.parse_args()
torch.set_num_threads(1)
with open(args.out, "a") as out:
    for dataset in ("mnist", "fashion_mnist"):
        for cv in (None, 5):
            row = audit_recall(dataset, n=args.n, epochs=args.epochs, cv=cv)
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
