"""Fixtures shared by every test: an isolated environment and a clean topic registry.

Real servers come from the project's own pytest plugin (:mod:`runners.testing`, loaded
through its ``pytest11`` entry point): ``postgres_server``, ``postgres_database``,
``redis_server``, ``redis_url`` and ``run_system``. Without a server, a test that needs one
is skipped with the reason, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from eventsourcing.utils import clear_topic_cache

pytest_plugins = ["pytester"]  # tests of the plugin run small projects of their own


@pytest.fixture(autouse=True)
def isolated_environment() -> Iterator[None]:
    """Restore ``os.environ`` after each test, so that settings never leak between tests."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def clean_topic_cache() -> Iterator[None]:
    """Forget topics registered by a test (renamed classes, explicit topics)."""
    yield
    clear_topic_cache()
