"""Side-by-side timing commands (not tests): ``python -m benchmarks.latency``, ``python -m benchmarks.profile``.

OpenMP threads (PyTorch's) sleep instead of spinning while they wait, as ONNX Runtime's do in
these benchmarks: configurations run interleaved on shared cores, and a waiting runtime's
spinning threads would otherwise slow down the one being timed. Set before PyTorch loads.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
