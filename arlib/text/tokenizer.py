"""A character-level tokenizer: one token per character of a fixed, sorted vocabulary."""

from __future__ import annotations

import numbers

import numpy as np
import torch


class CharTokenizer:
    """Maps characters to integer ids and back.

    >>> tok = CharTokenizer("abc")
    >>> tok.encode("cab").tolist()
    [2, 0, 1]
    """

    def __init__(self, vocab: str):
        if not isinstance(vocab, str) or not vocab:
            raise ValueError(f"vocab: expected a non-empty string of distinct characters, got {vocab!r}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab: expected distinct characters, got repeats")
        self.vocab = vocab
        self._index = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """A tokenizer whose vocabulary is the sorted set of characters in ``text``."""
        if not isinstance(text, str) or not text:
            raise ValueError("text: expected a non-empty string")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Ids of ``text`` as a 1-D ``torch.long`` tensor; unknown characters raise ``ValueError``."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        try:
            return torch.tensor([self._index[ch] for ch in text], dtype=torch.long)
        except KeyError as exc:
            raise ValueError(f"text: character {exc.args[0]!r} is not in the tokenizer's vocabulary") from None

    def decode(self, ids) -> str:
        """Text of a sequence of integer ids (list, 1-D integer tensor or array) in ``[0, vocab_size)``."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            integer = not ids.is_floating_point() and not ids.is_complex() and ids.dtype != torch.bool \
                if isinstance(ids, torch.Tensor) else np.issubdtype(ids.dtype, np.integer)
            if ids.ndim != 1 or not integer:
                raise ValueError(f"ids: expected a 1-D sequence of integer ids, got {tuple(ids.shape)} {ids.dtype}")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"ids: expected a sequence of integer ids, got {type(ids).__name__}")
        out = []
        for i in ids:
            if not isinstance(i, numbers.Integral) or isinstance(i, (bool, np.bool_)):
                raise ValueError(f"ids: expected integer ids, got {i!r}")
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"ids: id {i} is outside the vocabulary [0, {len(self.vocab)})")
            out.append(self.vocab[int(i)])
        return "".join(out)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
