import pytest
import torch

from arlib.text.tokenizer import CharTokenizer


def test_round_trip_and_sorted_vocabulary():
    tok = CharTokenizer.from_text("hello, world")
    assert tok.vocab == " ,dehlorw" and tok.vocab_size == len(tok) == 9
    ids = tok.encode("world hello")
    assert ids.dtype == torch.long and ids.dim() == 1
    assert tok.decode(ids) == "world hello"
    assert tok.decode(ids.tolist()) == "world hello"
    assert tok.encode("").numel() == 0 and tok.decode([]) == ""
    assert "vocab_size=9" in repr(tok)


def test_shakespeare_vocabulary_has_84_characters():
    from arlib.data import shakespeare

    tok = CharTokenizer.from_text(shakespeare().text)
    assert tok.vocab_size == 84
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"


@pytest.mark.parametrize("vocab", ["", "aba", 3])
def test_bad_vocabulary_is_rejected(vocab):
    with pytest.raises(ValueError, match="vocab"):
        CharTokenizer(vocab)


def test_bad_inputs_name_the_argument():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"abc")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="ids"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="text"):
        CharTokenizer.from_text("")
