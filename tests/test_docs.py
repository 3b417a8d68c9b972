"""Every ```python block of docs/GUIDE.md runs, in order, in one namespace, in a temporary folder."""

import re
from pathlib import Path

import pytest
import torch

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "GUIDE.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_the_guide_has_the_promised_examples():
    blocks = python_blocks(GUIDE)
    assert len(blocks) >= 6
    joined = "\n".join(blocks)
    for needle in ("fashion_mnist", "audit(", "observe(", "answer(", "register_selector", "counterexamples(",
                   "read_csv", "clone(", "make_pipeline(", "model__", "next_queries(", "batch=", "label_issues(",
                   ".save(", "Cleaner.load("):
        assert needle in joined, needle


@pytest.mark.slow
def test_guide_code_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    namespace: dict = {"__name__": "__guide__"}
    try:
        for number, code in enumerate(python_blocks(GUIDE), start=1):
            try:
                exec(compile(code, f"{GUIDE.name}[block {number}]", "exec"), namespace)
            except Exception as err:  # name the block that failed
                pytest.fail(f"block {number} of {GUIDE.name} failed: {type(err).__name__}: {err}\n{code}")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    fixed = re.search(r"fixed (\d+) labels with 50 questions", out)
    assert fixed and int(fixed.group(1)) >= 40, out  # the ten-line Fashion-MNIST script cleans labels
    assert "ModelError:" in out and "QueryError: query" in out and "already answered" in out
    assert "InputError: y[1] is None" in out and "k is still 3" in out
    assert "resumed after 4 answers; files: ['arrays.npz', 'state.json']" in out
    assert (tmp_path / "review-session" / "state.json").exists()
    assert (tmp_path / "patients.csv").exists()
    large = re.search(r"large data: fixed (\d+) labels with 30 questions; Fisher matrix: (\w+)", out)
    assert large and int(large.group(1)) >= 20 and large.group(2) in ("dense", "gram"), out


def test_every_option_of_the_original_is_mapped():
    """docs/REFERENCE_OPTIONS.md has a row for every option of the original main.py and draw.py."""
    seed = next((GUIDE.parents[2] / "shared" / "seed").glob("*.txt"), None)
    reference = (GUIDE.parent / "REFERENCE_OPTIONS.md").read_text()
    text = seed.read_text() if seed is not None else ""
    usage = text[text.find("usage: main.py"):]  # the -h output of main.py and draw.py
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+|-[A-Za-z])\b", usage)) - {"-h", "--help"}
    if seed is None:  # the seed text lives beside the repository in the workplace, not in a clone
        flags = {"--no-cache", "--seed", "-R", "--n-repeats", "-T", "--max-iters", "-k", "--p-known", "-p",
                 "--p-noise", "--noise-type", "--ce-precision", "--bits", "-B", "--batch-size", "-E", "--n-epochs",
                 "--from-logits", "-I", "--inspector", "-N", "--negotiator", "-t", "--threshold", "--no-reload",
                 "--no-ce", "--nfisher-radius", "--if-damping", "--lissa-depth", "--lissa-samples", "-o",
                 "--question", "--summary", "--sup", "--style-by"}
    assert len(flags) >= 30
    missing = sorted(f for f in flags if f"`{f}" not in reference and f" {f}`" not in reference
                     and f", `{f}`" not in reference)
    assert missing == []
    for name in ("20ng", "cifar10", "mnist49", "kernel_logreg", "max_margin_cluster", "outlier", "nearest-if",
                 "ce_removal", "eval_influence", "style-by"):
        assert name in reference, name
