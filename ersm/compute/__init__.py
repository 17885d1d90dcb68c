"""Realized compute (issue 31): hard masks at inference, exact sparse execution, and benchmarks.

``hardening`` (``ersm.harden``), ``sparse_exec`` (the stages after a hard mask, executed on the
kept positions only), ``bench`` and ``bench_sparse`` (ratios measured side by side in one run).
"""
