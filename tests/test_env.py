import matplotlib
import pytest
import torch

import arlib


def test_setup_seeds_everything_reproducibly():
    arlib.setup(seed=7)
    a = (torch.randn(4), __import__("numpy").random.rand(), __import__("random").random())
    arlib.setup(seed=7)
    b = (torch.randn(4), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_setup_returns_a_device_and_sets_threads_and_style():
    before = torch.get_num_threads()
    try:
        device = arlib.setup(seed=0, threads=1)
        assert isinstance(device, torch.device)
        assert device.type in {"cuda", "mps", "cpu"}
        assert torch.get_num_threads() == 1
        assert matplotlib.rcParams["axes.spines.top"] is False
    finally:
        torch.set_num_threads(before)


def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert arlib.pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert arlib.pick_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert arlib.pick_device().type == "cpu"
    assert arlib.pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("kwargs, word", [
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
    ({"threads": 0}, "threads"), ({"device": "tpu"}, "device"),
])
def test_setup_rejects_bad_arguments_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word):
        arlib.setup(**{"seed": 0, **kwargs})
