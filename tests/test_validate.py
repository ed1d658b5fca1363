"""The shared argument checks of arlib.validate: good values pass through, each kind of bad value raises
ValueError whose message names the argument and says what was expected."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from arlib import validate
from arlib.validate import (
    describe,
    ids_in_vocab,
    int_at_least,
    int_in_range,
    is_int,
    is_number,
    number_in,
    positive_int,
    probability,
    token_ids,
)


def raises(message: str):
    """pytest.raises(ValueError) matching ``message`` exactly (not as a regular expression)."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def test_validate_imports_only_the_standard_library_torch_and_numpy():
    tree = ast.parse(Path(validate.__file__).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "arlib" not in roots
    assert roots <= {"__future__", "math", "numbers", "torch", "numpy"}


def test_describe_shows_a_tensor_by_shape_and_dtype_and_anything_else_by_type():
    assert describe(torch.zeros(2, 3, dtype=torch.long)) == "(2, 3) torch.int64"
    assert describe([1, 2]) == "list"
    assert describe(None) == "NoneType"


def test_is_int_and_is_number_refuse_bools():
    assert is_int(3) and not is_int(True) and not is_int(3.0) and not is_int(np.bool_(True))
    assert is_number(3) and is_number(2.5) and not is_number(False) and not is_number("1")
    assert not is_number(np.bool_(False)) and not is_number(torch.tensor(1.0))


def test_numpy_scalars_are_ints_and_numbers():
    assert is_int(np.int64(3)) and is_int(np.uint8(3)) and not is_int(np.float64(3.0))
    assert is_number(np.float32(0.5)) and is_number(np.float64(2.0)) and is_number(np.int32(2))
    assert type(positive_int(np.int64(3), "n")) is int and positive_int(np.int64(3), "n") == 3
    assert type(int_at_least(np.int16(0), "n", 0)) is int
    assert number_in(np.float32(0.5), "temperature", 0, bounds="(]") == 0.5


# --- integers -------------------------------------------------------------------------------------


def test_positive_int():
    assert positive_int(1, "n") == 1 and positive_int(10**12, "n") == 10**12
    for bad in (0, -3, 2.0, True, "3", None, np.int64(0), np.float64(3.0)):
        with raises(f"n: expected a positive int, got {bad!r}"):
            positive_int(bad, "n")
    with raises("period: expected a positive number of steps, got 0"):
        positive_int(0, "period", expected="a positive number of steps")


def test_int_at_least():
    assert int_at_least(0, "gamma", 0) == 0 and int_at_least(5, "gamma", 1) == 5
    for bad in (-1, 0.0, False, "0", None):
        with raises(f"gamma: expected an int >= 0, got {bad!r}"):
            int_at_least(bad, "gamma", 0)
    with raises("gamma: expected an int >= 1, got 0"):
        int_at_least(0, "gamma", 1)
    with raises("seed: expected a non-negative int, got -1"):
        int_at_least(-1, "seed", 0, expected="a non-negative int")


def test_int_in_range_includes_both_ends():
    assert int_in_range(1, "k", 1, 4) == 1 and int_in_range(4, "k", 1, 4) == 4
    for bad in (0, 5, 2.0, True, None):
        with raises(f"k: expected an int in [1, 4], got {bad!r}"):
            int_in_range(bad, "k", 1, 4)
    with raises("k: expected an int in [1, n_latents=4] for topk, got 9"):
        int_in_range(9, "k", 1, 4, expected="an int in [1, n_latents=4] for topk")


# --- real numbers ---------------------------------------------------------------------------------


def test_number_in_with_each_kind_of_bound():
    assert number_in(0, "p", 0, 1) == 0 and number_in(1, "p", 0, 1) == 1 and number_in(0.5, "p", 0, 1) == 0.5
    assert number_in(1, "top_p", 0, 1, bounds="(]") == 1
    assert number_in(0, "x", 0, 1, bounds="[)") == 0
    cases = [("[]", -0.1), ("[]", 1.5), ("(]", 0), ("[)", 1), ("()", 0.0), ("()", 1.0),
             ("[]", math.nan), ("[]", True), ("[]", "0.5"), ("[]", None)]
    for bounds, bad in cases:
        with raises(f"p: expected a number in {bounds[0]}0, 1{bounds[1]}, got {bad!r}"):
            number_in(bad, "p", 0, 1, bounds=bounds)


def test_number_in_without_an_upper_bound():
    assert number_in(3.5, "k", 0, bounds="(]") == 3.5 and number_in(math.inf, "k", 0, bounds="(]") == math.inf
    with raises("k: expected a number > 0, got 0"):
        number_in(0, "k", 0, bounds="(]")
    with raises("k: expected a number >= 1, got 0.5"):
        number_in(0.5, "k", 1)
    message = "a finite number > 0 (use greedy=True for t = 0)"
    with raises(f"temperature: expected {message}, got inf"):
        number_in(math.inf, "temperature", 0, math.inf, bounds="()", expected=message)


def test_number_in_refuses_unknown_bounds():
    with raises("bounds: expected one of '[]', '(]', '[)', '()', got '[['"):
        number_in(0.5, "p", 0, 1, bounds="[[")


def test_probability():
    assert probability(0, "min_p") == 0 and probability(1.0, "min_p") == 1.0
    for bad in (-0.01, 1.01, math.nan, True, "1", None):
        with raises(f"min_p: expected a number in [0, 1], got {bad!r}"):
            probability(bad, "min_p")


# --- tensors of token ids -------------------------------------------------------------------------


def test_token_ids_checks_type_dtype_dimensions_and_rows():
    ids = torch.tensor([[1, 2, 3]])
    assert token_ids(ids, "seq", dim=2, rows=1) is ids
    assert token_ids(ids[0], "ids") is not None
    assert token_ids(ids[0], "prompt", dim=(1, 2)) is not None and token_ids(ids, "prompt", dim=(1, 2)) is ids
    with raises("ids: expected a 1-D torch.long tensor of token ids, got list"):
        token_ids([1, 2], "ids")
    with raises("ids: expected a 1-D torch.long tensor of token ids, got (3,) torch.int32"):
        token_ids(torch.tensor([1, 2, 3], dtype=torch.int32), "ids")
    with raises("ids: expected a 1-D torch.long tensor of token ids, got (1, 3) torch.int64"):
        token_ids(ids, "ids")
    with raises("prompt: expected a 1-D or 2-D torch.long tensor of token ids, got () torch.int64"):
        token_ids(torch.tensor(3), "prompt", dim=(1, 2))
    with raises("seq: expected a (1, length) torch.long tensor, got (2, 3) torch.int64"):
        token_ids(torch.zeros(2, 3, dtype=torch.long), "seq", dim=2, rows=1, expected="a (1, length) torch.long tensor")


def test_token_ids_with_a_vocabulary():
    assert token_ids(torch.tensor([0, 4]), "ids", vocab_size=5) is not None
    assert token_ids(torch.zeros(0, dtype=torch.long), "ids", vocab_size=5) is not None
    for bad in ([0, 5], [-1, 2]):
        with raises("ids: token ids must lie in [0, 5)"):
            token_ids(torch.tensor(bad), "ids", vocab_size=5)


def test_ids_in_vocab():
    ids = torch.tensor([[0, 1], [2, 3]])
    assert ids_in_vocab(ids, "draft_tokens", 4) is ids
    assert ids_in_vocab(torch.zeros(0, 3, dtype=torch.long), "draft_tokens", 1) is not None
    with raises("draft_tokens: token ids must lie in [0, 3)"):
        ids_in_vocab(ids, "draft_tokens", 3)
    with raises("draft_tokens: token ids must lie in [0, 4)"):
        ids_in_vocab(-ids, "draft_tokens", 4)
