"""``idlevit::IdleScatter``: the fused token write-back of an idle layer (see plugins/README.md).

Python side: the graph pass (:mod:`.graph_pass`), the ONNX Runtime CPU reference (:mod:`.ort_op`)
and build helpers for the CUDA sources beside this file (:mod:`.build`).
"""

from pathlib import Path

#: ONNX node domain / TensorRT plugin namespace, op type / plugin name, plugin version.
DOMAIN = "idlevit"
OP_TYPE = "IdleScatter"
PLUGIN_VERSION = "1"
#: The CUDA/C++ sources (kernel, plugin, host tests).
SOURCE_DIR = Path(__file__).resolve().parent

__all__ = ["DOMAIN", "OP_TYPE", "PLUGIN_VERSION", "SOURCE_DIR"]
