#!/usr/bin/env bash
# The test command: installs the test-only tools that cannot be package extras, then runs pytest.
# tensorrt-stubs declares a dependency on the real tensorrt (not installable here): --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps tensorrt-stubs tritonclient  # tritonclient: Triton's ModelConfig proto for the package tests
# TensorRT-RTX builds engines without a GPU (CI builds real engines) and ModelOpt AutoCast writes
# the mixed-precision graphs: the package's rtx and fp16 extras.
python -m pip install -q -e ".[rtx,fp16]"
python -m pytest -n 2 "$@"
