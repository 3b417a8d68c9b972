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
                   "read_csv"):
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
    assert (tmp_path / "patients.csv").exists()
    large = re.search(r"large data: fixed (\d+) labels with 30 questions; Fisher matrix: (\w+)", out)
    assert large and int(large.group(1)) >= 20 and large.group(2) in ("dense", "gram"), out
