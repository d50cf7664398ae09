"""Choices the benchmark commands offer (plain constants: ``--help`` answers before torch loads)."""

from __future__ import annotations

#: Base keep rates timed by default (the published r, r², r³ schedules); the dense model is always added.
DEFAULT_KEEP_RATES = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Backends in the order they are timed; ``benchmarks.backends.BACKENDS`` defines each one.
BACKEND_NAMES = ("pytorch", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
