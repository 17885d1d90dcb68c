"""The layer's contract (issue 14, item 5): the non-finite check cheap off the CPU and out of
compiled graphs."""
import math

import pytest
import torch

import ersm
from ersm import EnergyMask

NAN_MESSAGE = "x contains non-finite values (NaN or inf) or overflows float32; the energy is undefined there"

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_cpu_non_finite_check_unchanged(bad):
    assert ersm.layer.CHECK_FINITE is None
    x = torch.randn(1, 4, 3, 3)
    x[0, 1, 2, 0] = bad
    with pytest.raises(ValueError) as error:
        EnergyMask(4)(x)
    assert str(error.value) == NAN_MESSAGE


def test_check_finite_policy(monkeypatch):
    cpu, meta = torch.empty(1), torch.empty(1, device="meta")  # meta stands in for CUDA's device type
    assert ersm.layer._check_finite(cpu) and not ersm.layer._check_finite(meta)
    monkeypatch.setattr(ersm.layer, "CHECK_FINITE", True)
    assert ersm.layer._check_finite(cpu) and ersm.layer._check_finite(meta)
    monkeypatch.setattr(ersm.layer, "CHECK_FINITE", False)
    assert not ersm.layer._check_finite(cpu) and not ersm.layer._check_finite(meta)
    y = EnergyMask(4)(torch.full((1, 4, 2, 2), math.nan))  # off: NaN passes through
    assert torch.isnan(y).all()


