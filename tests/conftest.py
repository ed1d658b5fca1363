"""Shared fixtures for the unit tests."""

import pytest


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty data cache (``$ARLIB_DATA``) for one test, with fetching allowed."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ARLIB_DATA", str(cache))
    monkeypatch.delenv("ARLIB_OFFLINE", raising=False)
    return cache
