#!/usr/bin/env bash
# The test command: installs the test-only tools that cannot be package extras, then runs pytest.
# tensorrt-stubs declares a dependency on the real tensorrt (not installable here): --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps tensorrt-stubs
python -m pytest -n 2 "$@"
