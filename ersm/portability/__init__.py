"""Numerics that hold across machines: CPU kernel pins, the fingerprint and its trace, the GPU check.

``numerics`` (the pins, applied by ``ersm/__init__`` before torch computes anything),
``fingerprint`` and ``trace`` (``ersm fingerprint [--trace]``; the committed traces in
``traces/``) and ``gpu_check`` (``make gpu-check``).
"""
