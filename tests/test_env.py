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


def test_export_figure_writes_stable_png_and_svg_only_when_asked(tmp_path, monkeypatch):
    import hashlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from arlib.env import FIGURES_ENV, export_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1, 4])
    monkeypatch.delenv(FIGURES_ENV, raising=False)
    assert export_figure(fig, "curve") == []  # a reader's run writes nothing
    monkeypatch.setenv(FIGURES_ENV, str(tmp_path / "ch"))
    paths = export_figure(fig, "curve")
    assert [p.name for p in paths] == ["curve.png", "curve.svg"]
    first = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in export_figure(fig, "curve")] == first  # byte-stable
    assert paths[0].read_bytes().startswith(b"\x89PNG") and b"<svg" in paths[1].read_bytes()[:500]
    with pytest.raises(ValueError, match="name"):
        export_figure(fig, "a/b")
    with pytest.raises(TypeError, match="fig"):
        export_figure(ax, "curve")
    plt.close(fig)
