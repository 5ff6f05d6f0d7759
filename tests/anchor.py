"""The reference package, ``eventsourcing`` 9.5.6 from PyPI, in a cached virtual environment.

Compatibility tests run it in a subprocess beside ours. The environment is built once per
machine (under ``$XDG_CACHE_HOME`` or ``~/.cache``) and reused; set ``ANCHOR_PYTHON`` to use
an interpreter that already has it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ANCHOR_VERSION = "9.5.6"
ANCHOR_REQUIREMENTS = [
    f"eventsourcing[postgres]=={ANCHOR_VERSION}",
    "pycryptodome",  # the anchor's eventsourcing.cipher
    "cryptography",
    "msgspec",  # the anchor's eventsourcing.dcb.msgpack
]
# Named after what it holds: a venv cached before msgspec was added is not reused.
ANCHOR_FLAVOUR = "dcb"


def anchor_python() -> Path:
    """Return the path of a Python interpreter that imports eventsourcing 9.5.6."""
    given = os.environ.get("ANCHOR_PYTHON")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = f"anchor-{ANCHOR_VERSION}-{ANCHOR_FLAVOUR}-py{sys.version_info[1]}"
    home = cache / "eventsourcing-tests" / folder
    python = home / "bin" / "python"
    ready = home / ".ready"
    if not ready.exists():
        venv.create(home, with_pip=True, clear=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *ANCHOR_REQUIREMENTS],
            check=True,
        )
        ready.touch()
    return python
