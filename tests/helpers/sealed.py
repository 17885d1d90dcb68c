"""Make every road to the test split raise, for the tests that prove training and checking never read it.

``seal_test_split(monkeypatch)`` guards the public split functions (they all pass through
``ersm.data.splits._check``), the copies of those names that ``ersm.training.cache`` and ``ersm.data``
imported, the digit generator itself (``ClutteredDigits("test",
...)``) and the real datasets' official test part (``ersm.data.splits._base(..., part="test")``).
It returns the list of refused requests, so that a refusal that a caller swallowed still fails
the test that reads the list. Split caches are cleared, so that a split cached in memory by an
earlier test cannot bypass the generator's guard; call ``clear_split_caches()`` after the test.
"""
from __future__ import annotations

import ersm.data
import ersm.data.digits
import ersm.data.splits as splits
import ersm.training.cache


class TestSplitRead(AssertionError):
    """Raised by the guards when something asks for the test split."""

    __test__ = False  # not a test class, despite its name


def clear_split_caches() -> None:
    splits._digits.cache_clear()
    splits._base.cache_clear()


def seal_test_split(monkeypatch) -> list[str]:
    refused: list[str] = []

    def refuse(where: str) -> None:
        refused.append(where)
        raise TestSplitRead(f"{where} asked for the test split")

    check = splits._check

    def guarded_check(config, split, background):
        if split == "test":
            refuse(f"ersm.data.splits (split={split!r}, background={background!r})")
        return check(config, split, background)

    monkeypatch.setattr(splits, "_check", guarded_check)

    def guard_split_argument(module, name):
        original = getattr(module, name)

        def guarded(config, split="test", *args, **kwargs):
            if split == "test":
                refuse(f"{module.__name__}.{name}")
            return original(config, split, *args, **kwargs)

        monkeypatch.setattr(module, name, guarded)

    for module in (ersm.training.cache, ersm.data, splits):
        for name in ("load_split", "evaluation_set", "split_metadata"):
            if hasattr(module, name):  # ersm.data loads the name lazily; a module without it cannot call it
                guard_split_argument(module, name)

    init = ersm.data.digits.ClutteredDigits.__init__

    def guarded_init(self, split, *args, **kwargs):
        if split == "test":
            refuse("ClutteredDigits('test', ...)")
        init(self, split, *args, **kwargs)

    monkeypatch.setattr(ersm.data.digits.ClutteredDigits, "__init__", guarded_init)
    base = splits._base

    def guarded_base(dataset, root, part, download):
        if part == "test":
            refuse(f"the official {dataset} test split")
        return base(dataset, root, part, download)

    guarded_base.cache_clear = base.cache_clear  # callers clear the real cache through the patched name
    monkeypatch.setattr(splits, "_base", guarded_base)
    clear_split_caches()
    return refused
