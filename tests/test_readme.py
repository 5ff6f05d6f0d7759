"""Every Python block of README.md runs, in order and unchanged, as one program.

(The ```py blocks that start with a file name are the files of a user's project instead:
tests/test_testing_plugin.py runs them as that project.)
"""

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


ROOT = README.parent
# Where a deliberate difference from 9.5.6 may be marked: "9.5.6 difference: <name>".
MARKED = ["eventsourcing", "runners", "examples", "tests/benchmarks/RESULTS.md"]
MARK = re.compile(r"9\.5\.6 difference: ([^.()]+)")


def marked_differences() -> dict[str, Path]:
    """Return the name of each difference marked in the code, with a file that marks it."""
    found: dict[str, Path] = {}
    for name in MARKED:
        path = ROOT / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
        for file in files:
            # Marks may run over lines of a comment or docstring: join them first.
            text = re.sub(r"\s*\n\s*(?:#\s*)?", " ", file.read_text())
            for match in MARK.finditer(text):
                found.setdefault(match.group(1).strip(), file.relative_to(ROOT))
    return found


def test_every_difference_marked_in_the_code_is_listed_in_the_readme() -> None:
    text = README.read_text()
    section = text.split("## Differences from eventsourcing 9.5.6\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^- \*\*(.+?)\*\*", section, flags=re.MULTILINE))
    marked = marked_differences()
    assert len(marked) >= 15
    assert {name: file for name, file in marked.items() if name not in listed} == {}
    assert sorted(listed - set(marked)) == []  # each entry says where the code is
