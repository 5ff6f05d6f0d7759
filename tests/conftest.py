"""Fixtures shared by every test: an isolated environment and a clean topic registry."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from eventsourcing.utils import clear_topic_cache


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
