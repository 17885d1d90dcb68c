"""A parametrised bad-input test from a table ``{case: (call, message regex)}``: each call must
raise ``ValueError`` whose message matches (the argument and the value named)."""
from __future__ import annotations

import pytest


def refusal_test(table: dict):
    """The test function for ``table``; bind it to a ``test_*`` name in the test module."""
    @pytest.mark.parametrize("case", list(table))
    def test(case):
        call, message = table[case]
        with pytest.raises(ValueError, match=message):
            call()

    return test
