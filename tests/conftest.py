"""Import ersm before anything else, so that its kernel pins apply before numpy and torch load
(ersm/portability/numerics.py); a test module that imports numpy first would otherwise run unpinned.

``ERSM_CACHE`` is cleared for every test: tests that set ``ERSM_HOME`` to a temporary folder
expect the model cache inside it, never in a long run's cache that the caller's shell points at."""
import ersm  # noqa: F401
import pytest


@pytest.fixture(autouse=True)
def no_outside_model_cache(monkeypatch):
    monkeypatch.delenv("ERSM_CACHE", raising=False)
