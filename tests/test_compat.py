"""Storage compatibility with ``eventsourcing`` 9.5.6, both ways, on SQLite.

Each direction writes a database with one package and reads it back with both: the dumps
(aggregates rebuilt from events and snapshots, the notification log, each decoded event)
must be identical, and must hold the data that was written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from anchor import anchor_python

SCENARIO = Path(__file__).parent / "compat" / "scenario.py"
VARIANTS = ["plain", "compressed", "encrypted", "compressed-encrypted"]


@pytest.fixture(scope="session")
def anchor() -> Path:
    return anchor_python()


def run(python: Path | str, mode: str, variant: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [str(python), str(SCENARIO), mode, variant],
        env={**os.environ, **env},
        cwd=cwd,  # not the repository root, so the anchor's interpreter imports its own package
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def dump(python: Path | str, variant: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(python, "read", variant, env, cwd))
    return data


def check_contents(data: dict[str, Any]) -> None:
    """The dump holds what the scenario wrote, whichever package wrote it."""
    alice = data["accounts"]["Alice"]
    assert alice["owner"] == "Alice"
    assert alice["_version"] == 4
    amounts = [d["Money"] for d in alice["deposits"]]
    assert amounts == [["0.05", "EUR"], ["1.05", "EUR"], ["2.05", "EUR"]]
    assert data["accounts"]["Chloé 🐈"]["_version"] == 6
    assert [s["originator_version"] for s in data["snapshots"]["Alice"]] == [3, 4]
    assert [n["id"] for n in data["notifications"]] == list(range(1, 16))
    assert data["notifications"][0]["event_type"] == "Account.Opened"
    assert data["notifications"][1]["event"]["ref"] == {"UUID": alice["tags"]["note 0 ✓"][0]}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("writer", ["anchor", "ours"])
def test_sqlite_database_is_read_identically(
    anchor: Path, tmp_path: Path, writer: str, variant: str
) -> None:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "bank.sqlite"),
    }
    writer_python = anchor if writer == "anchor" else sys.executable
    run(writer_python, "write", variant, env, tmp_path)
    ours = dump(sys.executable, variant, env, tmp_path)
    theirs = dump(anchor, variant, env, tmp_path)
    check_contents(ours)
    assert ours == theirs
