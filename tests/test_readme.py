"""The README's Python example runs as printed and cleans labels."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_and_cleans(tmp_path):
    block = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + block)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    left = int(re.fullmatch(r"(\d+) wrong labels left\n", proc.stdout).group(1))
    # 200 examples in D with 20% noise hold about 40 wrong labels before cleaning
    assert left < 30
