"""Every ```python block in README.md and docs/*.md runs as written, in a fresh interpreter from the repository root."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((path.relative_to(ROOT).as_posix(), line, match.group(1)))
    return blocks


def test_the_docs_have_python_blocks_to_run():
    assert len(python_blocks()) >= 4  # README, internals, results, batch_size at least


@pytest.mark.parametrize(
    ("path", "line", "code"), [pytest.param(*block, id=f"{block[0]}:{block[1]}") for block in python_blocks()]
)
def test_python_block_runs_as_written(path, line, code):
    ran = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, f"{path}:{line} failed:\n{ran.stderr[-3000:]}"
