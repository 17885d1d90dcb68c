"""checks.is_integer / is_number: one form of "a number, not a bool", strict where torch needs Python scalars."""
import re

import numpy as np
import pytest
import torch

import ersm
from ersm.checks import is_integer, is_number
from ersm.models import SmallCNN, insert_energy_mask


@pytest.mark.parametrize("value, numpy, expected", [(3, True, True), (np.int64(3), True, True), (np.int64(3), False, False),
                                                    (True, True, False), (3.0, True, False)])
def test_is_integer(value, numpy, expected):
    assert is_integer(value, numpy=numpy) is expected


@pytest.mark.parametrize("value, kwargs, expected", [(0.5, {}, True), (np.float32(0.5), {}, True),
                                                     (np.float32(0.5), {"numpy": False}, False),
                                                     (np.float64(0.5), {"numpy": False}, True),  # a Python float subclass
                                                     (float("nan"), {}, False), (float("nan"), {"finite": False}, True),
                                                     (10 ** 400, {}, False), (False, {}, False), ("1", {}, False)])
def test_is_number(value, kwargs, expected):
    assert is_number(value, **kwargs) is expected


def tiny_data():
    return torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))


@pytest.mark.parametrize("argument, value", [("epochs", np.int64(1)), ("batch_size", np.int64(4)), ("seed", np.int64(0))])
def test_fit_refuses_numpy_counts_before_any_work(argument, value):
    """torch refuses NumPy scalars deep in the loop (OneCycleLR, split): fit names them first."""
    kwargs = dict(epochs=1, batch_size=4, seed=0, beta=0.0, progress=False) | {argument: value}
    with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r} must be an integer")):
        ersm.fit(SmallCNN(width=4), tiny_data(), **kwargs)


def test_harden_refuses_numpy_seed_and_float32_keep():
    model = insert_energy_mask(SmallCNN(width=4), after="layer2").eval()
    with pytest.raises(ValueError, match=r"seed=.* must be an integer"):
        ersm.harden(model, keep=0.5, ranking="random", seed=np.int64(1))
    with pytest.raises(ValueError, match=r"keep=.* must be a number in \(0, 1\]"):
        ersm.harden(model, keep=np.float32(0.07))
