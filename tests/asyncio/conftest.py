"""Async tests run on anyio's pytest plugin (it comes with starlette/httpx), on asyncio.

``backend_env`` gives each test the environment of one backend: POPO, a SQLite file of the
test's own, or a PostgreSQL database of the test's own (the project's plugin's servers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

BACKENDS = ["popo", "sqlite", "postgres"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The settings of one backend, for both the sync and the async API."""
    if request.param == "popo":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if request.param == "sqlite":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "events.sqlite"),
        }
    database = request.getfixturevalue("postgres_database")
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **database.env}


@pytest.fixture
def postgres_env(postgres_database: object) -> dict[str, str]:
    """The settings of a PostgreSQL database of the test's own."""
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres", **postgres_database.env}  # type: ignore[attr-defined]
