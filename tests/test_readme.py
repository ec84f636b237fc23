"""Every Python example in the README runs as written, in order (later ones build on earlier ones)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict[str, object] = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"README.md python example {index + 1}", "exec"), namespace)
