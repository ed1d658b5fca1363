"""Shared fixtures for the unit tests."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device the tests can run on: the CPU always, CUDA where torch sees a GPU (test ids "cpu" and
    "cuda"). A test taking it moves its models and inputs there and, where the numbers allow, compares
    with the CPU; on a machine without a GPU only the "cpu" case runs, so the suite costs no more there."""
    return torch.device(request.param)


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
