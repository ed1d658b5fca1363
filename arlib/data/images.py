"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 70,000 grey 28x28 images of clothing in 10 classes.

Read from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/``) when it is
installed, else downloaded once over HTTPS from Zalando's own S3 bucket (its HTTPS endpoint; the
project's published ``s3-website`` address serves plain HTTP only) and checked against the same sha256.
The files are in LeCun's idx format: a big-endian header (magic number, dimensions) then raw bytes.
"""

from __future__ import annotations

import functools
import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from arlib.data.cache import Registry, Source, check_file, ensure, from_url

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_URL = "https://fashion-mnist.s3.eu-central-1.amazonaws.com"  # the bucket behind fashion-mnist.s3-website...
_FILES = {  # (split, kind) -> (filename, sha256, size in bytes)
    ("train", "images"): ("train-images-idx3-ubyte.gz",
                          "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7", 26421856),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz",
                          "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056", 29491),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz",
                         "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa", 4422079),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz",
                         "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05", 5125),
}


def _source(split: str, kind: str) -> Source:
    filename, sha256, size = _FILES[split, kind]
    return Source(
        name=f"fashion-mnist-{split}-{kind}",
        filename=filename,
        sha256=sha256,
        size=size,
        origin=f"Zalando Research Fashion-MNIST ({_URL}/{filename}); Debian package dataset-fashion-mnist",
        license="MIT (Zalando SE)",
        fetchers=(from_url(f"{_URL}/{filename}", max_bytes=size),),
        system_paths=(f"{_SYSTEM_DIR}/{filename}",),
        install_hint="install the Debian package (`apt-get install dataset-fashion-mnist`)",
    )


FASHION_MNIST: dict[tuple[str, str], Source] = Registry("Fashion-MNIST file", "(split, kind)",
                                                       {key: _source(*key) for key in _FILES})


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Parse a gzipped idx-ubyte file into a uint8 array with ``ndim`` dimensions (1 to 3).

    Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then each
    dimension as a big-endian int32 (magic 2049 for labels, 2051 for images). A missing, non-gzip,
    truncated or malformed file raises ``ValueError`` naming ``path``.
    """
    path = check_file(path, "path")
    if isinstance(ndim, bool) or not isinstance(ndim, int) or not 1 <= ndim <= 3:
        raise ValueError(f"ndim: expected 1 (labels), 2 or 3 (images), got {ndim!r}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, or a truncated or corrupt stream
        raise ValueError(f"path: {path} is not a readable gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise ValueError(f"path: {path} is not an idx-ubyte file with {ndim} dimensions (header {raw[:4].hex()!r}, "
                         f"expected magic {0x0800 + ndim})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"path: {path} ends inside its idx header ({len(raw)} bytes; truncated)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = header + math.prod(dims)
    if min(dims) < 0 or len(raw) != expected:
        raise ValueError(f"path: {path}: idx header says shape {dims} ({expected} bytes), "
                         f"file has {len(raw)} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=2)
def _load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(ensure(FASHION_MNIST[split, "images"]), ndim=3)  # (N, 28, 28)
    labels = read_idx(ensure(FASHION_MNIST[split, "labels"]), ndim=1)  # (N,)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"Fashion-MNIST {split}: images {images.shape} do not match labels {labels.shape}")
    if labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"Fashion-MNIST {split}: label {labels.max()} out of range 0..{len(CLASS_NAMES) - 1}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images and labels: ``(images, labels)``.

    ``images`` is uint8 of shape (N, 28, 28), 0 for the background and up to 255 on the garment;
    ``labels`` is int64 of shape (N,) in 0..9, indexing ``CLASS_NAMES``. N is 60,000 for
    ``split="train"`` (6,000 per class) and 10,000 for ``"test"`` (1,000 per class). The parsed tensors
    are kept in memory, so later calls are fast; each call returns fresh copies.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    images, labels = _load(split)
    return images.clone(), labels.clone()
