"""Every Python block of README.md runs, in order and unchanged, as one program."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    """Return the bodies of the ```python fenced blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_has_the_synopsis_and_the_two_commands() -> None:
    text = README.read_text()
    assert "make test" in text and "make demo" in text
    first = python_blocks(text)[0]
    assert "class Dog(Aggregate)" in first and '@event("Registered")' in first


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the synopsis writes a SQLite file in the working directory
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 10
    # A real module, so that the topics of the classes the README defines resolve.
    module = types.ModuleType("readme_synopsis")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"README.md block {number}", "exec")
        exec(code, module.__dict__)
    assert (tmp_path / "dog-school.sqlite").exists()
