#!/usr/bin/env bash
# The test command. Installs what the tests need beyond ".[dev]" when it is missing (a quick no-op
# otherwise), then runs pytest on two workers, printing a line as each test file finishes.
#   tensorrt-stubs: TensorRT's types for mypy (it declares a dependency on TensorRT itself, which
#     cannot be installed here: --no-deps); tritonclient: Triton's ModelConfig proto (--no-deps);
#   the rtx and quant extras: TensorRT-RTX builds real engines without a GPU, ModelOpt writes the
#     INT8 / FP8 graphs.
# tests/test_device.py also builds a venv of its own with the device install line (no PyTorch) in a
# temporary folder and runs the device commands there (a minute or two).
set -euo pipefail
cd "$(dirname "$0")/.."
missing() {
    python - "$@" <<'PY'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        print(name)
PY
}
no_deps=$(missing tensorrt-stubs tritonclient)
extras=$(missing tensorrt-rtx-cu13 nvidia-modelopt onnxslim lief cppimport)
if [ -n "$no_deps" ]; then
    echo "tests/run.sh: installing $(echo $no_deps) (--no-deps)"
    python -m pip install -q --no-deps $no_deps
fi
if [ -n "$extras" ]; then
    echo "tests/run.sh: installing the rtx and quant extras ($(echo $extras) missing; a minute or two)"
    python -m pip install -q -e ".[rtx,quant]"
fi
if [ -z "$no_deps$extras" ]; then
    echo "tests/run.sh: test tools already installed"
fi
python -m pytest -n 2 "$@"
