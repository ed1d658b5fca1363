"""Shared fixtures for the unit tests."""

import pytest
import torch


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty data cache (``$ARLIB_DATA``) for one test, with fetching allowed."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ARLIB_DATA", str(cache))
    monkeypatch.delenv("ARLIB_OFFLINE", raising=False)
    return cache


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use tiny models, fastest on one thread; two pytest workers then share two cores fairly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
