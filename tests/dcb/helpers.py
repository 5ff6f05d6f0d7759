"""Helpers of the DCB tests: 9.5.6's base test cases, and datastores on test databases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from anchor import anchor_python

from eventsourcing.postgres import PostgresDatastore

if TYPE_CHECKING:
    from runners.testing.postgres import PostgresDatabase


def anchor_source(relative_path: str) -> Path:
    """The path of a file of the installed eventsourcing 9.5.6 package."""
    python = anchor_python()
    minor = sys.version_info[1]
    site = python.parent.parent / "lib" / f"python3.{minor}" / "site-packages"
    return site / "eventsourcing" / relative_path


def load_anchor_module(relative_path: str, name: str) -> ModuleType:
    """Load a module of 9.5.6 from its file, importing *our* package where it imports one.

    That is how 9.5.6's base test cases run against our recorders, as they run against
    anything a user subclasses them for.
    """
    spec = importlib.util.spec_from_file_location(name, anchor_source(relative_path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def postgres_datastore(db: PostgresDatabase, **kwargs: Any) -> PostgresDatastore:
    """A datastore on a test's database (the caller closes it)."""
    env = db.env
    kwargs.setdefault("pool_size", 2)
    kwargs.setdefault("max_overflow", 4)
    return PostgresDatastore(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        **kwargs,
    )
