"""Import ersm before anything else, so that its kernel pins apply before numpy and torch load
(ersm/numerics.py); a test module that imports numpy first would otherwise run unpinned."""
import ersm  # noqa: F401
